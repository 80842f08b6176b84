"""Real namespaces, real packets: both overlays, same-node and cross-node,
TCP / UDP / ICMP, and the kernel objects a learner inspects, in every IP stack
(IPv4, IPv6-only, dual-stack probed over IPv6)."""

from __future__ import annotations

import ipaddress

import pytest

from labctl.model import ipam, names
from tests.helpers import pod
from tests.kernel.conftest import STACKS, Listener

pytestmark = pytest.mark.kernel


def ip_(lab) -> list[str]:
    """`ip` with the stack's family: -6 where probes go over IPv6."""
    return ["ip", "-6"] if lab.six else ["ip"]


def inet(lab) -> str:
    return "inet6" if lab.six else "inet"


def three_pods(lab, overlay, stack="ipv4"):
    lab.use(stack)
    lab.up(
        lab.doc(overlay=overlay, externals=[{"name": "client"}]),
        pod("a", node="node1", ports=(8080,), udp=(5353,)),
        pod("b", node="node1", ports=(8080,), udp=(5353,)),
        pod("c", node="node2", ports=(8080,), udp=(5353,)),
    )


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("overlay", ["vxlan", "host-gw"])
def test_pods_reach_each_other_on_the_same_node_and_across(lab, overlay, stack):
    three_pods(lab, overlay, stack)
    for dst in ("b", "c"):  # b: same node (bridged), c: across nodes
        for proto in ("tcp", "udp"):
            r = lab.probe("a", dst, proto)
            assert r.verdict == "open", (dst, proto, r)
            assert r.served_by == f"default/{dst}"
            assert r.client_ip_seen == lab.pod_ip("a"), "pod-to-pod traffic keeps its source address"
        assert lab.probe("a", dst, "icmp").verdict == "open"
    # a closed port is refused (RST), not filtered
    closed = lab.probe("a", "c", "tcp", port=9)
    assert closed.verdict == "refused" and closed.detail == "tcp reset"
    udp_closed = lab.probe("a", "c", "udp", port=9)
    assert udp_closed.verdict == "refused" and "port-unreachable" in udp_closed.detail


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("overlay", ["vxlan", "host-gw"])
def test_nodes_externals_and_masquerade(lab, overlay, stack):
    three_pods(lab, overlay, stack)
    node1 = lab.topo.lab.node("node1")
    assert lab.probe("node/node2", "a", "tcp").verdict == "open"
    assert lab.probe("ext/client", "node/node1", "icmp").verdict == "open"
    assert lab.probe("node/node1", "ext/client", "icmp").verdict == "open"
    # pods reach externals, masqueraded to their node's address (CNI ipMasq)
    listener = Listener(names.external_netns(lab.name, "client"), 7000)
    r = lab.probe("c", "ext/client", "tcp", port=7000)
    peers = listener.close()
    assert r.verdict == "open"
    assert peers == [lab.topo.lab.node("node2").ip]
    # an external has no route into the pod network (it is outside the cluster)
    assert lab.probe("ext/client", "a", "tcp", timeout=0.3).verdict != "open"
    assert node1.ip == ("fd00:10:20::a" if lab.six else "10.10.20.10")


@pytest.mark.parametrize("stack", STACKS)
def test_vxlan_objects_are_laid_out_as_flannel_does(lab, stack):
    """flannel.1 in IPv4, flannel-v6.1 in IPv6 (same VNI and port, 20 bytes less MTU: a
    40-byte outer header), and the entries flanneld writes for each."""
    three_pods(lab, "vxlan", stack)
    topo = lab.topo
    n1, n2 = topo.lab.nodes
    ns = lab.node_ns("node1")
    dev_name = "flannel-v6.1" if lab.six else "flannel.1"
    pod_mtu = 1430 if stack != "ipv4" else 1450
    [dev] = lab.jsh(ns, "ip", "-d", "-j", "link", "show", dev_name)
    info = dev["linkinfo"]["info_data"]
    assert dev["mtu"] == (1430 if lab.six else 1450)
    assert info["id"] == 1 and info["port"] == 8472 and info["learning"] is False and info.get("local6" if lab.six else "local") == n1.ip
    assert dev["address"] == names.vtep_mac(lab.name, "node1", lab.six)
    [addr] = [a for a in lab.jsh(ns, "ip", "-j", "addr", "show", dev_name)[0]["addr_info"] if a["family"] == inet(lab) and a["scope"] == "global"]
    assert (addr["local"], addr["prefixlen"]) == (ipam.vtep_address(n1.pod_cidr), 128 if lab.six else 32)
    fdb = [e for e in lab.jsh(ns, "bridge", "-j", "fdb", "show", "dev", dev_name) if e.get("dst")]
    assert [(e["mac"], e["dst"], e["flags"], e["state"]) for e in fdb] == [(names.vtep_mac(lab.name, "node2", lab.six), n2.ip, ["self"], "permanent")]
    neigh = [x for x in lab.jsh(ns, *ip_(lab), "-j", "neigh", "show", "dev", dev_name) if "PERMANENT" in x["state"]]
    assert [(x["dst"], x["lladdr"], x["state"]) for x in neigh] == [(ipam.vtep_address(n2.pod_cidr), names.vtep_mac(lab.name, "node2", lab.six), ["PERMANENT"])]
    routes = {r["dst"]: r for r in lab.jsh(ns, *ip_(lab), "-j", "route")}
    assert routes[n2.pod_cidr]["gateway"] == ipam.vtep_address(n2.pod_cidr) and routes[n2.pod_cidr]["dev"] == dev_name
    assert "onlink" in routes[n2.pod_cidr]["flags"]
    assert routes[n1.pod_cidr]["dev"] == "cni0"
    # pods match the overlay's MTU; cni0 is the gateway; hairpin on the bridge port
    [eth0] = lab.jsh(lab.pod_ns("a"), "ip", "-j", "addr", "show", "eth0")
    assert eth0["mtu"] == pod_mtu and eth0["address"] == ipam.mac_for_ip(lab.whole.pod("default/a").ip)
    assert [a["local"] for a in eth0["addr_info"] if a["scope"] == "global"] == list(lab.whole.pod("default/a").ips or [lab.pod_ip("a")])
    assert lab.sh(lab.pod_ns("a"), *ip_(lab), "route", "show", "default").split()[:3] == ["default", "via", ipam.gateway(n1.pod_cidr)]
    [cni0] = lab.jsh(ns, "ip", "-j", "addr", "show", "cni0")
    assert [(a["local"], a["prefixlen"]) for a in cni0["addr_info"] if a["family"] == inet(lab) and a["scope"] == "global"] == [
        (ipam.gateway(n1.pod_cidr), ipaddress.ip_network(n1.pod_cidr).prefixlen)
    ]
    veth = names.pod_veth(lab.name, "default", "a")
    [port] = lab.jsh(ns, "ip", "-d", "-j", "link", "show", veth)
    assert port["master"] == "cni0" and port["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert lab.sh(ns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert lab.sh(ns, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables").strip() == "1"
    assert lab.sh(ns, "sysctl", "-n", "net.ipv4.icmp_ratelimit").strip() == "0", "denied probes get their ICMP error at once"
    assert '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' in lab.sh(ns, "ip6tables-save" if lab.six else "iptables-save")
    if lab.six:
        assert lab.sh(ns, "sysctl", "-n", "net.ipv6.conf.all.forwarding").strip() == "1"
        assert lab.sh(lab.pod_ns("a"), "sysctl", "-n", "net.ipv6.conf.eth0.accept_dad").strip() == "0", "no DAD: a new pod's link is usable at once"
    if stack == "dual":  # both devices, each with its own family's entries
        assert lab.jsh(ns, "ip", "-j", "link", "show", "flannel.1")[0]["mtu"] == 1450


@pytest.mark.parametrize("stack", STACKS)
def test_host_gw_uses_plain_routes_and_no_device(lab, stack):
    three_pods(lab, "host-gw", stack)
    ns = lab.node_ns("node2")
    n1 = lab.topo.lab.node("node1")
    routes = {r["dst"]: r for r in lab.jsh(ns, *ip_(lab), "-j", "route")}
    assert routes[n1.pod_cidr]["gateway"] == n1.ip and routes[n1.pod_cidr]["dev"] == "eth0"
    assert "flannel" not in lab.sh(ns, "ip", "link")
    [eth0] = lab.jsh(lab.pod_ns("c"), "ip", "-j", "link", "show", "eth0")
    assert eth0["mtu"] == 1500


@pytest.mark.parametrize("stack", STACKS)
def test_the_underlay_switch_joins_every_host(lab, stack):
    three_pods(lab, "vxlan", stack)
    sw = names.underlay_netns(lab.name)
    ports = {link["ifname"]: link for link in lab.jsh(sw, "ip", "-j", "link") if link.get("master") == "br0"}
    assert set(ports) == {"node1", "node2", "client"}
    assert all(p["operstate"] == "UP" for p in ports.values())
    [br0] = lab.jsh(sw, "ip", "-j", "addr", "show", "br0")
    gw = ("fd00:10:20::1", 64) if lab.six else ("10.10.20.1", 24)
    assert [(a["local"], a["prefixlen"]) for a in br0["addr_info"] if a["family"] == inet(lab) and a["scope"] == "global"] == [gw], "the gateway"
    assert lab.sh(sw, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0", "the gateway forwards nothing"
    assert lab.sh(lab.node_ns("node1"), *ip_(lab), "route", "show", "default").split()[:3] == ["default", "via", gw[0]]


@pytest.mark.parametrize("stack", STACKS)
def test_a_pod_reaches_itself_and_its_own_loopback(lab, stack):
    three_pods(lab, "vxlan", stack)
    assert lab.probe("a", "a", "tcp").verdict == "open"
    assert lab.sh(lab.pod_ns("a"), "curl", "-s", "-m", "2", "http://127.0.0.1:8080/").startswith('{"pod": "default/a"')
    if lab.six:
        assert lab.sh(lab.pod_ns("a"), "curl", "-s", "-m", "2", "http://[::1]:8080/").startswith('{"pod": "default/a"')
