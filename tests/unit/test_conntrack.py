"""Stale UDP conntrack entries: which service frontends, which entries go. Pure."""

from __future__ import annotations

from labctl.proxy import conntrack
from labctl.proxy.endpoints import service_ports
from tests.helpers import dump, lab_doc, load, pod, svc

LISTING = """\
udp      17 27 src=10.244.0.5 dst=10.96.0.11 sport=40000 dport=53 src=10.244.1.2 dst=10.244.0.5 sport=5353 dport=40000 mark=0 use=1
udp      17 29 src=10.244.0.5 dst=10.96.0.11 sport=40001 dport=53 src=10.244.0.2 dst=10.244.0.5 sport=5353 dport=40001 [ASSURED] mark=0 use=1
udp      17 25 src=10.244.0.5 dst=10.96.0.11 sport=40002 dport=53 [UNREPLIED] src=10.96.0.11 dst=10.244.0.5 sport=53 dport=40002 mark=0 use=1
udp      17 20 src=10.10.20.100 dst=10.10.20.10 sport=41000 dport=30053 src=10.244.1.2 dst=10.10.20.10 sport=5353 dport=41000 mark=0 use=1
udp      17 20 src=10.244.0.5 dst=10.244.1.2 sport=42000 dport=5353 src=10.244.1.2 dst=10.244.0.5 sport=5353 dport=42000 mark=0 use=1
"""


def topo(udp_pods=("a",)):
    pods = [pod(n, node="node1" if n == "a" else "node2", ports=(8080,), udp=(5353,), labels={"app": "dns"}) for n in udp_pods]
    s = svc("dns", {"app": "dns"}, ports=((53, 5353),), type="NodePort")
    s["spec"]["ports"][0].update(protocol="UDP", nodePort=30053)
    web = svc("web", {"app": "dns"}, ports=((80, 8080),))
    return load(dump(lab_doc(), *pods, s, web))


def test_frontends_are_the_udp_service_addresses_with_their_endpoints():
    t = topo(("a", "b"))
    fronts = conntrack.targets(service_ports(t), "10.10.20.10")
    eps = frozenset({t.pod("default/a").ip, t.pod("default/b").ip})
    assert fronts == {("10.96.0.11", 53): eps, ("10.10.20.10", 30053): eps}, "the TCP service is not there"


def test_parse_reads_the_original_direction_and_the_reply_source():
    e = conntrack.parse(LISTING)
    assert len(e) == 5
    assert e[0] == conntrack.Entry("10.244.0.5", "10.96.0.11", 40000, 53, "10.244.1.2")
    assert e[2].reply_src == "10.96.0.11", "[UNREPLIED] flags do not shift the fields"


def test_stale_entries_are_those_replied_by_no_endpoint():
    fronts = {("10.96.0.11", 53): frozenset({"10.244.0.2"}), ("10.10.20.10", 30053): frozenset({"10.244.0.2"})}
    gone = conntrack.stale(conntrack.parse(LISTING), fronts)
    assert [e.sport for e in gone] == [40000, 40002, 41000], "a removed endpoint, no translation, a node port to the removed endpoint"
    assert conntrack.stale(conntrack.parse(LISTING), {}) == [], "pod-to-pod entries and unknown frontends stay"
