import re

from labctl.model import names


def test_namespace_names_are_prefixed_and_unambiguous():
    assert names.node_netns("demo", "node1") == "demo-node1"
    assert names.pod_netns("demo", "default", "web-0") == "demo-default.web-0"
    # a namespace a-b with pod c and a namespace a with pod b-c do not collide
    assert names.pod_netns("demo", "a-b", "c") != names.pod_netns("demo", "a", "b-c")
    assert names.underlay_netns("demo") == "demo-underlay"


def test_veth_names_fit_ifnamsiz_and_are_unique_for_many_pods():
    seen = set()
    for ns in ("default", "shop", "a-very-long-namespace-name-that-is-still-valid"):
        for i in range(3000):
            v = names.pod_veth("lab", ns, f"pod-{i}")
            assert len(v) <= names.IFNAMSIZ
            assert re.fullmatch(r"veth[0-9a-f]{8}", v)
            seen.add(v)
    assert len(seen) == 9000
    assert names.pod_veth("lab", "default", "web-0") == names.pod_veth("lab", "default", "web-0")
    assert names.pod_veth("lab1", "default", "web-0") != names.pod_veth("lab2", "default", "web-0")


def test_switch_ports_are_the_host_name_when_it_fits():
    assert names.switch_port("demo", "node1") == "node1"
    long = names.switch_port("demo", "a-node-name-longer-than-fifteen")
    assert len(long) <= 15 and long.startswith("p")
    assert names.switch_port("demo", "br0") != "br0"
    assert names.switch_port("demo", "lo") != "lo"


def test_vtep_mac_is_stable_local_unicast():
    mac = names.vtep_mac("demo", "node1")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    assert mac == names.vtep_mac("demo", "node1") != names.vtep_mac("demo", "node2")
