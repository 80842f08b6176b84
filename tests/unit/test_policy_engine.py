"""The policy engine, point by point of the NetworkPolicy semantics, as truth tables
over the upstream conformance model (namespaces x, y, z; pods a, b, c)."""

from __future__ import annotations

import pytest

from labctl.errors import InvalidInput
from labctl.policy.engine import Engine, Party
from tests.helpers import PODS, np
from tests.helpers import conformance_lab as lab


def allowed(topo, port=80, proto="TCP") -> set[tuple[str, str]]:
    e = Engine(topo)
    pods = {p.key: p for p in topo.pods}
    return {(s, d) for s in PODS for d in PODS if e.pods(pods[s], pods[d], port, proto).allowed}


ALL = {(s, d) for s in PODS for d in PODS}


def into(dsts, srcs=PODS):
    return {(s, d) for s in srcs for d in dsts}


def test_no_policy_allows_everything():
    assert allowed(lab()) == ALL


def test_absent_pod_selector_isolates_every_pod_of_the_namespace():
    t = lab(np("deny"))  # ingress absent: nothing allowed in
    expected = ALL - into(["x/a", "x/b", "x/c"]) | {("x/a", "x/a"), ("x/b", "x/b"), ("x/c", "x/c")}
    assert allowed(t) == expected, "a pod reaching itself is never blocked"


def test_unselected_pods_allow_everything():
    t = lab(np("deny-a", podSelector={"matchLabels": {"pod": "a"}}))
    assert allowed(t) == ALL - into(["x/a"]) | {("x/a", "x/a")}


def test_empty_ingress_rule_allows_everything():
    assert allowed(lab(np("all", ingress=[{}]))) == ALL


def test_ingress_empty_list_allows_nothing():
    assert allowed(lab(np("none", ingress=[]))) == allowed(lab(np("deny")))


def test_policy_types_defaulting():
    # egress: [] without policyTypes does not isolate egress
    assert allowed(lab(np("e", ns="y", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{}], egress=[]))) == ALL
    # a non-empty egress list adds Egress
    t = lab(np("e", ns="y", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{}], egress=[{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]))
    assert {d for s, d in allowed(t) if s == "y/a"} == {"y/a", "y/b"}
    # explicit Egress only: ingress is not isolated
    t = lab(np("e", ns="y", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"]))
    assert {d for s, d in allowed(t) if s == "y/a"} == {"y/a"}
    assert into(["y/a"]) <= allowed(t)


def test_policies_add_up():
    t = lab(
        np("from-y", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]),
        np("from-b", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]),
    )
    assert {s for s, d in allowed(t) if d == "x/a"} == {"y/a", "y/b", "y/c", "x/b", "x/a"}


def test_pod_selector_alone_means_the_policys_namespace():
    t = lab(np("b", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]))
    assert {s for s, d in allowed(t) if d == "x/a"} == {"x/b", "x/a"}


def test_namespace_and_pod_selector_together_is_and_apart_is_or():
    both = lab(
        np(
            "and",
            podSelector={"matchLabels": {"pod": "a"}},
            ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}],
        )
    )
    assert {s for s, d in allowed(both) if d == "x/a"} == {"y/b", "x/a"}
    either = lab(
        np(
            "or",
            podSelector={"matchLabels": {"pod": "a"}},
            ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}],
        )
    )
    assert {s for s, d in allowed(either) if d == "x/a"} == {"y/a", "y/b", "y/c", "x/b", "x/a"}


def test_empty_namespace_selector_means_every_namespace():
    t = lab(
        np("any-b", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}])
    )
    assert {s for s, d in allowed(t) if d == "x/a"} == {"x/b", "y/b", "z/b", "x/a"}


def test_namespaces_carry_their_name_label():
    t = lab(
        np(
            "by-name",
            podSelector={"matchLabels": {"pod": "a"}},
            ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}],
        )
    )
    assert {s for s, d in allowed(t) if d == "x/a"} == {"z/a", "z/b", "z/c", "x/a"}


def test_match_expressions():
    pods = {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}
    not_z = {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["z"]}]}
    t = lab(np("expr", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"namespaceSelector": not_z, "podSelector": pods}]}]))
    assert {s for s, d in allowed(t) if d == "x/a"} == {"x/b", "x/c", "y/b", "y/c", "x/a"}
    # NotIn matches objects without the key: pods carry no "ns" label
    t = lab(np("absent", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": not_z}]}]))
    assert {s for s, d in allowed(t) if d == "x/a"} == {"x/a", "x/b", "x/c"}
    exists = {"matchExpressions": [{"key": "ns", "operator": "Exists"}]}
    t = lab(np("ex", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"namespaceSelector": exists}]}]))
    assert {s for s, d in allowed(t) if d == "x/a"} == set(PODS)
    absent = {"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]}
    t = lab(np("dne", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": absent}]}]))
    assert {s for s, d in allowed(t) if d == "x/a"} == {"x/a"}


def test_ports_protocols_ranges_and_named_ports():
    t = lab(np("ports", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"port": 80}]}]))
    assert into(["x/a"]) <= allowed(t, 80, "TCP")
    assert {s for s, d in allowed(t, 80, "UDP") if d == "x/a"} == {"x/a"}, "protocol defaults to TCP"
    assert {s for s, d in allowed(t, 81, "TCP") if d == "x/a"} == {"x/a"}
    udp_all = lab(np("udp", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"protocol": "UDP"}]}]))
    assert into(["x/a"]) <= allowed(udp_all, 81, "UDP") and {s for s, d in allowed(udp_all, 81, "TCP") if d == "x/a"} == {"x/a"}
    rng = lab(np("range", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"port": 79, "endPort": 80}]}]))
    assert into(["x/a"]) <= allowed(rng, 80) and {s for s, d in allowed(rng, 81) if d == "x/a"} == {"x/a"}
    named = lab(np("named", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]))
    assert into(["x/a"]) <= allowed(named, 81, "UDP") and {s for s, d in allowed(named, 80, "UDP") if d == "x/a"} == {"x/a"}
    wrong_proto = lab(np("np", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"port": "serve-81-udp"}]}]))
    assert {s for s, d in allowed(wrong_proto, 81, "TCP") if d == "x/a"} == {"x/a"}, "a named port must match its protocol"
    unknown = lab(np("unk", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"port": "no-such-port"}]}]))
    assert {s for s, d in allowed(unknown, 80) if d == "x/a"} == {"x/a"}


def test_egress_named_ports_resolve_on_the_destination():
    t = lab(np("e", ns="y", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"], egress=[{"ports": [{"port": "serve-80-tcp"}]}]))
    assert {d for s, d in allowed(t, 80) if s == "y/a"} == set(PODS)
    assert {d for s, d in allowed(t, 81) if s == "y/a"} == {"y/a"}


def test_both_ends_must_allow():
    t = lab(
        np(
            "out",
            ns="y",
            podSelector={"matchLabels": {"pod": "a"}},
            policyTypes=["Egress"],
            egress=[{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}],
        ),
        np("in", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]),
    )
    got = allowed(t)
    assert ("y/a", "x/b") in got and ("y/a", "x/a") not in got and ("y/a", "z/a") not in got


def test_ip_blocks_with_except_match_pod_addresses():
    base = lab()
    xb = base.pod("x/b").ip
    block = {"ipBlock": {"cidr": "10.245.0.0/16", "except": [f"{xb}/32"]}}
    t = lab(np("ipb", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [block]}]))
    srcs = {s for s, d in allowed(t) if d == "x/a"}
    assert "x/b" not in srcs and srcs == set(PODS) - {"x/b"}
    rescue = lab(np("ipb", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [block]}, {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]))
    assert {s for s, d in allowed(rescue) if d == "x/a"} == set(PODS), "another rule may allow an excepted address"


def test_selectors_never_match_outside_addresses_and_the_own_node_is_allowed():
    t = lab(np("only-pods", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"namespaceSelector": {}}]}]))
    e = Engine(t)
    xa = t.pod("x/a")
    other = next(n for n in t.lab.nodes if n.name != xa.node)
    own = t.lab.node(xa.node)
    assert not e.check(Party(other.ip, node=other.name), Party(xa.ip, xa), 80).allowed
    assert e.check(Party(own.ip, node=own.name), Party(xa.ip, xa), 80).allowed
    assert not e.check(Party("192.0.2.1"), Party(xa.ip, xa), 80).allowed
    t2 = lab(np("ipb", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]))
    assert Engine(t2).check(Party("192.0.2.1"), Party(xa.ip, xa), 80).allowed


def test_explanations_name_policies_and_rules():
    t = lab(np("deny"), np("allow", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]))
    e = Engine(t)
    ok = e.pods(t.pod("x/b"), t.pod("x/a"), 80)
    assert ok.allowed and ok.ingress.allowed_by == ["x/allow ingress rule 0"] and set(ok.ingress.isolated_by) == {"x/deny", "x/allow"}
    no = e.pods(t.pod("x/c"), t.pod("x/a"), 80)
    assert not no.allowed and "no rule allows it" in no.ingress.explain()


@pytest.mark.parametrize(
    "spec,path,message",
    [
        ({"ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]", "must specify podSelector, namespaceSelector or ipBlock"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}, "spec.ingress[0].from[0]", "may not be combined"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}]}, "spec.egress[0].to[0].ipBlock.except[0]", "strict subset"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]}, "spec.egress[0].to[0].ipBlock.except[0]", "strict subset"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]}, "spec.egress[0].to[0].ipBlock.cidr", "has host bits set; did you mean 10.0.0.0/8?"),
        ({"ingress": [{"ports": [{"endPort": 90}]}]}, "spec.ingress[0].ports[0].endPort", "may only be set with a port"),
        ({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "spec.ingress[0].ports[0].endPort", "must be at least port 90"),
        ({"ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}, "spec.ingress[0].ports[0].endPort", "named port"),
        ({"ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}, "spec.ingress[0].ports[0].protocol", "must be one of TCP, UDP, SCTP"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "spec.podSelector.matchExpressions[0].values", "non-empty"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Maybe"}]}}, "spec.podSelector.matchExpressions[0].operator", "must be one of"),
        ({"policyTypes": ["Inbound"]}, "spec.policyTypes[0]", "must be Ingress or Egress"),
    ],
)
def test_invalid_policies_are_refused_with_the_field_path(spec, path, message):
    with pytest.raises(InvalidInput) as e:
        lab(np("bad", **spec))
    text = str(e.value)
    assert e.value.exit_code == 2 and f"NetworkPolicy x/bad): {path}: " in text and message in text, text
