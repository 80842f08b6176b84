"""What a node shows equals what current kube-proxy writes: upstream's own golden
scenarios (TestOverallIPTablesRules, TestOverallNFTablesRules) rebuilt as a lab,
compared chain by chain with upstream's expected text.

Both sides go through the kernel: upstream's text (its addresses mapped to the
lab's) is loaded into a scratch namespace and listed back with iptables-save or
`nft -j list`, so the comparison is of what the kernel holds, not of how two
programs order their arguments. The lab (tests/golden/upstream/scenario.yaml)
has upstream's namespaces, services, ports, ClusterIPs, node IP, NodePorts,
health check node port, external IPs, source ranges and affinity; what it cannot
have is mapped: endpoint addresses (pods get theirs from IPAM; upstream gives
10.180.0.3 to two services' endpoints) and LoadBalancer IPs (the lab's pool is on
the node network), and the chain names derived from them.

Remaining differences, on purpose:
- iptables KUBE-POSTROUTING: kube-proxy adds --random-fully when iptables has it
  (this one does); upstream's fake iptables lacks it, so its expected text does not.
- the lab's default/kubernetes service (upstream's scenario has none) is left out.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from labctl import changes
from labctl.kernel import netns, nfacct
from labctl.lab import LabHandle
from labctl.model.documents import parse_text
from labctl.proxy import names
from tests.helpers import new_lab_name

pytestmark = pytest.mark.kernel

UPSTREAM = Path(__file__).parent.parent / "golden" / "upstream"
# Where upstream's expected texts come from (kubernetes/kubernetes master).
NFTABLES_COMMIT = "030880a5dc5449403c6d1f0aa146a7dc21d6c6dc"
# upstream endpoint (service port, address) -> the lab pod that stands for it
ENDPOINTS = {
    ("ns1/svc1:p80", "10.180.0.1"): "ns1/a",
    ("ns2/svc2:p80", "10.180.0.2"): "ns2/a",
    ("ns3/svc3:p80", "10.180.0.3"): "ns3/a",
    ("ns4/svc4:p80", "10.180.0.4"): "ns4/a",
    ("ns4/svc4:p80", "10.180.0.5"): "ns4/b",  # on the test node: a local endpoint
    ("ns5/svc5:p80", "10.180.0.3"): "ns5/a",
}
LB_IPS = {"1.2.3.4": "192.168.0.200", "5.6.7.8": "192.168.0.201"}
NODE = "test-node"
KUBERNETES_IP = "172.30.0.1"  # the lab's default/kubernetes, not in upstream's scenario


def sh(*argv: str, input: str | None = None) -> str:
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=True).stdout


class ScenarioLab:
    """Upstream's scenario as a lab, brought up in one proxy mode or another."""

    def __init__(self):
        self.name = new_lab_name()
        self.text = (UPSTREAM / "scenario.yaml").read_text().replace("name: upg", f"name: {self.name}")
        self.handle = LabHandle(self.name)

    def up(self, mode: str) -> None:
        body = self.text.replace("proxyMode: iptables", f"proxyMode: {mode}")
        self.handle.change(changes.up(parse_text(body, "scenario.yaml"), "scenario.yaml"), create=True)

    def applied(self):
        return self.handle.applied()


@pytest.fixture(scope="module")
def lab():
    scenario = ScenarioLab()
    scenario.up("iptables")
    yield scenario
    scenario.handle.down()


@pytest.fixture
def scratch():
    """An empty namespace to load upstream's text into."""
    name = f"{new_lab_name()}-golden"
    netns.create(name)
    yield name
    netns.delete(name)


def mapped(text: str, topo) -> str:
    """Upstream's text with the lab's endpoint and LoadBalancer addresses, and the chain
    names made from them (each endpoint address is mapped on the lines of its service)."""
    ip_of = {k: topo.pod(pod).ip for k, pod in ENDPOINTS.items()}
    for (spn, old), new in ip_of.items():
        ns, svc, port = re.match(r"(\w+)/(\w+):(\w+)", spn).groups()
        text = text.replace(names.ipt_sep(spn, "tcp", f"{old}:80"), names.ipt_sep(spn, "tcp", f"{new}:80"))
        for prefix in ("endpoint-", "affinity-"):
            text = text.replace(
                prefix + names.nft_endpoint_base(ns, svc, "tcp", port, old, 80), prefix + names.nft_endpoint_base(ns, svc, "tcp", port, new, 80)
            )
    out = []
    for line in text.splitlines():
        m = re.search(r"(ns\d)/(svc\d)", line)
        if m:
            for (spn, old), new in ip_of.items():
                if spn.startswith(f"{m.group(1)}/{m.group(2)}:"):
                    line = re.sub(rf"\b{re.escape(old)}\b", new, line)
        for old, new in LB_IPS.items():
            line = re.sub(rf"\b{re.escape(old)}\b", new, line)
        out.append(line)
    return "\n".join(out) + "\n"


def test_the_upstream_names_are_ours():
    """The hashes in upstream's text are what labctl computes from the same inputs."""
    ipt = (UPSTREAM / "iptables.txt").read_text()
    nft = (UPSTREAM / "nftables.txt").read_text()
    for (spn, ip), _ in ENDPOINTS.items():
        assert names.ipt_sep(spn, "tcp", f"{ip}:80") in ipt
        ns, svc, port = re.match(r"(\w+)/(\w+):(\w+)", spn).groups()
        assert "endpoint-" + names.nft_endpoint_base(ns, svc, "tcp", port, ip, 80) in nft
    assert names.ipt_chain("KUBE-SVC-", "ns5/svc5:p80", "tcp") == "KUBE-SVC-NUKIZ6OKUXPJNT4C"
    assert "service-" + names.nft_base("ns5", "svc5", "tcp", "p80") == "service-HVFWP5L3-ns5/svc5/tcp/p80"


# -- iptables -----------------------------------------------------------------------------


def ipt_chains(save: str) -> dict[str, dict[str, list[str]]]:
    """table -> KUBE-* chain -> its rules, from iptables-save output."""
    out: dict[str, dict[str, list[str]]] = {}
    table = ""
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:]
            out[table] = {}
        elif line.startswith(":KUBE-"):
            out[table][line[1:].split()[0]] = []
        elif line.startswith("-A KUBE-"):
            out[table][line.split()[1]].append(line)
    return out


def test_iptables_chains_equal_upstreams(lab, scratch):
    topo = lab.applied()
    node_ns = f"{lab.name}-{NODE}"
    nfacct.ensure(scratch, ["ct_state_invalid_dropped_pkts", "localhost_nps_accepted_pkts"])
    text = mapped("\n".join(x for x in (UPSTREAM / "iptables.txt").read_text().splitlines() if not x.startswith("#")), topo)
    sh("ip", "netns", "exec", scratch, "iptables-restore", input=text)
    want = ipt_chains(sh("ip", "netns", "exec", scratch, "iptables-save"))
    have = ipt_chains(sh("ip", "netns", "exec", node_ns, "iptables-save").replace(" --random-fully", ""))
    kubernetes = {names.ipt_chain("KUBE-SVC-", "default/kubernetes:https", "tcp")}
    kubernetes |= {names.ipt_sep("default/kubernetes:https", "tcp", e) for e in topo.service("default/kubernetes").static_endpoints}
    compared = 0
    for table in ("filter", "nat"):
        ours = {c: [r for r in rules if "default/kubernetes" not in r] for c, rules in have[table].items() if c not in kubernetes}
        assert set(ours) == set(want[table]), f"{table}: chains only in the lab {set(ours) - set(want[table])}, only upstream {set(want[table]) - set(ours)}"
        for chain, rules in want[table].items():
            assert ours[chain] == rules, f"{table} {chain}:\nlab:      {ours[chain]}\nupstream: {rules}"
            compared += 1
    assert compared == 26
    # kubelet's KUBE-FIREWALL is jumped to from INPUT and OUTPUT, after kube-proxy's chains, as on a node
    save = sh("ip", "netns", "exec", node_ns, "iptables-save", "-t", "filter")
    jumps = [line.split(" -j ")[-1] for line in save.splitlines() if line.startswith(("-A INPUT", "-A OUTPUT")) and "KUBE" in line]
    assert jumps == [
        "KUBE-PROXY-FIREWALL",
        "KUBE-NODEPORTS",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-PROXY-FIREWALL",
        "KUBE-SERVICES",
        "KUBE-FIREWALL",
    ]
    assert netns_sysctl(node_ns, "net/ipv4/conf/all/route_localnet") == "1"


def netns_sysctl(ns: str, key: str) -> str:
    return sh("ip", "netns", "exec", ns, "cat", f"/proc/sys/{key}").strip()


# -- nftables -----------------------------------------------------------------------------


def nft_objects(listing: dict) -> dict[str, object]:
    """`nft -j list table` as comparable objects: chains with their hook and rules
    (handles dropped), sets and maps with their type, flags and sorted elements."""
    out: dict[str, object] = {}
    for item in listing["nftables"]:
        kind, body = next(iter(item.items()))
        if kind == "table":
            out["table"] = {"comment": body.get("comment")}
        elif kind == "chain":
            out.setdefault(f"chain {body['name']}", {})["hook"] = {k: body.get(k) for k in ("type", "hook", "prio", "policy")}
        elif kind == "rule":
            chain = out.setdefault(f"chain {body['chain']}", {})
            chain.setdefault("rules", []).append(json.dumps(body["expr"], sort_keys=True) + json.dumps(body.get("comment")))
        elif kind in ("set", "map"):
            elems = sorted(json.dumps(e, sort_keys=True) for e in body.get("elem", []))
            out[f"{kind} {body['name']}"] = {k: body.get(k) for k in ("type", "map", "flags", "timeout", "comment")} | {"elem": elems}
    return out


def without_kubernetes(objects: dict) -> dict:
    out = {}
    for key, value in objects.items():
        if "default/kubernetes" in key:
            continue
        if isinstance(value, dict) and "elem" in value:
            value = dict(value, elem=[e for e in value["elem"] if KUBERNETES_IP not in e and "default/kubernetes" not in e])
        out[key] = value
    return out


def test_nftables_table_equals_upstreams(lab, scratch):
    lab.up("nftables")
    topo = lab.applied()
    node_ns = f"{lab.name}-{NODE}"
    text = mapped("\n".join(x for x in (UPSTREAM / "nftables.txt").read_text().splitlines() if not x.startswith("#")), topo)
    # upstream's dump groups objects per service; one transaction must declare before it refers
    lines = text.splitlines()
    declared = [x for x in lines if x.startswith(("add table", "add set", "add map", "add chain"))]
    sh("ip", "netns", "exec", scratch, "nft", "-f", "-", input="\n".join(declared + [x for x in lines if x not in declared]) + "\n")
    want = nft_objects(json.loads(sh("ip", "netns", "exec", scratch, "nft", "-j", "list", "table", "ip", "kube-proxy")))
    have = without_kubernetes(nft_objects(json.loads(sh("ip", "netns", "exec", node_ns, "nft", "-j", "list", "table", "ip", "kube-proxy"))))
    assert set(have) == set(want), f"only in the lab {set(have) - set(want)}, only upstream {set(want) - set(have)}"
    for key in want:
        assert have[key] == want[key], f"{key}:\nlab:      {have[key]}\nupstream: {want[key]}"
    assert len(want) == 41
    assert "KUBE-" not in sh("ip", "netns", "exec", node_ns, "iptables-save"), "iptables mode left the node when nftables came"
    assert netns_sysctl(node_ns, "net/ipv4/conf/all/route_localnet") == "0"
