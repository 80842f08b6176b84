"""Services on the real datapath, in every proxy mode (IPVS in the VM of scripts/vm-test.sh)."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter

import pytest

from labctl.kernel.bpf import ROOT as BPF_PINS
from labctl.model import ipam
from labctl.model.family import hostport
from labctl.proxy import names
from tests.helpers import deployment, pod, svc
from tests.kernel.conftest import STACKS

pytestmark = pytest.mark.kernel
IPVS = pytest.param("ipvs", marks=pytest.mark.stock_kernel)
MODES = ["iptables", "nftables", IPVS, "ebpf"]
# Every mode in IPv4; iptables, nftables and IPVS (in the VM) in IPv6-only and dual-stack labs
# too (the ebpf datapath is IPv4's: a lab with IPv6 in it is refused, see tests/unit/test_family.py).
SIX = {"iptables", "nftables", "ipvs"}


def modes_and_stacks(modes=MODES):
    out = []
    for m in modes:
        name = m.values[0] if hasattr(m, "values") else m
        marks = m.marks if hasattr(m, "marks") else ()
        for stack in STACKS:
            if stack == "ipv4" or name in SIX:
                out.append(pytest.param(name, stack, marks=marks, id=f"{name}-{stack}"))
    return out


MODE_STACKS = modes_and_stacks()


def no_local(mode: str) -> str:
    """A node without a local endpoint for a Local policy: iptables and nftables drop;
    IPVS has a virtual server without real servers, and the kernel answers port unreachable."""
    return "refused" if mode == "ipvs" else "filtered"


def web(name, node, labels=None):
    p = pod(name, node=node, ports=(8080,), udp=(5353,), labels=labels or {"app": "web"})
    p["spec"]["containers"][0]["ports"][0]["name"] = "http"
    return p


def lab_with(lab, mode, *docs, **spec):
    """The lab in `mode`, in the lab's stack: in a dual-stack lab, Services ask for both
    families (RequireDualStack), as a user of both would."""
    spec.setdefault("externals", [{"name": "client"}])
    spec.setdefault("loadBalancerPool", "10.10.20.200-10.10.20.210")
    if lab.stack == "dual":
        for d in docs:
            if d.get("kind") == "Service":
                d["spec"].setdefault("ipFamilyPolicy", "RequireDualStack")
    return lab.up(lab.doc(proxyMode=mode, **spec), *docs)


def url(ip: str, port: int, path: str = "/") -> str:
    return f"http://{hostport(ip, port)}{path}"


def save(lab) -> str:
    return "ip6tables-save" if lab.six else "iptables-save"


def nft_table(lab) -> list[str]:
    return ["ip6", "kube-proxy"] if lab.six else ["ip", "kube-proxy"]


def served(lab, src, dst, n=30, **kw):
    return Counter(lab.probe(src, dst, **kw).served_by for _ in range(n))


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_cluster_ip_spreads_load_and_keeps_the_pod_source(lab, mode, stack):
    lab.use(stack)
    lab_with(
        lab,
        mode,
        web("a", "node1"),
        web("b", "node2"),
        web("c", "node2"),
        pod("client", node="node1", ports=()),
        svc("web", {"app": "web"}, ports=((80, "http"),)),
    )
    seen = served(lab, "client", "svc/default/web")
    assert set(seen) == {"default/a", "default/b", "default/c"}, seen
    r = lab.probe("client", "svc/default/web")
    assert r.verdict == "open" and r.client_ip_seen == lab.pod_ip("client"), "pod -> ClusterIP keeps the pod's address"
    # a node's own traffic to a ClusterIP: kube-proxy masquerades it to the node's pod-side address;
    # the ebpf mode translates it on eth0's egress and it keeps the node's address
    r = lab.probe("node/node1", "svc/default/web")
    n1 = lab.topo.lab.node("node1")
    seen = (n1.ip,) if mode == "ebpf" else (ipam.vtep_address(n1.pod_cidr), ipam.gateway(n1.pod_cidr))
    assert r.verdict == "open" and r.client_ip_seen in seen, r


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_udp_and_multi_port_services_with_named_target_ports(lab, mode, stack):
    lab.use(stack)
    s = svc("multi", {"app": "web"}, ports=((80, "http"), (53, 5353)))
    s["spec"]["ports"][1]["protocol"] = "UDP"
    lab_with(lab, mode, web("a", "node1"), web("b", "node2"), pod("client", node="node1", ports=()), s)
    tcp = lab.probe("client", "svc/default/multi", port=80)
    udp = lab.probe("client", "svc/default/multi", proto="udp", port=53)
    assert tcp.verdict == "open" and tcp.served_by in ("default/a", "default/b")
    assert udp.verdict == "open" and udp.served_by in ("default/a", "default/b") and udp.client_ip_seen == lab.pod_ip("client")


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_node_port_cluster_policy_masquerades_the_client(lab, mode, stack):
    lab.use(stack)
    lab_with(lab, mode, web("a", "node1"), svc("np", {"app": "web"}, type="NodePort", ports=((80, 8080),)))
    client_ip = lab.topo.lab.externals[0].ip
    for node in ("node1", "node2"):  # every node answers, even without a local endpoint
        r = lab.probe("ext/client", "svc/default/np@nodeport", via=f"node/{node}")
        assert r.verdict == "open" and r.served_by == "default/a"
        assert r.client_ip_seen != client_ip, "externalTrafficPolicy Cluster: the client is masqueraded"
        if mode == "ebpf":  # SNATed to the node the client came to
            assert r.client_ip_seen == lab.topo.lab.node(node).ip


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_node_port_local_policy_keeps_the_client_and_drops_elsewhere(lab, mode, stack):
    lab.use(stack)
    lab_with(lab, mode, web("a", "node1"), svc("np", {"app": "web"}, type="NodePort", externalTrafficPolicy="Local", ports=((80, 8080),)))
    client_ip = lab.topo.lab.externals[0].ip
    r = lab.probe("ext/client", "svc/default/np@nodeport", via="node/node1")
    assert r.verdict == "open" and r.client_ip_seen == client_ip, "Local: the backend sees the real client"
    r = lab.probe("ext/client", "svc/default/np@nodeport", via="node/node2", timeout=0.5)
    assert r.verdict == no_local(mode), "a node without a local endpoint does not forward"


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_localhost_node_ports_as_kube_proxy_has_them(lab, mode):
    """iptables mode: `curl 127.0.0.1:<nodePort>` on a node is served (route_localnet, counted
    in localhost_nps_accepted_pkts) and so is the node's cni0 address; nftables mode takes
    NodePorts on the node's own IP alone (@nodeport-ips), as kube-proxy does."""
    lab_with(lab, mode, web("a", "node2"), svc("np", {"app": "web"}, type="NodePort", ports=((80, 8080),)))
    port = lab.topo.service("default/np").ports[0].node_port
    node1 = lab.node_ns("node1")

    def curl(addr: str) -> str:
        return lab.sh(node1, "curl", "-s", "-m", "3", f"http://{addr}:{port}/", check=False)

    assert json.loads(curl(lab.topo.lab.node("node1").ip))["pod"] == "default/a"
    if mode == "iptables":
        assert json.loads(curl("127.0.0.1"))["pod"] == "default/a"
        assert json.loads(curl("10.244.0.1"))["pod"] == "default/a", "--dst-type LOCAL: every local address"
        counters = lab.sh(node1, "nfacct", "list")
        assert re.search(r"pkts = 0*1, .* = localhost_nps_accepted_pkts;", counters), counters
    else:
        assert curl("127.0.0.1") == "" and curl("10.244.0.1") == "", "nftables mode: no localhost NodePorts, not on cni0"


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_health_check_node_port_answers_as_kube_proxy(lab, mode, stack):
    """A LoadBalancer with externalTrafficPolicy Local gets a healthCheckNodePort; every node
    answers it with its count of ready local endpoints: 200 with one, 503 without."""
    lab.use(stack)
    lab_with(lab, mode, web("a", "node2"), svc("lb", {"app": "web"}, type="LoadBalancer", externalTrafficPolicy="Local", ports=((80, 8080),)))
    hc = lab.topo.service("default/lb").health_check_node_port
    assert hc and hc != lab.topo.service("default/lb").ports[0].node_port

    def ask(node: str) -> tuple[int, str, dict]:
        out = lab.sh(f"{lab.name}-client", "curl", "-g", "-s", "-i", "-m", "3", url(lab.topo.lab.node(node).ip, hc))
        head, _, body = out.partition("\n\n")  # (text mode reads CRLF as LF)
        weight = re.search(r"X-Load-Balancing-Endpoint-Weight: (\d+)", head)
        return int(head.split()[1]), weight.group(1) if weight else "", json.loads(body)

    want = {"service": {"namespace": "default", "name": "lb"}, "serviceProxyHealthy": True}
    assert ask("node2") == (200, "1", {**want, "localEndpoints": 1})
    assert ask("node1") == (503, "0", {**want, "localEndpoints": 0}), "no local endpoint: the load balancer skips the node"
    lab.cli("ready", "--lab", lab.name, "a", "false")
    assert ask("node2")[:2] == (503, "0"), "readiness is what counts"


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_session_affinity_sticks(lab, mode, stack):
    lab.use(stack)
    lab_with(
        lab,
        mode,
        web("a", "node1"),
        web("b", "node2"),
        web("c", "node1"),
        pod("client", node="node2", ports=()),
        svc("sticky", {"app": "web"}, sessionAffinity="ClientIP", ports=((80, 8080),)),
    )
    seen = served(lab, "client", "svc/default/sticky", n=15)
    [(who, count)] = seen.items()  # one pod answered every probe
    assert who in {"default/a", "default/b", "default/c"} and count == 15, seen


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_no_endpoints_is_refused_not_a_hang(lab, mode, stack):
    lab.use(stack)
    lab_with(lab, mode, pod("client", node="node1", ports=()), svc("empty", {"app": "nobody"}), svc("np-empty", {"app": "nobody"}, type="NodePort"))
    r = lab.probe("client", "svc/default/empty", timeout=2)
    assert r.verdict == "refused" and r.rtt_ms < 1000, r
    r = lab.probe("ext/client", "svc/default/np-empty@nodeport", timeout=2)
    assert r.verdict == "refused", r


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_hairpin_a_pod_reaches_itself_through_its_service(lab, mode, stack):
    lab.use(stack)
    lab_with(lab, mode, web("solo", "node1"), svc("solo", {"app": "web"}, ports=((80, 8080),)))
    r = lab.probe("solo", "svc/default/solo")
    assert r.verdict == "open" and r.served_by == "default/solo"
    # kube-proxy masquerades hairpin traffic to the node's cni0 address; Cilium's datapath to 169.254.42.1
    assert r.client_ip_seen == ("169.254.42.1" if mode == "ebpf" else ipam.gateway(lab.topo.lab.node("node1").pod_cidr))


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_load_balancer_ip_answers_externals(lab, mode, stack):
    lab.use(stack)
    lab_with(lab, mode, web("a", "node2"), svc("lb", {"app": "web"}, type="LoadBalancer", externalTrafficPolicy="Local", ports=((80, 8080),)))
    s = lab.topo.service("default/lb")
    r = lab.probe("ext/client", "svc/default/lb@lb")
    assert r.verdict == "open" and r.served_by == "default/a"
    assert r.client_ip_seen == lab.topo.lab.externals[0].ip
    neigh = lab.jsh(f"{lab.name}-client", "ip", "-j", "neigh", "show", s.load_balancer_ip)
    node2_mac = lab.jsh(lab.node_ns("node2"), "ip", "-j", "link", "show", "eth0")[0]["address"]
    assert neigh and neigh[0]["lladdr"] == node2_mac, "node2 (the one with the endpoint) answers ARP for the IP"


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_load_balancer_source_ranges_let_only_those_sources_in(lab, mode, stack):
    lab.use(stack)
    v6 = {"client": "fd00:10:20::64", "other": "fd00:10:20::65"}
    v4 = {"client": "10.10.20.100", "other": "10.10.20.101"}
    hosts = {"ipv4": lambda n: {"ip": v4[n]}, "ipv6": lambda n: {"ip": v6[n]}, "dual": lambda n: {"ips": [v4[n], v6[n]]}}[stack]
    externals = [{"name": n, **hosts(n)} for n in ("client", "other")]
    allowed = v6["client"] if lab.six else v4["client"]
    ranges = {"ipv4": [f"{v4['client']}/32"], "ipv6": [f"{v6['client']}/128"], "dual": [f"{v4['client']}/32", f"{v6['client']}/128"]}[stack]
    lb = svc("lb", {"app": "web"}, type="LoadBalancer", ports=((80, 8080),), loadBalancerSourceRanges=ranges)
    lab_with(lab, mode, web("a", "node2"), pod("inside", node="node1", ports=()), lb, externals=externals)
    r = lab.probe("ext/client", "svc/default/lb@lb")
    assert r.verdict == "open" and r.served_by == "default/a"
    assert lab.probe("ext/other", "svc/default/lb@lb", timeout=0.5).verdict == "filtered", "outside the ranges: dropped"
    assert lab.probe("inside", "svc/default/lb@lb", timeout=0.5).verdict == "filtered", "pods are sources like any other"
    assert lab.probe("ext/other", "svc/default/lb@nodeport", timeout=0.5).verdict == "open", "the NodePort is not filtered"
    ip = lab.topo.service("default/lb").load_balancer_ip
    if mode == "iptables":
        fw = names.ipt_chain("KUBE-FW-", "default/lb", "tcp")
        plen = 128 if lab.six else 32
        assert f"-A {fw} -s {allowed}/{plen}" in lab.sh(lab.node_ns("node1"), save(lab), "-t", "nat")
        assert f"-d {ip}/{plen} -p tcp -m comment" in lab.sh(lab.node_ns("node1"), "ip6tables" if lab.six else "iptables", "-S", "KUBE-PROXY-FIREWALL")
    elif mode == "nftables":
        listing = lab.sh(lab.node_ns("node1"), "nft", "list", "table", *nft_table(lab))
        match = "ip6 saddr" if lab.six else "ip saddr"
        assert f"{ip} . tcp . 80 : goto firewall-" in listing and f"{match} != {allowed} drop" in listing, listing
    elif mode == "ebpf":  # the master carries the flag; the allowed prefixes are in an LPM trie
        fronts = json.loads(lab.cli("bpf", "lb", "list", "--lab", lab.name, "--node", "node1", "--json").stdout)
        assert any(f["frontend"] == f"{ip}:80/tcp" and f["scope"] == "external" and "source ranges" in f["flags"] for f in fronts), fronts
        dump = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", f"{BPF_PINS}/{lab.name}/node1/lb4_src_range"], capture_output=True, text=True)
        ranges = json.loads(dump.stdout)  # on the host: `ip netns exec` mounts a /sys without the bpffs
        assert [bytes(int(b, 16) for b in e["key"])[8:] for e in ranges] == [bytes([10, 10, 20, 100])], "one prefix, under the frontend both scopes share"
    else:
        members = lab.sh(lab.node_ns("node1"), "ipset", "list", "KUBE-6-LOAD-BALANCER-SOURCE-CID" if lab.six else "KUBE-LOAD-BALANCER-SOURCE-CIDR")
        assert f"{ip},tcp:80,{allowed}" in members, members
    # the ranges removed: a partial sync, and everyone is let in
    del lb["spec"]["loadBalancerSourceRanges"]
    lab_with(lab, mode, web("a", "node2"), pod("inside", node="node1", ports=()), lb, externals=externals)
    assert lab.probe("ext/other", "svc/default/lb@lb").verdict == "open"
    assert lab.probe("inside", "svc/default/lb@lb").verdict == "open"


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_internal_traffic_policy_local(lab, mode, stack):
    lab.use(stack)
    lab_with(
        lab,
        mode,
        web("a", "node1"),
        pod("near", node="node1", ports=()),
        pod("far", node="node2", ports=()),
        svc("itp", {"app": "web"}, internalTrafficPolicy="Local", ports=((80, 8080),)),
    )
    assert lab.probe("near", "svc/default/itp").served_by == "default/a"
    assert lab.probe("far", "svc/default/itp", timeout=0.5).verdict == no_local(mode)


@pytest.mark.parametrize("mode,stack", modes_and_stacks(["iptables", IPVS, "ebpf"]))
def test_external_ips(lab, mode, stack):
    lab.use(stack)
    eip = "2001:db8::10" if lab.six else "192.0.2.10"  # documentation addresses
    given = {"ipv4": ["192.0.2.10"], "ipv6": ["2001:db8::10"], "dual": ["192.0.2.10", "2001:db8::10"]}[stack]
    lab_with(lab, mode, web("a", "node1"), pod("client", node="node2", ports=()), svc("eip", {"app": "web"}, externalIPs=given, ports=((80, 8080),)))
    r = lab.probe("client", eip, port=80)
    assert r.verdict == "open" and r.served_by == "default/a"


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_endpoints_follow_pods_and_readiness(lab, mode, stack):
    lab.use(stack)
    docs = [pod("client", node="node1", ports=()), svc("web", {"app": "web"}, ports=((80, 8080),))]
    lab_with(lab, mode, deployment("web", 2), *docs)
    assert set(served(lab, "client", "svc/default/web", n=20)) == {"default/web-0", "default/web-1"}
    lab_with(lab, mode, deployment("web", 3), *docs)
    assert "default/web-2" in served(lab, "client", "svc/default/web", n=30)
    # relabel web-2 out of the service by making it a separate pod with other labels
    lab_with(lab, mode, deployment("web", 1), *docs)
    assert set(served(lab, "client", "svc/default/web", n=10)) == {"default/web-0"}
    lab.cli("ready", "--lab", lab.name, "web-0", "false")
    assert lab.probe("client", "svc/default/web").verdict == "refused", "no ready endpoint left"
    lab.cli("ready", "--lab", lab.name, "web-0", "true")
    assert lab.probe("client", "svc/default/web").served_by == "default/web-0"


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_a_udp_flow_leaves_an_endpoint_that_is_gone(lab, mode, stack):
    """One UDP flow (same source port) sticks to its endpoint through conntrack, until
    that endpoint leaves the service: then the flow's entry is deleted, as kube-proxy
    does, and the next datagram goes to a ready endpoint."""
    lab.use(stack)
    s = svc("dns", {"app": "web"}, ports=((53, 5353),))
    s["spec"]["ports"][0]["protocol"] = "UDP"
    lab_with(lab, mode, web("a", "node1"), web("b", "node2"), pod("client", node="node1", ports=()), s)
    flow = {"proto": "udp", "port": 53, "sport": 45353}
    first = lab.probe("client", "svc/default/dns", **flow)
    assert first.verdict == "open"
    assert {lab.probe("client", "svc/default/dns", **flow).served_by for _ in range(5)} == {first.served_by}, "one flow, one endpoint"
    other = ({"default/a", "default/b"} - {first.served_by}).pop()
    lab.cli("ready", "--lab", lab.name, first.served_by.split("/")[1], "false")
    after = lab.probe("client", "svc/default/dns", **flow)
    assert after.verdict == "open" and after.served_by == other, (first, after)
    if mode == "ebpf":  # the program's own conntrack keeps the flow's backend: now the other one
        ct = json.loads(lab.cli("bpf", "ct", "list", "--lab", lab.name, "node1", "--json").stdout)
        flow = [e for e in ct if e["src"].endswith(":45353") and e["service"]]
        backends = {e["dst"]: e["backendId"] for e in ct if e["src"].endswith(":45353") and not e["service"]}
        assert len(flow) == 1 and flow[0]["backendId"] == backends[f"{lab.pod_ip(other)}:5353"], ct
        return
    fam = ["-f", "ipv6"] if lab.six else []
    entries = lab.sh(lab.node_ns("node1"), "conntrack", "-L", *fam, "-p", "udp", "--sport", "45353")
    assert f"src={lab.pod_ip(other)}" in entries and f"src={lab.pod_ip(first.served_by)}" not in entries, entries
    # a service removed: its flows go too
    lab_with(lab, mode, web("a", "node1"), web("b", "node2"), pod("client", node="node1", ports=()))
    assert "dport=53" not in lab.sh(lab.node_ns("node1"), "conntrack", "-L", *fam, "-p", "udp", "--sport", "45353")


def _chain_dump(lab, mode, chain):
    ns = lab.node_ns("node1")
    if mode == "ebpf":  # alpha's entries in the node's service map
        vip = lab.topo.service("default/alpha").cluster_ip
        fronts = json.loads(lab.cli("bpf", "lb", "list", "--lab", lab.name, "--node", "node1", "--json").stdout)
        return [f for f in fronts if f["frontend"].startswith(f"{vip}:")]
    if mode == "ipvs":  # alpha's virtual server and its real servers, without counters
        vip = lab.topo.service("default/alpha").cluster_ip
        return [line.split()[:3] for line in lab.sh(ns, "ipvsadm", "-Ln", "-t", hostport(vip, 80)).splitlines()[3:]]
    if mode == "iptables":
        return [line for line in lab.sh(ns, save(lab), "-t", "nat").splitlines() if line.startswith(f"-A {chain} ")]
    return lab.sh(ns, "nft", "list", "chain", *nft_table(lab), chain)


@pytest.mark.parametrize("mode,stack", MODE_STACKS)
def test_partial_sync_leaves_other_services_untouched(lab, mode, stack):
    lab.use(stack)
    a = svc("alpha", {"app": "alpha"}, ports=((80, 8080),))
    b = svc("beta", {"app": "web"}, ports=((80, 8080),))
    base = [web("x", "node1", labels={"app": "alpha"}), web("y", "node2"), a, b]
    lab_with(lab, mode, *base)
    chain = names.ipt_chain("KUBE-SVC-", "default/alpha", "tcp") if mode == "iptables" else "service-" + names.nft_base("default", "alpha", "tcp", None)
    before = _chain_dump(lab, mode, chain)
    assert before
    result = lab_with(lab, mode, *base, web("z", "node2"))
    assert [s.full for s in result.synced] == [False, False] * (2 if stack == "dual" else 1), "a partial sync (of each family)"
    assert _chain_dump(lab, mode, chain) == before, "alpha's chain is byte-identical"
    assert "default/z" in served(lab, "x", "svc/default/beta", n=20)


def test_switching_proxy_mode_on_a_running_lab(lab):
    docs = [web("a", "node1"), pod("client", node="node2", ports=()), svc("web", {"app": "web"}, ports=((80, 8080),))]
    lab_with(lab, "iptables", *docs)
    lab_with(lab, "nftables", *docs)
    ns = lab.node_ns("node1")
    assert not re.search(r"KUBE-", lab.sh(ns, "iptables-save")), "the iptables chains are gone"
    assert "table ip kube-proxy" in lab.sh(ns, "nft", "list", "tables")
    assert lab.probe("client", "svc/default/web").served_by == "default/a"
    lab_with(lab, "iptables", *docs)
    assert "kube-proxy" not in lab.sh(ns, "nft", "list", "tables")
    assert lab.probe("client", "svc/default/web").served_by == "default/a"
    lab_with(lab, "ebpf", *docs)
    assert not re.search(r"KUBE-", lab.sh(ns, "iptables-save")) and "kube-proxy" not in lab.sh(ns, "nft", "list", "tables")
    assert "from_container" in lab.sh(lab.node_ns("node2"), "bpftool", "net", "show")
    assert lab.probe("client", "svc/default/web").served_by == "default/a"
    lab_with(lab, "iptables", *docs)
    assert "from_container" not in lab.sh(lab.node_ns("node2"), "bpftool", "net", "show"), "no program left on the veths"
    assert not (BPF_PINS / lab.name / "node1").exists(), "no pinned map of the node left"
    assert lab.probe("client", "svc/default/web").served_by == "default/a"


def test_resync_undoes_rules_edited_by_hand(lab):
    docs = [web("a", "node1"), pod("client", node="node1", ports=()), svc("web", {"app": "web"}, ports=((80, 8080),))]
    lab_with(lab, "iptables", *docs)
    lab.sh(lab.node_ns("node1"), "iptables", "-t", "nat", "-F", "KUBE-SERVICES")
    assert lab.probe("client", "svc/default/web", timeout=0.3).verdict != "open", "the learner broke it"
    assert lab_with(lab, "iptables", *docs).synced == [], "a partial sync trusts its record"
    lab.cli("up", str(lab.file), "--resync")
    assert lab.probe("client", "svc/default/web").served_by == "default/a"


@pytest.mark.stock_kernel
def test_ipvs_mode_lays_out_the_node_as_kube_proxy_does(lab):
    docs = [
        web("a", "node1"),
        web("b", "node2"),
        pod("client", node="node1", ports=()),
        svc("web", {"app": "web"}, type="NodePort", sessionAffinity="ClientIP", ports=((80, 8080),)),
    ]
    lab_with(lab, "ipvs", *docs, ipvsScheduler="wrr")
    topo, ns = lab.topo, lab.node_ns("node1")
    vip, node_ip = topo.service("default/web").cluster_ip, topo.lab.nodes[0].ip
    np = topo.service("default/web").ports[0].node_port
    out = lab.sh(ns, "ipvsadm", "-Ln")
    a, b = lab.pod_ip("a"), lab.pod_ip("b")
    for addr in (f"{vip}:80", f"{node_ip}:{np}"):
        block = out.split(f"TCP  {addr} ")[1].split("TCP  ")[0]
        assert block.startswith("wrr persistent 10800"), block
        assert re.search(rf"-> {a}:8080\s+Masq\s+1", block) and re.search(rf"-> {b}:8080\s+Masq\s+1", block), block
    dev = lab.jsh(ns, "ip", "-j", "-d", "addr", "show", "dev", "kube-ipvs0")[0]
    assert dev["linkinfo"]["info_kind"] == "dummy" and "UP" not in dev["flags"]
    assert {x["local"] for x in dev["addr_info"]} == {vip, "10.96.0.1"}, "every ClusterIP on kube-ipvs0"
    sets = lab.sh(ns, "ipset", "list", "KUBE-CLUSTER-IP")
    assert f"{vip},tcp:80" in sets and "10.96.0.1,tcp:443" in sets
    assert str(np) in lab.sh(ns, "ipset", "list", "KUBE-NODE-PORT-TCP")
    assert f"{a},tcp:8080,{a}" in lab.sh(ns, "ipset", "list", "KUBE-LOOP-BACK")
    nat = lab.sh(ns, "iptables-save", "-t", "nat")
    assert (
        '-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE'
        in nat
    )
    assert "KUBE-SVC-" not in nat, "no per-service chains in IPVS mode"
    assert "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN" in nat and "KUBE-LOAD-BALANCER dst,dst" not in nat, "no LoadBalancer yet: no rule on its set"
    assert f"TCP  10.244.0.1:{np} " in out, "NodePorts on every node address but kube-ipvs0's (cni0's too), as kube-proxy"
    assert lab.sh(ns, "sysctl", "-n", "net.ipv4.vs.conntrack").strip() == "1"
    assert lab.sh(ns, "sysctl", "-n", "net.ipv4.vs.conn_reuse_mode").strip() == "1", "left as is on a kernel >= 5.9, as kube-proxy does"
    st = json.loads(lab.cli("status", "--lab", lab.name, "--json").stdout)
    assert (st["proxyMode"], st["ipvsScheduler"]) == ("ipvs", "wrr")
    # a service port that does not exist on a service IP is refused by KUBE-IPVS-FILTER
    assert lab.probe("client", vip, port=81, timeout=1).verdict in ("refused", "blocked")
    # incremental: a new endpoint adds one real server and touches nothing else
    result = lab_with(lab, "ipvs", *docs, web("c", "node2"), ipvsScheduler="wrr")
    assert [s.full for s in result.synced] == [False, False]
    assert f"-> {lab.pod_ip('c')}:8080" in lab.sh(ns, "ipvsadm", "-Ln", "-t", f"{vip}:80")
    # a first LoadBalancer fills KUBE-LOAD-BALANCER: its rules come with it, still a partial sync
    lb = svc("lb", {"app": "web"}, type="LoadBalancer", ports=((80, 8080),))
    result = lab_with(lab, "ipvs", *docs, web("c", "node2"), lb, ipvsScheduler="wrr")
    assert [s.full for s in result.synced] == [False, False]
    lb_rule = '-A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER'
    assert lb_rule in lab.sh(ns, "iptables-save", "-t", "nat")
    assert lab.probe("ext/client", "svc/default/lb@lb").verdict == "open"
    # and a removed service leaves no virtual server, address or set member behind
    lab_with(lab, "ipvs", *docs[:3], ipvsScheduler="wrr")
    assert lb_rule not in lab.sh(ns, "iptables-save", "-t", "nat")
    assert vip not in lab.sh(ns, "ipvsadm", "-Ln") and vip not in lab.sh(ns, "ip", "addr", "show", "dev", "kube-ipvs0")
    assert vip not in lab.sh(ns, "ipset", "list", "KUBE-CLUSTER-IP")


@pytest.mark.stock_kernel
def test_switching_to_ipvs_and_back(lab):
    docs = [web("a", "node1"), pod("client", node="node2", ports=()), svc("web", {"app": "web"}, ports=((80, 8080),))]
    lab_with(lab, "iptables", *docs)
    lab_with(lab, "ipvs", *docs)
    ns = lab.node_ns("node2")
    assert "KUBE-SVC-" not in lab.sh(ns, "iptables-save") and "kube-ipvs0" in lab.sh(ns, "ip", "link")
    assert lab.probe("client", "svc/default/web").served_by == "default/a"
    lab_with(lab, "nftables", *docs)
    assert "TCP " not in lab.sh(ns, "ipvsadm", "-Ln") and "kube-ipvs0" not in lab.sh(ns, "ip", "link")
    assert "KUBE-" not in lab.sh(ns, "iptables-save") and "KUBE-" not in lab.sh(ns, "ipset", "list", "-n")
    assert lab.probe("client", "svc/default/web").served_by == "default/a"


def test_ipvs_mode_on_a_kernel_without_ip_vs_is_exit_3_and_creates_nothing(lab):
    """On this CI host's kernel (no ip_vs); on a kernel with IPVS the lab simply comes up."""
    from labctl.kernel import netns
    from labctl.state.store import LabDir

    path = lab.write(lab.doc(proxyMode="ipvs"), pod("a"))
    p = lab.cli("up", str(path), check=False)
    if p.returncode == 0:
        assert "kube-ipvs0" in lab.sh(lab.node_ns("node1"), "ip", "link")
        return
    assert p.returncode == 3, p.stderr
    assert "proxyMode ipvs needs the kernel's ip_vs module" in p.stderr and "scripts/vm-test.sh" in p.stderr
    assert not [n for n in netns.listed() if n.startswith(lab.name + "-")] and not LabDir(lab.name).exists()


@pytest.mark.stock_kernel
def test_network_policy_holds_for_service_traffic_in_ipvs_mode(lab):
    """A pod's connection to a ClusterIP is not forwarded in IPVS mode (it is
    delivered locally, then sent by IPVS): policy must still see it."""
    allow = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web-from-ok"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "ok"}}}]}],
        },
    }
    no_egress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "mute"},
        "spec": {"podSelector": {"matchLabels": {"egress": "none"}}, "policyTypes": ["Egress"]},
    }
    lab_with(
        lab,
        "ipvs",
        web("a", "node1"),
        pod("ok", node="node1", ports=(), labels={"role": "ok"}),
        pod("bad", node="node1", ports=(), labels={"role": "bad"}),
        pod("far", node="node2", ports=(), labels={"role": "bad"}),
        pod("mute", node="node2", ports=(), labels={"role": "ok", "egress": "none"}),
        svc("web", {"app": "web"}, ports=((80, 8080),)),
        allow,
        no_egress,
    )
    assert lab.probe("ok", "svc/default/web").served_by == "default/a", "allowed, on the same node"
    assert lab.probe("bad", "svc/default/web", timeout=1).verdict == "blocked", "ingress checked after IPVS, same node"
    assert lab.probe("far", "svc/default/web", timeout=1).verdict == "blocked", "ingress checked at the endpoint's node"
    assert lab.probe("mute", "svc/default/web", timeout=1).verdict == "blocked", "egress checked at the source's node"
    assert lab.probe("ok", "node/node1", proto="icmp").verdict == "open"
    # and the policy engine agrees with the kernel on every pair (verify probes pods directly)
    r = lab.cli("verify", "--lab", lab.name, "--json", check=False)
    assert r.returncode == 0, r.stdout[-2000:]
