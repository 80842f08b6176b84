"""Real namespaces, real packets: both overlays, same-node and cross-node,
TCP / UDP / ICMP, and the kernel objects a learner inspects."""

from __future__ import annotations

import pytest

from labctl.model import names
from tests.helpers import pod
from tests.kernel.conftest import Listener

pytestmark = pytest.mark.kernel


def three_pods(lab, overlay):
    lab.up(
        lab.doc(overlay=overlay, externals=[{"name": "client"}]),
        pod("a", node="node1", ports=(8080,), udp=(5353,)),
        pod("b", node="node1", ports=(8080,), udp=(5353,)),
        pod("c", node="node2", ports=(8080,), udp=(5353,)),
    )


@pytest.mark.parametrize("overlay", ["vxlan", "host-gw"])
def test_pods_reach_each_other_on_the_same_node_and_across(lab, overlay):
    three_pods(lab, overlay)
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


@pytest.mark.parametrize("overlay", ["vxlan", "host-gw"])
def test_nodes_externals_and_masquerade(lab, overlay):
    three_pods(lab, overlay)
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
    assert node1.ip == "10.10.20.10"


def test_vxlan_objects_are_laid_out_as_flannel_does(lab):
    three_pods(lab, "vxlan")
    topo = lab.topo
    n1, n2 = topo.lab.nodes
    ns = lab.node_ns("node1")
    [dev] = lab.jsh(ns, "ip", "-d", "-j", "link", "show", "flannel.1")
    info = dev["linkinfo"]["info_data"]
    assert dev["mtu"] == 1450
    assert info["id"] == 1 and info["port"] == 8472 and info["learning"] is False and info["local"] == n1.ip
    assert dev["address"] == names.vtep_mac(lab.name, "node1")
    [addr] = [a for a in lab.jsh(ns, "ip", "-j", "addr", "show", "flannel.1")[0]["addr_info"] if a["family"] == "inet"]
    assert (addr["local"], addr["prefixlen"]) == ("10.244.0.0", 32)
    fdb = [e for e in lab.jsh(ns, "bridge", "-j", "fdb", "show", "dev", "flannel.1") if e.get("dst")]
    assert [(e["mac"], e["dst"], e["flags"], e["state"]) for e in fdb] == [(names.vtep_mac(lab.name, "node2"), n2.ip, ["self"], "permanent")]
    neigh = lab.jsh(ns, "ip", "-j", "neigh", "show", "dev", "flannel.1")
    assert [(x["dst"], x["lladdr"], x["state"]) for x in neigh] == [("10.244.1.0", names.vtep_mac(lab.name, "node2"), ["PERMANENT"])]
    routes = {r["dst"]: r for r in lab.jsh(ns, "ip", "-j", "route")}
    assert routes["10.244.1.0/24"]["gateway"] == "10.244.1.0" and routes["10.244.1.0/24"]["dev"] == "flannel.1"
    assert "onlink" in routes["10.244.1.0/24"]["flags"]
    assert routes["10.244.0.0/24"]["dev"] == "cni0"
    # pods match the overlay's MTU; cni0 is the gateway; hairpin on the bridge port
    [eth0] = lab.jsh(lab.pod_ns("a"), "ip", "-j", "addr", "show", "eth0")
    assert eth0["mtu"] == 1450 and eth0["address"] == "0a:58:0a:f4:00:02"
    assert lab.sh(lab.pod_ns("a"), "ip", "route", "show", "default").split()[:3] == ["default", "via", "10.244.0.1"]
    [cni0] = lab.jsh(ns, "ip", "-j", "addr", "show", "cni0")
    assert [(a["local"], a["prefixlen"]) for a in cni0["addr_info"] if a["family"] == "inet"] == [("10.244.0.1", 24)]
    veth = names.pod_veth(lab.name, "default", "a")
    [port] = lab.jsh(ns, "ip", "-d", "-j", "link", "show", veth)
    assert port["master"] == "cni0" and port["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert lab.sh(ns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert lab.sh(ns, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables").strip() == "1"
    assert lab.sh(ns, "sysctl", "-n", "net.ipv4.icmp_ratelimit").strip() == "0", "denied probes get their ICMP error at once"
    assert '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' in lab.sh(ns, "iptables-save")


def test_host_gw_uses_plain_routes_and_no_device(lab):
    three_pods(lab, "host-gw")
    ns = lab.node_ns("node2")
    routes = {r["dst"]: r for r in lab.jsh(ns, "ip", "-j", "route")}
    assert routes["10.244.0.0/24"]["gateway"] == "10.10.20.10" and routes["10.244.0.0/24"]["dev"] == "eth0"
    assert "flannel.1" not in lab.sh(ns, "ip", "link")
    [eth0] = lab.jsh(lab.pod_ns("c"), "ip", "-j", "link", "show", "eth0")
    assert eth0["mtu"] == 1500


def test_the_underlay_switch_joins_every_host(lab):
    three_pods(lab, "vxlan")
    sw = names.underlay_netns(lab.name)
    ports = {link["ifname"]: link for link in lab.jsh(sw, "ip", "-j", "link") if link.get("master") == "br0"}
    assert set(ports) == {"node1", "node2", "client"}
    assert all(p["operstate"] == "UP" for p in ports.values())
    [br0] = lab.jsh(sw, "ip", "-j", "addr", "show", "br0")
    assert [(a["local"], a["prefixlen"]) for a in br0["addr_info"] if a["family"] == "inet"] == [("10.10.20.1", 24)], "the gateway"
    assert lab.sh(sw, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0", "the gateway forwards nothing"
    assert lab.sh(lab.node_ns("node1"), "ip", "route", "show", "default").split()[:3] == ["default", "via", "10.10.20.1"]


def test_a_pod_reaches_itself_and_its_own_loopback(lab):
    three_pods(lab, "vxlan")
    assert lab.probe("a", "a", "tcp").verdict == "open"
    assert lab.sh(lab.pod_ns("a"), "curl", "-s", "-m", "2", "http://127.0.0.1:8080/").startswith('{"pod": "default/a"')
