"""NetworkPolicy in the kernel, checked by `labctl verify` against the engine,
on the upstream conformance topology (x, y, z; a, b, c; TCP and UDP 80, 81), in
every IP stack (a dual-stack lab is verified over both families)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from labctl import changes
from labctl.lab import LabHandle
from labctl.model import family
from labctl.model.documents import parse_text
from labctl.policy import verify as V
from tests.helpers import CONFORMANCE, PODS, new_lab_name, np
from tests.kernel.conftest import STACKS

pytestmark = pytest.mark.kernel
V4_NETS = "  nodeNetwork: 10.10.30.0/24\n  podNetwork: 10.245.0.0/16\n  serviceNetwork: 10.97.0.0/16\n"
NETS = {
    "ipv4": V4_NETS,
    "ipv6": "  ipFamilies: [IPv6]\n  nodeNetwork: fd00:10:30::/64\n  podNetwork: fd00:10:245::/56\n  serviceNetwork: fd00:10:97::/112\n",
    "dual": "  ipFamilies: [IPv4, IPv6]\n  nodeNetwork: [10.10.30.0/24, fd00:10:30::/64]\n  podNetwork: [10.245.0.0/16, fd00:10:245::/56]\n"
    "  serviceNetwork: [10.97.0.0/16, fd00:10:97::/112]\n",
}


def host(ip: str) -> str:
    """One address as a CIDR of its family."""
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


class PolicyLab:
    def __init__(self, stack: str = "ipv4"):
        self.name = new_lab_name()
        self.handle = LabHandle(self.name)
        self.stack = stack
        assert V4_NETS in CONFORMANCE
        self.base = CONFORMANCE.replace("name: netpol", f"name: {self.name}").replace(V4_NETS, NETS[stack])

    def views(self):
        """The applied lab as each family sees it (ipBlocks are written once per family)."""
        topo = self.handle.applied()
        return [v for _, v in family.views(topo)]

    def blocks(self, make) -> list[dict]:
        """make(view, zero) -> an ipBlock peer of that family (`zero`: its /0), for each family."""
        return [make(v, "::/0" if ":" in v.lab.pod_network else "0.0.0.0/0") for v in self.views()]

    def up(self, *policies: dict, text: str | None = None):
        body = (text or self.base) + "".join("---\n" + yaml.safe_dump(p) for p in policies)
        return self.handle.change(changes.up(parse_text(body, "netpol.yaml"), "netpol.yaml"), create=True)

    def verify(self):
        topo = self.handle.applied()
        done = V.run(topo, V.cases(topo))
        bad = [c.to_dict() for c in done if c.mismatch]
        assert not bad, "\n".join(
            f"{b['from']} -> {b['to']}:{b['port']}/{b['proto']} expected {b['expected']}, kernel {b['verdict']} ({b['detail']}): {b['why']}" for b in bad[:6]
        )
        return {(c.src, c.dst, c.port, c.protocol) for c in done if c.observed}

    def node_ns(self, node: str) -> str:
        return f"{self.name}-{node}"


@pytest.fixture(scope="module", params=STACKS)
def plab(request):
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root: sudo scripts/test.sh")
    lab = PolicyLab(request.param)
    lab.up()
    yield lab
    lab.handle.down()


def reached(open_: set, dst: str, port=80, proto="TCP") -> set[str]:
    """The conformance pods that reached dst (nodes and the DNS pod are checked on their own)."""
    return {s for s, d, p, pr in open_ if d == dst and p == port and pr == proto and s in PODS}


def pod_pairs(open_: set) -> set:
    """Between the conformance pods (verify also checks the cluster DNS pod)."""
    return {c for c in open_ if c[0] in PODS and c[1] in PODS}


def from_nodes(open_: set, dst: str, port=80, proto="TCP") -> set[str]:
    return {s for s, d, p, pr in open_ if d == dst and p == port and pr == proto and s.startswith("node/")}


def test_default_deny_ingress_and_egress(plab):
    got = plab.verify()
    assert len(pod_pairs(got)) == 324, "no policy: everything is open"
    assert len({c for c in got if c[1] in PODS and c[0] != "kube-system/coredns"}) == 324 + 2 * 36, "nodes reach every pod too"
    assert ("x/a", "kube-system/coredns", 53, "UDP") in got, "the cluster DNS pod is a pod like the others"
    got = plab.up(np("deny-in"), np("deny-out", ns="y", policyTypes=["Egress"]))
    got = plab.verify()
    assert reached(got, "x/a") == {"x/a"}
    node_of_xa = plab.handle.applied().pod("x/a").node
    assert from_nodes(got, "x/a") == {f"node/{node_of_xa}"}, "only the pod's own node gets past a default deny"
    assert {d for s, d, p, pr in got if s == "y/a"} == {"y/a"}
    assert reached(got, "y/a") >= {"x/a", "z/c"}


def test_selectors_and_or_and_match_expressions(plab):
    plab.up(
        np(
            "and",
            podSelector={"matchLabels": {"pod": "a"}},
            ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}],
        ),
        np(
            "or",
            podSelector={"matchLabels": {"pod": "b"}},
            ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}, {"podSelector": {"matchLabels": {"pod": "c"}}}]}],
        ),
        np(
            "expr",
            podSelector={"matchLabels": {"pod": "c"}},
            ingress=[{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x", "z"]}]}}]}],
        ),
    )
    got = plab.verify()
    assert reached(got, "x/a") == {"y/b", "x/a"}
    assert reached(got, "x/b") == {"z/a", "z/b", "z/c", "x/c", "x/b"}
    assert reached(got, "x/c") == {"y/a", "y/b", "y/c", "x/c"}


def test_ports_protocols_ranges_and_named_ports(plab):
    plab.up(
        np("named", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]),
        np("range", podSelector={"matchLabels": {"pod": "b"}}, ingress=[{"ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}]}]),
        np("udp-all", ns="y", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"protocol": "UDP"}]}]),
        np("egress-named", ns="z", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"], egress=[{"ports": [{"port": "serve-80-tcp"}]}]),
    )
    got = plab.verify()
    everyone_but_za = {f"{ns}/{p}" for ns in "xyz" for p in "abc"} - {"z/a"}  # z/a may only send to serve-80-tcp
    assert reached(got, "x/a", 81, "UDP") == everyone_but_za and reached(got, "x/a", 80, "UDP") == {"x/a"}
    assert reached(got, "x/b", 81, "TCP") == everyone_but_za and reached(got, "x/b", 80, "UDP") == {"x/b"}
    assert reached(got, "y/a", 80, "UDP") == everyone_but_za and reached(got, "y/a", 80, "TCP") == {"y/a"}
    assert {d for s, d, p, pr in got if s == "z/a" and (p, pr) == (81, "TCP")} == {"z/a"}


def test_ip_blocks_with_except_and_a_rule_that_rescues(plab):
    block = plab.blocks(lambda v, _: {"ipBlock": {"cidr": v.lab.pod_network, "except": [host(v.pod("x/b").ip)]}})
    plab.up(np("ipb", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": block}]))
    got = plab.verify()
    assert "x/b" not in reached(got, "x/a")
    assert from_nodes(got, "x/a") == {"node/node1", "node/node2"}, "over VXLAN a remote node comes from its flannel.1 address, in the pod network"
    plab.up(np("ipb", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": block}, {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]))
    assert "x/b" in reached(plab.verify(), "x/a")


def test_every_ip_block_edge(plab):
    """/0 with excepts (the "internet but not the metadata address" rule; a hash:net set
    cannot hold a /0), a /32 cidr, an except equal to one host, several excepts."""
    internet = plab.blocks(lambda v, zero: {"ipBlock": {"cidr": zero, "except": [host(v.pod("x/b").ip), host(v.pod("y/c").ip)]}})
    plab.up(
        np("all-but-two", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": internet}]),
        np(
            "one-host",
            ns="y",
            podSelector={"matchLabels": {"pod": "a"}},
            ingress=[{"from": plab.blocks(lambda v, _: {"ipBlock": {"cidr": host(v.pod("z/b").ip)}})}],
        ),
        np(
            "out-not-xa",
            ns="z",
            podSelector={"matchLabels": {"pod": "c"}},
            policyTypes=["Egress"],
            egress=[{"to": plab.blocks(lambda v, zero: {"ipBlock": {"cidr": zero, "except": [host(v.pod("x/a").ip)]}})}],
        ),
    )
    got = plab.verify()
    everyone = {f"{ns}/{p}" for ns in "xyz" for p in "abc"}
    assert reached(got, "x/a") == everyone - {"x/b", "y/c", "z/c"}, "z/c may not send to x/a: its own egress excepts it"
    assert reached(got, "y/a") == {"z/b", "y/a"}
    assert {d for s, d, p, pr in got if s == "z/c" and d in PODS and (p, pr) == (80, "TCP")} == everyone - {"x/a", "y/a"}, "y/a admits z/b alone"


def test_nodes_over_host_gw_come_from_their_node_ip():
    lab = PolicyLab()
    text = lab.base.replace("  nodes:\n", "  overlay: host-gw\n  nodes:\n")
    assert "host-gw" in text
    node_net = {"ipBlock": {"cidr": "10.10.30.0/24"}}
    try:
        lab.up(np("from-nodes", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [node_net]}]), text=text)
        got = lab.verify()
        assert reached(got, "x/a") == {"x/a"}, "pods are not in the node network"
        assert from_nodes(got, "x/a") == {"node/node1", "node/node2"}, "the remote node is seen with its node IP, inside the ipBlock"
        lab.up(np("from-nodes", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"ipBlock": {"cidr": "10.10.31.0/24"}}]}]), text=text)
        own = lab.handle.applied().pod("x/a").node
        assert from_nodes(lab.verify(), "x/a") == {f"node/{own}"}
    finally:
        lab.handle.down()


def test_updates_relabels_and_deletes(plab):
    deny_b = np("deny-b", podSelector={"matchLabels": {"pod": "b"}})
    plab.up(deny_b)
    assert reached(plab.verify(), "x/b") == {"x/b"}
    node = plab.handle.applied().pod("x/b").node
    chains_before = _policy_chains(plab, node)
    relabelled = plab.base.replace("metadata: {name: b, namespace: x, labels: {pod: b}}", "metadata: {name: b, namespace: x, labels: {pod: bee}}")
    result = plab.up(deny_b, text=relabelled)
    assert [p.chains_text for p in result.policies_synced] == [""] * len(result.policies_synced), "a relabel touches sets only"
    assert _policy_chains(plab, node) == chains_before
    assert len(reached(plab.verify(), "x/b")) == 9, "x/b left the policy's selection"
    # a namespace relabel moves pods in and out of namespaceSelector peers
    from_y = np("from-y", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}])
    plab.up(from_y)
    assert reached(plab.verify(), "x/a") == {"y/a", "y/b", "y/c", "x/a"}
    from labctl.status import status

    shown = {(p["namespace"], p["name"]): p for p in status(plab.handle)["policies"]}
    assert shown[("x", "from-y")]["selects"] == ["a"] and shown[("x", "from-y")]["policyTypes"] == ["Ingress"]
    assert list(shown) == [("x", "from-y")], "deny-b was deleted (not in the file any more)"
    plab.up(from_y, text=plab.base.replace("metadata: {name: z, labels: {ns: z}}", "metadata: {name: z, labels: {ns: y}}"))
    assert reached(plab.verify(), "x/a") == {"y/a", "y/b", "y/c", "z/a", "z/b", "z/c", "x/a"}
    plab.up()
    assert len(pod_pairs(plab.verify())) == 324, "policies deleted: open again"


def test_replies_are_allowed_and_services_see_the_pod(plab):
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "xa", "namespace": "x"},
        "spec": {"selector": {"pod": "a"}, "ports": [{"port": 8080, "targetPort": 80}], "ipFamilyPolicy": "PreferDualStack"},
    }
    plab.up(np("deny-in", podSelector={"matchLabels": {"pod": "a"}}), svc)
    got = plab.verify()
    assert {d for s, d, p, pr in got if s == "x/a"} == set(PODS) | {"kube-system/coredns"}, "x/a denies all ingress, yet its own connections get replies"
    from tests.kernel.conftest import KernelLab

    k = KernelLab(Path("/tmp"), plab.name).use(plab.stack)
    assert k.probe("y/a", "svc/x/xa").verdict == "blocked", "through a ClusterIP: the same verdict as the pod"
    assert k.probe("y/a", "x/a", port=80).verdict == "blocked"


def _policy_chains(plab, node) -> str:
    import subprocess

    save = "ip6tables-save" if plab.stack == "ipv6" else "iptables-save"
    out = subprocess.run(["ip", "netns", "exec", plab.node_ns(node), save, "-t", "filter"], capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if line.startswith(("-A LABCTL-NETPOL", "-A NP-", ":NP-", ":LABCTL")))


# -- differential: random policies, the kernel against the engine ------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

labels = st.sampled_from(
    [
        {},
        {"matchLabels": {"pod": "a"}},
        {"matchLabels": {"pod": "b"}},
        {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]},
        {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]},
    ]
)
ns_labels = st.sampled_from(
    [{}, {"matchLabels": {"ns": "x"}}, {"matchLabels": {"ns": "y"}}, {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y", "z"]}]}]
)


@st.composite
def peers(draw):
    kind = draw(st.sampled_from(["pod", "ns", "both", "ip"]))
    if kind == "pod":
        return {"podSelector": draw(labels)}
    if kind == "ns":
        return {"namespaceSelector": draw(ns_labels)}
    if kind == "both":
        return {"podSelector": draw(labels), "namespaceSelector": draw(ns_labels)}
    cidr = draw(st.sampled_from(["10.245.0.0/16", "10.245.0.0/24", "10.245.1.0/24"]))
    host = draw(st.integers(2, 6))
    base = cidr.split("/")[0].rsplit(".", 1)[0]
    return {"ipBlock": {"cidr": cidr, "except": [f"{base}.{host}/32"]} if cidr.endswith("/24") else {"cidr": cidr}}


ports = st.sampled_from(
    [
        {"port": 80},
        {"port": 81, "protocol": "UDP"},
        {"protocol": "UDP"},
        {"port": 80, "endPort": 81},
        {"port": "serve-80-tcp"},
        {"port": "serve-81-udp", "protocol": "UDP"},
        {"port": "serve-80-udp"},
    ]
)


@st.composite
def rules(draw, peer_key):
    rule = {}
    if draw(st.booleans()):
        rule[peer_key] = draw(st.lists(peers(), min_size=1, max_size=2))
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(ports, min_size=1, max_size=2))
    return rule


@st.composite
def policy(draw, index):
    spec = {"podSelector": draw(labels)}
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if types:
        spec["policyTypes"] = types
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(rules("from"), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(rules("to"), max_size=2))
    return np(f"p{index}", ns=draw(st.sampled_from("xyz")), **spec)


@st.composite
def policy_sets(draw):
    n = draw(st.integers(1, 3))
    return [draw(policy(i)) for i in range(n)]


@settings(
    max_examples=int(os.environ.get("LABCTL_DIFFERENTIAL_EXAMPLES", "8")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(policy_sets())
def test_random_policies_kernel_equals_engine(plab, policies):
    plab.up(*policies)
    plab.verify()  # asserts zero mismatches over 324 probes


def test_a_lab_without_policies_has_no_policy_chain_until_one_comes(lab):
    """As on a cluster whose policy controller has nothing to enforce: no chain, no set."""
    from tests.helpers import pod

    pods = (pod("a", node="node1"), pod("b", node="node2"))
    lab.up(lab.doc(), *pods)
    for n in ("node1", "node2"):
        assert "LABCTL-NETPOL" not in lab.sh(lab.node_ns(n), "iptables-save", "-t", "filter")
        assert lab.sh(lab.node_ns(n), "ipset", "list", "-n").strip() == ""
    assert lab.probe("a", "b").verdict == "open"
    lab.up(lab.doc(), *pods, np("deny-b", ns="default", podSelector={"matchLabels": {"app": "b"}}))
    assert lab.probe("a", "b").verdict == "blocked"
    assert "LABCTL-NETPOL" in lab.sh(lab.node_ns("node2"), "iptables-save", "-t", "filter")
    lab.up(lab.doc(), *pods)
    assert lab.probe("a", "b").verdict == "open"
