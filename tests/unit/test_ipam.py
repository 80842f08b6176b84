import ipaddress

import pytest

from labctl.model import ipam


def test_pod_pool_starts_after_gateway_and_skips_broadcast():
    pool = ipam.pod_pool("10.244.3.0/24")
    assert str(pool.allocate()) == "10.244.3.2"
    assert str(pool.first) == "10.244.3.2" and str(pool.last) == "10.244.3.254"
    assert pool.size == 253


def test_pool_goes_round_robin_after_the_last_address_given():
    pool = ipam.pod_pool("10.244.0.0/29")  # .2 .. .6
    got = [str(pool.allocate()) for _ in range(3)]
    assert got == ["10.244.0.2", "10.244.0.3", "10.244.0.4"]
    # .3 freed: host-local does not hand it out again before wrapping round
    pool.used.discard(ipaddress.IPv4Address("10.244.0.3"))
    assert str(pool.allocate()) == "10.244.0.5"
    assert str(pool.allocate()) == "10.244.0.6"
    assert str(pool.allocate()) == "10.244.0.3"
    with pytest.raises(ipam.PoolExhausted):
        pool.allocate()


def test_pool_resumes_after_a_stored_cursor_and_skips_used():
    pool = ipam.pod_pool("10.244.0.0/24", used=["10.244.0.11"], cursor="10.244.0.10")
    assert str(pool.allocate()) == "10.244.0.12"


def test_node_and_external_pools_follow_the_contract():
    assert str(ipam.node_pool("10.10.20.0/24", []).allocate()) == "10.10.20.10"
    assert str(ipam.node_pool("10.10.20.0/24", ["10.10.20.10"]).allocate()) == "10.10.20.11"
    assert str(ipam.external_pool("10.10.20.0/24", []).allocate()) == "10.10.20.100"
    # small networks start at .2 (.1 is the underlay's gateway)
    assert str(ipam.node_pool("192.168.0.0/29", []).allocate()) == "192.168.0.2"


def test_subnet_pool_gives_node_i_the_ith_subnet_unless_taken():
    pool = ipam.SubnetPool("10.244.0.0/16", 24, used=["10.244.1.0/24"])
    assert str(pool.allocate(0)) == "10.244.0.0/24"
    assert str(pool.allocate(1)) == "10.244.2.0/24"  # the 2nd is taken: next free one
    assert pool.count() == 256
    small = ipam.SubnetPool("10.244.0.0/23", 24)
    small.allocate(0), small.allocate(1)
    with pytest.raises(ipam.PoolExhausted):
        small.allocate(2)


def test_gateway_vtep_and_mac():
    assert ipam.gateway("10.244.2.0/24") == "10.244.2.1"
    assert ipam.vtep_address("10.244.2.0/24") == "10.244.2.0"
    assert ipam.mac_for_ip("10.244.0.3") == "0a:58:0a:f4:00:03"
