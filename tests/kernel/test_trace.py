"""labctl trace on the real datapath (iptables mode): every traced rule is one the
node's iptables-save shows, the DNAT hop lands on the endpoint that answered, and
nothing of the trace stays behind."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from labctl.probe.trace import normal_rule
from tests.helpers import deployment, labctl_cmd, pod, run_labctl, svc

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
    rules = [h for h in out["hops"] + out["reply_hops"] if h["kind"] == "netfilter" and not h["rule"].startswith("(policy")]
    assert any(h["table"] == ("nat" if mode == "iptables" else "kube-proxy") for h in rules), out
    for h in rules:
        assert h["kind"] == "netfilter" and h["rule"] in saved[h["netns"][5:]], h
    dnat = [h for h in out["hops"] if h.get("nat") and h["kind"] == "netfilter"]
    assert len(dnat) == 1 and dnat[0]["netns"] == "node/node1", "the client's node translates the ClusterIP"
    served = lab.topo.pod(out["served_by"])
    assert dnat[0]["nat"]["before"].startswith(lab.topo.service("default/web").cluster_ip + ":") and dnat[0]["nat"]["after"] == f"{served.ip}:8080"
    assert out["client_ip_seen"] == lab.pod_ip("client"), "pod to pod keeps its source"
    if mode == "iptables":
        assert any(h.get("chain") == "KUBE-FORWARD" and "RELATED,ESTABLISHED" in h["rule"] for h in out["reply_hops"]), "the reply is conntrack's"
    on_client_node = [h for h in out["reply_hops"] if h["netns"] == "node/node1" and h["kind"] == "netfilter"]
    assert on_client_node and on_client_node[-1]["verdict"].lower() == "accept", "the SYN-ACK is let through to the client"
    for n in ("node1", "node2"):
        assert "labctl trace" not in lab.sh(lab.node_ns(n), "iptables", "-t", "raw", "-S"), "the marking rules are gone"
        assert "labctl-trace" not in lab.sh(lab.node_ns(n), "nft", "list", "tables")
    assert subprocess.run(["pgrep", "-f", "xtables-monitor --trace|nft monitor trace"], capture_output=True).returncode == 1, "no monitor left"
    text = lab.cli("trace", "--lab", lab.name, "client", "svc/default/web").stdout
    assert ("KUBE-SVC-" if mode == "iptables" else "numgen random") in text and "dst " in text and "->" in text


def peer_index(lab, pod_key: str) -> int:
    """The ifindex of a pod's host-side veth, as the pod's eth0@ifN names it."""
    return lab.jsh(lab.pod_ns(pod_key), "ip", "-j", "link", "show", "eth0")[0]["link_index"]


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_the_path_across_vxlan_names_the_bridge_ports_the_routes_and_the_outer_addresses(lab, mode):
    lab.up(lab.doc(proxyMode=mode, nodes=[{"name": "node1"}, {"name": "node2"}]), pod("client", node="node1", ports=()), pod("web", node="node2"))
    out = json.loads(lab.cli("trace", "--lab", lab.name, "client", "web", "--json").stdout)
    assert out["verdict"] == "open" and out["served_by"] == "default/web"
    ips = {n.name: n.ip for n in lab.topo.lab.nodes}
    kinds = [(h["netns"], h["kind"]) for h in out["hops"] if h["kind"] != "netfilter"]
    assert kinds == [
        ("default/client", "route"),
        ("node/node1", "bridge"),
        ("node/node1", "conntrack"),
        ("node/node1", "route"),
        ("node/node1", "encap"),
        ("node/node2", "decap"),
        ("node/node2", "conntrack"),
        ("node/node2", "route"),
        ("default/web", "deliver"),
    ], out["hops"]
    by_kind = {(h["netns"], h["kind"]): h for h in out["hops"]}
    vxlan = lab.jsh(lab.node_ns("node1"), "ip", "-j", "-d", "link", "show", "flannel.1")[0]["linkinfo"]["info_data"]
    assert by_kind[("node/node1", "encap")]["outer"] == {"src": ips["node1"], "dst": ips["node2"], "dport": vxlan["port"], "vni": vxlan["id"]}
    assert by_kind[("node/node2", "decap")]["outer"] == {"src": ips["node1"], "dst": ips["node2"], "dport": vxlan["port"], "vni": vxlan["id"]}
    port = by_kind[("node/node1", "bridge")]["port"]
    assert lab.jsh(lab.node_ns("node1"), "ip", "-j", "link", "show", port)[0]["ifindex"] == peer_index(lab, "default/client"), "the client's own veth"
    deliver = lab.jsh(lab.node_ns("node2"), "ip", "-j", "link", "show", by_kind[("default/web", "deliver")]["port"])[0]
    assert deliver["ifindex"] == peer_index(lab, "default/web") and deliver["master"] == "cni0"
    assert "dev flannel.1" in by_kind[("node/node1", "route")]["detail"] and "dev cni0" in by_kind[("node/node2", "route")]["detail"]
    reply = [(h["netns"], h["kind"]) for h in out["reply_hops"] if h["kind"] not in ("netfilter", "conntrack")]
    assert reply == [
        ("default/web", "route"),
        ("node/node2", "bridge"),
        ("node/node2", "route"),
        ("node/node2", "encap"),
        ("node/node1", "decap"),
        ("node/node1", "route"),
        ("default/client", "deliver"),
    ], out["reply_hops"]


def test_a_masqueraded_nodeport_trace_agrees_with_what_the_responder_saw(lab):
    lab.up(
        lab.doc(nodes=[{"name": "node1"}, {"name": "node2"}], externals=[{"name": "x"}]),
        pod("web", node="node2", labels={"app": "web"}),
        svc("web", {"app": "web"}, type="NodePort"),
    )
    seen = json.loads(lab.cli("probe", "--lab", lab.name, "ext/x", "svc/default/web@nodeport", "--via", "node/node1", "--json").stdout)
    out = json.loads(lab.cli("trace", "--lab", lab.name, "ext/x", "svc/default/web@nodeport", "--via", "node/node1", "--json").stdout)
    assert out["verdict"] == "open" and out["served_by"] == seen["served_by"] == "default/web"
    assert out["client_ip_seen"] == seen["client_ip_seen"] != lab.topo.lab.externals[0].ip, "masqueraded, as the responder saw"
    masq = [h for h in out["hops"] if h["kind"] == "netfilter" and (h.get("nat") or {}).get("field") == "src"]
    assert len(masq) == 1 and masq[0]["netns"] == "node/node1" and masq[0]["nat"]["after"].split(":")[0] == seen["client_ip_seen"]
    undone = [h for h in out["reply_hops"] if h["kind"] == "conntrack"]
    assert [h["nat"]["field"] for h in undone] == ["dst", "src"], "the masquerade, then the DNAT, undone on the way back"
    assert undone[0]["nat"]["after"].split(":")[0] == lab.topo.lab.externals[0].ip
    assert undone[1]["nat"]["after"].endswith(":" + str(lab.topo.service("default/web").ports[0].node_port))
    assert out["reply_hops"][-1] == {**out["reply_hops"][-1], "netns": "ext/x", "kind": "deliver"}


def test_explain_with_trace_says_where_the_semantics_and_the_kernel_disagree(lab):
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
    }
    lab.up(lab.doc(), pod("client", ports=()), pod("web", labels={"app": "web"}), deny)
    out = json.loads(lab.cli("explain", "--lab", lab.name, "client", "web", "--trace", "--json").stdout)
    assert out["allowed"] is False and out["trace"]["verdict"] == "blocked" and out["trace"]["agrees"] is True
    assert any(h["kind"] == "drop" for h in out["trace"]["hops"])
    node = lab.node_ns(lab.topo.pod("default/web").node)
    lab.sh(node, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", "labctl network policies", "-j", "LABCTL-NETPOL")  # a broken node
    text = lab.cli("explain", "--lab", lab.name, "client", "web", "--trace").stdout
    assert "they disagree" in text and "the semantics deny it, but the kernel let it through (open" in text


@pytest.mark.stock_kernel
def test_a_trace_in_ipvs_mode_reads_the_connection_from_ipvs(lab):
    lab.up(
        lab.doc(proxyMode="ipvs", nodes=[{"name": "node1"}, {"name": "node2"}]),
        deployment("web", 2),
        pod("client", node="node1", ports=()),
        svc("web", {"app": "web"}),
    )
    out = json.loads(lab.cli("trace", "--lab", lab.name, "client", "svc/default/web", "--json").stdout)
    assert out["verdict"] == "open" and out["served_by"] in ("default/web-0", "default/web-1")
    ipvs = [h for h in out["hops"] if h["kind"] == "ipvs"]
    served = lab.topo.pod(out["served_by"])
    assert len(ipvs) == 1 and ipvs[0]["netns"] == "node/node1"
    assert ipvs[0]["nat"] == {"field": "dst", "before": f"{lab.topo.service('default/web').cluster_ip}:80", "after": f"{served.ip}:8080"}
    saved = lab.sh(lab.node_ns("node1"), "iptables-save").splitlines()
    assert all(h["rule"] in saved for h in out["hops"] if h["kind"] == "netfilter" and h["netns"] == "node/node1" and not h["rule"].startswith("(policy"))
    assert any(h["chain"] == "KUBE-SERVICES" for h in out["hops"] if h["kind"] == "netfilter"), "kube-proxy's ipset rules are traced too"


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_a_trace_killed_with_its_rules_in_place_is_cleaned_by_the_next_up(lab, mode):
    path = lab.write(lab.doc(proxyMode=mode, nodes=[{"name": "node1"}, {"name": "node2"}]), pod("client", node="node1", ports=()), pod("web", node="node2"))
    run_labctl("up", str(path))
    env = dict(os.environ, LABCTL_FAILPOINT="traced:0")
    p = subprocess.run([*labctl_cmd(), "trace", "--lab", lab.name, "client", "web"], capture_output=True, text=True, env=env)
    assert p.returncode == -9, p.stderr

    def marks(node):
        raw = lab.sh(lab.node_ns(node), "iptables", "-t", "raw", "-S", check=False)
        return ("labctl trace" in raw) or ("labctl-trace" in lab.sh(lab.node_ns(node), "nft", "list", "tables"))

    monitors = subprocess.run(["pgrep", "-f", "xtables-monitor --trace|nft monitor trace"], capture_output=True, text=True).stdout.split()
    assert marks("node1") and marks("node2") and len(monitors) == 2, "killed with its rules and monitors in place"
    run_labctl("up", str(path))
    assert not marks("node1") and not marks("node2"), "the next up removes a killed trace's rules"
    assert subprocess.run(["pgrep", "-f", "xtables-monitor --trace|nft monitor trace"], capture_output=True).returncode == 1
    assert json.loads(lab.cli("trace", "--lab", lab.name, "client", "web", "--json").stdout)["verdict"] == "open"
