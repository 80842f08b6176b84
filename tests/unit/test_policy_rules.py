"""The enforcer's rendering: chains, ipsets, and what a relabel changes."""

from __future__ import annotations

import yaml

from labctl.policy import rules as R
from labctl.policy.sync import plan_node
from tests.helpers import CONFORMANCE, np
from tests.helpers import conformance_lab as lab

POLICIES = [
    np("deny"),
    np(
        "from-y",
        podSelector={"matchLabels": {"pod": "a"}},
        ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": "serve-80-tcp"}, {"port": 81, "protocol": "UDP"}]}],
    ),
    np(
        "out",
        ns="y",
        podSelector={"matchLabels": {"pod": "b"}},
        policyTypes=["Egress"],
        egress=[{"to": [{"ipBlock": {"cidr": "10.245.0.0/16", "except": ["10.245.1.0/24"]}}], "ports": [{"port": 80, "endPort": 81}]}],
    ),
]


def test_every_jump_target_is_a_chain_or_a_target():
    topo = lab(*POLICIES)
    for node in ("node1", "node2"):
        r = R.render(topo, node)
        for chain, lines in r.chains.items():
            for line in lines:
                assert line.startswith(f"-A {chain} ")
                target = line.split(" -j ")[1].split()[0]
                assert target in r.chains or target in ("RETURN", "MARK", "REJECT"), line
                for name in [w for i, w in enumerate(line.split()) if i and line.split()[i - 1] == "--match-set"]:
                    assert name in r.sets, f"{name} is used but not created"


def test_sets_hold_selected_pods_and_ip_blocks_with_nomatch_excepts():
    topo = lab(*POLICIES)
    r = R.render(topo, "node1")
    local = {p.ip for p in topo.pods if p.node == "node1"}
    x_local = {p.ip for p in topo.pods if p.node == "node1" and p.namespace == "x"}
    assert r.sets[R.ISOLATED["ingress"]].members == x_local
    assert r.sets[R.ISOLATED["ingress"]].members <= local
    nets = [s for s in r.sets.values() if s.type == "hash:net"]
    assert [sorted(s.members) for s in nets] == [["10.245.0.0/16", "10.245.1.0/24 nomatch"]]
    named = [s for s in r.sets.values() if s.type == "hash:ip,port"]
    xa = topo.pod("x/a")
    expected = {f"{xa.ip},tcp:80"} if xa.node == "node1" else set()
    assert [s.members for s in named] == [expected], "a named port resolves on this node's target pods"
    text = "\n".join(line for lines in r.chains.values() for line in lines)
    assert "-p tcp -m tcp --dport 80:81" in text and "-p udp -m udp --dport 81" in text
    assert "REJECT --reject-with icmp-admin-prohibited" in text


def test_a_slash_zero_ip_block_is_stored_as_two_halves():
    """`ipset add` refuses 0.0.0.0/0 in a hash:net set; its two /1 halves match the same addresses."""
    block = {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32", "10.245.0.0/16"]}
    r = R.render(lab(np("p", ingress=[{"from": [{"ipBlock": block}]}])), "node1")
    nets = [s for s in r.sets.values() if s.type == "hash:net"]
    assert [sorted(s.members) for s in nets] == [["0.0.0.0/1", "10.245.0.0/16 nomatch", "128.0.0.0/1", "169.254.169.254/32 nomatch"]]


def test_a_relabel_changes_set_members_not_chains():
    from labctl.model.documents import parse_text
    from labctl.model.load import build

    before = lab(*POLICIES)
    text = CONFORMANCE.replace("metadata: {name: b, namespace: x, labels: {pod: b}}", "metadata: {name: b, namespace: x, labels: {pod: a}}")
    assert text != CONFORMANCE

    after = build(parse_text(text + "".join("---\n" + yaml.safe_dump(p) for p in POLICIES), "t"), "t", previous=before)
    xb = after.pod("x/b")
    r1, r2 = R.render(before, xb.node), R.render(after, xb.node)
    assert r1.chains == r2.chains and r1.digest() == r2.digest()
    changed = {n for n in r1.sets if r1.sets[n].members != r2.sets[n].members}
    assert changed, "x/b now matches pod=a selectors"
    rec = plan_node(before, xb.node, None, table_replaced=True).record
    p = plan_node(after, xb.node, rec, table_replaced=False)
    assert p.chains_text == "" and p.destroy_text == ""
    assert p.sets_text and all(line.split()[0] in ("add", "del") for line in p.sets_text.splitlines())


def test_a_new_policy_rewrites_chains_and_an_unchanged_lab_does_nothing():
    one = lab(POLICIES[0])
    rec = plan_node(one, "node1", None, table_replaced=True).record
    assert plan_node(one, "node1", rec, table_replaced=False).empty
    two = lab(*POLICIES)
    p = plan_node(two, "node1", rec, table_replaced=False)
    assert ":LABCTL-NETPOL-INGRESS - [0:0]" in p.chains_text and "-I FORWARD" not in p.chains_text, "jumps are installed once"
    fresh = plan_node(two, "node1", rec, table_replaced=True)
    assert '-I FORWARD 1 -m comment --comment "labctl network policies" -j LABCTL-NETPOL' in fresh.chains_text
    gone = plan_node(one, "node1", plan_node(two, "node1", rec, False).record, False)
    assert "-X NP-" in gone.chains_text and gone.destroy_text.startswith("destroy NP-")


def test_a_peer_changing_kind_gets_a_new_set_and_the_old_goes_after_the_chains():
    ipb = np("p", ingress=[{"from": [{"ipBlock": {"cidr": "10.245.0.0/16"}}]}])
    sel = np("p", ingress=[{"from": [{"podSelector": {}}]}])
    rec = plan_node(lab(ipb), "node1", None, table_replaced=True).record
    p = plan_node(lab(sel), "node1", rec, table_replaced=False)
    old = {n for n, (t, _) in rec["sets"].items() if t == "hash:net"}
    assert old and all(f"destroy {n}" in p.destroy_text for n in old), "destroyed after the chains stop using it"
    assert "destroy" not in p.sets_text and p.chains_text, "the new set is created first, the chains then point at it"
