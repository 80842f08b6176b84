"""labctl trace on the real datapath (iptables mode): every traced rule is one the
node's iptables-save shows, the DNAT hop lands on the endpoint that answered, and
nothing of the trace stays behind."""

from __future__ import annotations

import json
import subprocess

import pytest

from labctl.probe.trace import normal_rule
from tests.helpers import deployment, pod, svc

pytestmark = pytest.mark.kernel


def listed(lab, node: str, mode: str) -> list[str]:
    """The node's rules as the trace must quote them: iptables-save lines, or nft's
    (counters' values left out)."""
    if mode == "iptables":
        return lab.sh(lab.node_ns(node), "iptables-save").splitlines()
    return [normal_rule(line) for line in lab.sh(lab.node_ns(node), "nft", "list", "ruleset").splitlines()]


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_a_trace_through_a_service_shows_the_rules_the_kernel_used(lab, mode):
    lab.up(
        lab.doc(proxyMode=mode, nodes=[{"name": "node1"}, {"name": "node2"}]),
        deployment("web", 2),
        pod("client", node="node1", ports=()),
        svc("web", {"app": "web"}),
    )
    out = json.loads(lab.cli("trace", "--lab", lab.name, "client", "svc/default/web", "--json").stdout)
    assert out["verdict"] == "open" and out["served_by"] in ("default/web-0", "default/web-1")
    saved = {n: listed(lab, n, mode) for n in ("node1", "node2")}
    rules = [h for h in out["hops"] + out["reply_hops"] if not h["rule"].startswith("(policy")]
    assert any(h["table"] == ("nat" if mode == "iptables" else "kube-proxy") for h in rules), out
    for h in rules:
        assert h["kind"] == "netfilter" and h["rule"] in saved[h["netns"][5:]], h
    dnat = [h for h in out["hops"] if h.get("nat")]
    assert len(dnat) == 1 and dnat[0]["netns"] == "node/node1", "the client's node translates the ClusterIP"
    served = lab.topo.pod(out["served_by"])
    assert dnat[0]["nat"]["before"].startswith(lab.topo.service("default/web").cluster_ip + ":") and dnat[0]["nat"]["after"] == f"{served.ip}:8080"
    assert out["client_ip_seen"] == lab.pod_ip("client"), "pod to pod keeps its source"
    if mode == "iptables":
        assert any(h["chain"] == "KUBE-FORWARD" and "RELATED,ESTABLISHED" in h["rule"] for h in out["reply_hops"]), "the reply is conntrack's"
    on_client_node = [h for h in out["reply_hops"] if h["netns"] == "node/node1"]
    assert on_client_node and on_client_node[-1]["verdict"].lower() == "accept", "the SYN-ACK is let through to the client"
    for n in ("node1", "node2"):
        assert "labctl trace" not in lab.sh(lab.node_ns(n), "iptables", "-t", "raw", "-S"), "the marking rules are gone"
        assert "labctl-trace" not in lab.sh(lab.node_ns(n), "nft", "list", "tables")
    assert subprocess.run(["pgrep", "-f", "xtables-monitor --trace|nft monitor trace"], capture_output=True).returncode == 1, "no monitor left"
    text = lab.cli("trace", "--lab", lab.name, "client", "svc/default/web").stdout
    assert ("KUBE-SVC-" if mode == "iptables" else "numgen random") in text and "dst " in text and "->" in text


@pytest.mark.stock_kernel
def test_trace_in_a_mode_it_does_not_follow_yet_says_so(lab):
    lab.up(lab.doc(proxyMode="ipvs"), pod("a"))
    p = lab.cli("trace", "--lab", lab.name, "a", "a", check=False)
    assert p.returncode == 2 and "iptables and nftables" in p.stderr and "ipvs" in p.stderr
