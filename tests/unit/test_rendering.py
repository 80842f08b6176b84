"""Pure rendering: masquerade rules, netlink requests (as the iproute2 commands they stand for)."""

import struct

from labctl.kernel import ifindex
from labctl.kernel.nl import Batch
from labctl.overlay import hostgw, vxlan
from labctl.plumbing import node as node_plumbing
from labctl.plumbing import pod as pod_plumbing
from tests.helpers import dump, lab_doc, load, one, pod

EXPECTED_MASQ = """*nat
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT
*filter
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"""


def test_masquerade_rules_golden():
    topo = load(dump(lab_doc()))
    assert node_plumbing.masquerade_rules(topo.lab, topo.lab.nodes[1]) == EXPECTED_MASQ


def test_every_jump_target_is_a_defined_chain():
    topo = load(dump(lab_doc()))
    text = node_plumbing.masquerade_rules(topo.lab, topo.lab.nodes[0])
    builtin = {"POSTROUTING", "FORWARD", "RETURN", "ACCEPT", "MASQUERADE", "DROP"}
    defined = {line[1:].split()[0] for line in text.splitlines() if line.startswith(":")}
    for line in text.splitlines():
        if " -j " in line:
            target = line.split(" -j ")[1].split()[0]
            assert target in defined | builtin, line


def whats(b: Batch) -> list[str]:
    return [r.what for r in b.requests]


def test_vxlan_device_and_peer_entries_as_flannel_writes_them():
    topo = load(dump(lab_doc(name="demo")))
    n1, n2 = topo.lab.nodes
    ifindex.note_created("demo-node1", highest=1)  # as on a host without tunnel modules
    b = Batch("demo-node1")
    vxlan.OVERLAY.device(b, topo.lab, n1)
    vxlan.OVERLAY.peer(b, topo.lab, n1, n2)
    mac = vxlan.names.vtep_mac("demo", "node2")
    assert whats(b) == [
        "ip link add flannel.1 type vxlan id 1 local 10.10.20.10 dstport 8472 nolearning",
        "ip addr add 10.244.0.0/32 dev flannel.1",
        "ip link set 4 up",
        f"ip neigh replace 10.244.1.0 lladdr {mac} dev flannel.1 nud permanent",
        f"bridge fdb replace {mac} dev flannel.1 dst 10.10.20.11 self permanent",
        "ip route replace 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink",
    ]


def test_host_gw_routes_via_node_addresses():
    topo = load(dump(lab_doc(overlay="host-gw")))
    n1, n2 = topo.lab.nodes
    ifindex.note_created("t-node1", highest=1)
    b = Batch("t-node1")
    hostgw.OVERLAY.device(b, topo.lab, n1)
    hostgw.OVERLAY.peer(b, topo.lab, n1, n2)
    assert whats(b) == ["ip route replace 10.244.1.0/24 via 10.10.20.11 dev eth0"]


def test_pod_requests_and_their_netlink_headers():
    topo = load(dump(lab_doc(name="demo"), pod("web", node="node1")))
    p = topo.pods[0]
    ifindex.note_created("demo-node1", highest=1)
    ifindex.note_created("demo-default.web", highest=1)
    b = Batch("demo-node1")
    pod_plumbing.host_end(b, topo.lab, p, 99, 1450)
    inside = Batch("demo-default.web")
    pod_plumbing.inside(inside, topo.lab.nodes[0], p)
    veth = pod_plumbing.names.pod_veth("demo", "default", "web")
    assert whats(b) == [f"ip link add {veth} type veth peer name eth0 netns demo-default.web", f"ip link set {veth} type bridge_slave hairpin on"]
    assert whats(inside) == ["ip link set 1 up", "ip addr add 10.244.0.2/24 dev eth0", "ip link set 2 up", "ip route replace 0.0.0.0/0 via 10.244.0.1 dev eth0"]
    for r in b.requests + inside.requests:
        length, mtype, flags = struct.unpack_from("=IHH", r.data)
        assert length == len(r.data) and flags & 0x5 == 0x5  # NLM_F_REQUEST | NLM_F_ACK
    # the peer's MAC is derived from the pod IP (0a:58 + IP), as the CNI bridge plugin did
    assert bytes.fromhex("0a580af40002") in b.requests[0].data


def test_bird_conf_is_calicos_full_mesh_with_the_nodes_pod_cidr():
    from labctl.overlay import bgp

    topo = load(dump(lab_doc(overlay="bgp", nodes=[{"name": "node1"}, {"name": "node2"}, {"name": "node3"}], bgp={"asNumber": 65001})))
    n1, n2, n3 = topo.lab.nodes
    conf = bgp.config(topo.lab, n2, "/run/x.ctl")
    assert f"router id {n2.ip};" in conf and f"local {n2.ip} as 65001;" in conf
    assert f"export filter {{ if net = {n2.pod_cidr} then accept; reject; }};" in conf, "each node announces its own pod CIDR"
    assert f"neighbor {n1.ip} as 65001;" in conf and f"neighbor {n3.ip} as 65001;" in conf and f"neighbor {n2.ip}" not in conf
    peer3 = conf.split("protocol bgp node_node3")[1]
    peer1 = conf.split("protocol bgp node_node1")[1].split("protocol bgp")[0]
    assert "passive on" in peer3 and "passive on" not in peer1, "only the higher address connects"
    assert "if source = RTS_BGP then accept" in conf, "learned routes go into the kernel"
    assert load(dump(lab_doc(overlay="bgp"))).lab.bgp_as is None


def test_bird_conf_of_a_dual_stack_lab_has_a_mesh_per_family():
    from labctl.overlay import bgp

    spec = {
        "ipFamilies": ["IPv4", "IPv6"],
        "nodeNetwork": ["10.10.20.0/24", "fd00:10:20::/64"],
        "podNetwork": ["10.244.0.0/16", "fd00:10:244::/56"],
        "serviceNetwork": ["10.96.0.0/16", "fd00:10:96::/112"],
    }
    topo = load(dump(lab_doc(overlay="bgp", **spec)))
    conf = bgp.config(topo.lab, topo.lab.nodes[0], "/run/x.ctl")
    assert 'protocol direct { ipv4; ipv6; interface "cni0"; }' in conf
    assert "protocol bgp node_node2 from mesh {" in conf and "neighbor 10.10.20.11 as 64512;" in conf
    assert "protocol bgp node_node2_v6 from mesh_v6 {" in conf and "neighbor fd00:10:20::b as 64512;" in conf
    six = conf.split("template bgp mesh_v6")[1]
    assert "local fd00:10:20::a as 64512;" in six and "export filter { if net = fd00:10:244::/64 then accept; reject; };" in six
    assert conf.count("protocol kernel") == 2 and "ipv6 { import none; export filter" in conf
    only6 = load(dump(lab_doc(overlay="bgp", ipFamilies=["IPv6"])))
    assert "router id 0.0.0.10;" in bgp.config(only6.lab, only6.lab.nodes[0], "/run/x.ctl"), "IPv6 alone: a 32-bit id from the address"


def test_bgp_as_number_is_checked():
    assert "spec.bgp.asNumber" in one(dump(lab_doc(overlay="bgp", bgp={"asNumber": 0})))


def test_devices_go_after_the_fallback_tunnels_a_fresh_namespace_holds():
    """With ipip, ip_gre and sit loaded, a new namespace holds tunl0, gre0, gretap0,
    erspan0 and sit0 (2-6): labctl's slots start after them."""
    topo = load(dump(lab_doc(name="tun"), pod("web", node="node1")))
    n1, n2 = topo.lab.nodes
    ifindex.note_created("tun-node1", highest=6)
    ifindex.note_created("tun-default.web", highest=6)
    b = Batch("tun-node1")
    node_plumbing.cni0(b, topo.lab, n1, 1450)
    vxlan.OVERLAY.device(b, topo.lab, n1)
    vxlan.OVERLAY.peer(b, topo.lab, n1, n2)
    pod_plumbing.host_end(b, topo.lab, topo.pods[0], 99, 1450)
    inside = Batch("tun-default.web")
    pod_plumbing.inside(inside, n1, topo.pods[0])
    assert "ip link set 9 up" in whats(b), "flannel.1 at 6 + 3"
    assert whats(inside)[2] == "ip link set 7 up", "the pod's eth0 at 6 + 1"
    assert ifindex.fresh("tun-node1", ifindex.CNI0) == 8 and ifindex.fresh("never-made", ifindex.ETH0) == 0


def test_ipip_bird_conf_routes_through_tunl0_onlink():
    from labctl.overlay import bgp, ipip

    topo = load(dump(lab_doc(overlay="ipip")))
    n1 = topo.lab.nodes[0]
    conf = ipip.OVERLAY.daemon_config(topo.lab, n1, "/run/x.ctl")
    kernel = conf.split("protocol kernel")[1].split("template bgp")[0]
    assert kernel.index('ifname = "tunl0"') < kernel.index("onlink = true") < kernel.index("gw = bgp_next_hop"), "the gateway set last"
    assert "if source != RTS_BGP then reject" in kernel
    plain = bgp.config(topo.lab, n1, "/run/x.ctl")
    assert conf.split("template bgp")[1] == plain.split("template bgp")[1], "the same mesh as bgp"
    assert ipip.OVERLAY.mtu == 1480 and ipip.OVERLAY.node_source_ip(topo.lab, n1) == "10.244.0.0"


def test_each_overlay_names_the_route_a_node_has_to_anothers_pods():
    from labctl import registry

    for overlay, want in (
        ("vxlan", ("10.244.1.0", "flannel.1")),
        ("host-gw", ("10.10.20.11", "eth0")),
        ("bgp", ("10.10.20.11", "eth0")),
        ("ipip", ("10.10.20.11", "tunl0")),
    ):
        spec = load(dump(lab_doc(overlay=overlay))).lab
        assert registry.overlay(overlay).route_to(spec, spec.nodes[1]) == want, overlay


def test_an_externals_resolv_conf_names_only_the_labs_upstream():
    from labctl.plumbing import etc

    assert "nameserver" not in etc.external_resolv_conf(load(dump(lab_doc())).lab), "the host's servers are out of reach: none, and lookups fail at once"
    assert "nameserver 10.10.20.100\n" in etc.external_resolv_conf(load(dump(lab_doc(dnsUpstream="10.10.20.100"))).lab)
    assert "nameserver" not in etc.external_resolv_conf(load(dump(lab_doc(dnsUpstream="10.10.20.100:5353"))).lab), "resolv.conf has no port"
