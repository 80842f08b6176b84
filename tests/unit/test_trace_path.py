"""labctl trace's path hops (route, bridge, conntrack, encap, decap, deliver, drop)
from the monitors' packet lines and a namespace's kernel state (pure: the state
is given, as View would read it)."""

from __future__ import annotations

from labctl.probe import path as P
from labctl.probe import trace as T

NODE1 = """PACKET: 2 aa IN=cni0 MACSRC=a:58:a:f4:0:3 SRC=10.244.0.3 DST=10.96.0.11 SPORT=40000 DPORT=80 SYN
 TRACE: 2 aa nat:KUBE-SEP-X:rule:0x63:ACCEPT  -4 -t nat -A KUBE-SEP-X -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080
PACKET: 2 bb IN=cni0 OUT=flannel.1 MACSRC=a:58:a:f4:0:3 SRC=10.244.0.3 DST=10.244.1.2 SPORT=40000 DPORT=8080 SYN
 TRACE: 2 bb filter:FLANNEL-FWD:rule:0x23:ACCEPT  -4 -t filter -A FLANNEL-FWD -s 10.244.0.0/16 -j ACCEPT
PACKET: 2 cc IN=flannel.1 MACSRC=be:2:27:db:59:d2 SRC=10.244.1.2 DST=10.244.0.3 SPORT=8080 DPORT=40000 SYN ACK
PACKET: 2 dd IN=flannel.1 OUT=cni0 MACSRC=be:2:27:db:59:d2 SRC=10.244.1.2 DST=10.244.0.3 SPORT=8080 DPORT=40000 SYN ACK
 TRACE: 2 dd filter:KUBE-FORWARD:rule:0x22:ACCEPT  -4 -t filter -A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
"""


class FakeView(P.View):
    """A node1 of the demo: cni0 with the client's veth, flannel.1 toward node2."""

    def __init__(self):
        super().__init__("lab-node1")
        self.asked = []

    links = {
        "cni0": {"kind": "bridge", "data": {}},
        "flannel.1": {"kind": "vxlan", "data": {"id": 1, "local": "10.10.20.10", "port": 8472}},
        "eth0": {"kind": "veth", "data": {}},
    }
    fdb = [
        {"mac": "0a:58:0a:f4:00:03", "ifname": "veth1234", "master": "cni0"},
        {"mac": "be:02:27:db:59:d2", "ifname": "flannel.1", "dst": "10.10.20.11"},
    ]
    neighbours = [
        {"dst": "10.244.1.0", "dev": "flannel.1", "lladdr": "be:02:27:db:59:d2"},
        {"dst": "10.244.0.3", "dev": "cni0", "lladdr": "0a:58:0a:f4:00:03"},
    ]

    def fibmatch(self, dst):
        self.asked.append(dst)
        return (
            "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink"
            if dst.startswith("10.244.1.")
            else "10.244.0.0/24 dev cni0 proto kernel scope link src 10.244.0.1"
        )

    def conntrack(self, proto, sport):
        return f"tcp      6 9 CLOSE src=10.244.0.3 dst=10.96.0.11 sport={sport} dport=80 src=10.244.1.2 dst=10.244.0.3 sport=8080 dport={sport} [ASSURED] mark=0 use=1"


NAMES = {"10.244.0.3": "default/client", "10.244.1.2": "default/web-1", "10.10.20.11": "node/node2"}.get


def test_the_path_around_the_rules_comes_from_the_packets_devices_and_the_kernels_tables():
    view = FakeView()
    hops = P.expand(T.parse(NODE1, "node/node1", 40000), view, NAMES, "tcp", 40000)
    request = [h for h in hops if h["direction"] == "request"]
    reply = [h for h in hops if h["direction"] == "reply"]
    assert [h["kind"] for h in request] == ["bridge", "conntrack", "netfilter", "route", "netfilter", "encap"]
    assert request[0]["port"] == "veth1234" and "default/client" in request[0]["detail"], "the FDB names the client's bridge port"
    assert "original 10.244.0.3:40000 -> 10.96.0.11:80, reply 10.244.1.2:8080 -> 10.244.0.3:40000" in request[1]["detail"]
    assert request[3]["gateway"] == "10.244.1.0" and view.asked[0] == "10.244.1.2", "routed on the address after the DNAT"
    assert request[5]["outer"] == {"src": "10.10.20.10", "dst": "10.10.20.11", "dport": 8472, "vni": 1}
    assert [h["kind"] for h in reply] == ["decap", "route", "netfilter", "conntrack", "deliver"]
    assert reply[0]["outer"]["src"] == "10.10.20.11" and "node/node2" in reply[0]["detail"]
    assert reply[3]["nat"] == {"field": "src", "before": "10.244.1.2:8080", "after": "10.96.0.11:80"}, "the DNAT undone on the way back"
    assert reply[4]["netns"] == "default/client" and reply[4]["port"] == "veth1234"


def test_a_rewrite_seen_last_in_a_node_is_read_from_conntracks_reply_tuple():
    text = """PACKET: 2 aa IN=eth0 OUT=flannel.1 SRC=10.10.20.100 DST=10.244.1.2 SPORT=40000 DPORT=8080 SYN
 TRACE: 2 aa nat:KUBE-POSTROUTING:rule:0x5:ACCEPT  -4 -t nat -A KUBE-POSTROUTING -j MASQUERADE --random-fully
"""

    class View(FakeView):
        def conntrack(self, proto, sport):
            return "tcp 6 9 CLOSE src=10.10.20.100 dst=10.10.20.10 sport=40000 dport=30080 src=10.244.1.2 dst=10.244.0.0 sport=8080 dport=61234 [ASSURED]"

    hops = P.expand(T.parse(text, "node/node1", 40000), View(), NAMES, "tcp", 40000)
    masq = next(h for h in hops if h["kind"] == "netfilter")
    assert masq["nat"] == {"field": "src", "before": "10.10.20.100:40000", "after": "10.244.0.0:61234"}
    assert T.outcome(hops) == (None, "10.244.0.0:61234")
    assert "inner 10.244.0.0 -> 10.244.1.2" in hops[-1]["detail"], "encapsulated after the masquerade"


def test_a_drop_ends_the_direction_in_that_node():
    text = """PACKET: 2 aa IN=flannel.1 OUT=cni0 MACSRC=be:2:27:db:59:d2 SRC=10.244.0.3 DST=10.244.1.2 SPORT=40000 DPORT=5432 SYN
 TRACE: 2 aa filter:LABCTL-NETPOL-INGRESS:rule:0x9:DROP  -4 -t filter -A LABCTL-NETPOL-INGRESS -j REJECT --reject-with icmp-admin-prohibited
"""
    hops = P.expand(T.parse(text, "node/node2", 40000), FakeView(), NAMES, "tcp", 40000)
    assert [h["kind"] for h in hops][-2:] == ["netfilter", "drop"] and "LABCTL-NETPOL-INGRESS" in hops[-1]["detail"]


def test_nodes_are_ordered_along_the_encapsulation_from_where_the_flow_entered():
    by_node = {
        "node1": [{"direction": "request", "kind": "decap"}, {"direction": "request", "kind": "route", "gateway": None}],
        "node3": [{"direction": "request", "kind": "encap", "outer": {"dst": "10.0.0.1"}}],
        "node2": [{"direction": "reply", "kind": "route", "gateway": "10.0.0.3"}],
    }
    ips = {"node1": "10.0.0.1", "node2": "10.0.0.2", "node3": "10.0.0.3"}
    assert P.order(by_node, "request", None, ips) == ["node3", "node1"]
    assert P.order(by_node, "reply", None, ips) == ["node2"]


def test_conntrack_lines_and_ipvs_connections_parse():
    ct = P.conntrack_entry(
        "udp      17 29 src=10.244.0.3 dst=10.96.0.10 sport=40000 dport=53 [UNREPLIED] src=10.244.0.4 dst=10.244.0.3 sport=53 dport=40000 mark=0 use=1"
    )
    assert ct["state"] == "" and ct["reply"] == {"src": "10.244.0.4", "dst": "10.244.0.3", "sport": "53", "dport": "40000"} and ct["flags"] == ["UNREPLIED"]
    listing = "IPVS connection entries\npro expire state   source            virtual        destination\nTCP 00:59  SYN_RECV 10.244.0.3:40000  10.96.0.11:80  10.244.1.2:8080\n"
    assert P.ipvs_connection(listing, 40000) == {
        "proto": "TCP",
        "state": "SYN_RECV",
        "client": "10.244.0.3:40000",
        "virtual": "10.96.0.11:80",
        "real": "10.244.1.2:8080",
    }
    assert P.mac("a:58:a:f4:0:3") == "0a:58:0a:f4:00:03" and P.mac("@ll,0,112") is None
