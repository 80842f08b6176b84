"""proxyMode ebpf on the real kernel: what a node holds (programs, pinned maps, no
kube-proxy rules), bytes through a translated connection with checksum offload
off, NetworkPolicy and DNS through it, two labs' maps apart, and nothing left
after down, also after kill -9. Service behaviour itself is in test_services.py,
parametrised over every mode."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from labctl.kernel.bpf import ROOT
from tests.helpers import deployment, labctl_cmd, leftovers, pod, run_labctl, svc

pytestmark = pytest.mark.kernel

NODES = [{"name": "node1"}, {"name": "node2"}]


def prog_ids(lab, node: str) -> set[int]:
    out = lab.sh(lab.node_ns(node), "bpftool", "-j", "net", "show")
    return {f["id"] for entry in json.loads(out) for f in entry.get("tc", [])}


def gone(ids: set[int], limit: float = 10.0) -> bool:
    """The programs are freed: the kernel deletes a namespace (and the tc filters of
    its veths) in a workqueue after `ip netns delete` returns, so this is polled."""
    deadline = time.monotonic() + limit
    while True:
        loaded = {p["id"] for p in json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout)}
        if not ids & loaded or time.monotonic() > deadline:
            return not ids & loaded
        time.sleep(0.05)


def test_a_node_holds_programs_and_pinned_maps_and_no_kube_proxy_rules(lab):
    lab.up(lab.doc(proxyMode="ebpf", nodes=NODES), deployment("web", 2), pod("client", node="node1", ports=()), svc("web", {"app": "web"}))
    ns = lab.node_ns("node1")
    assert "KUBE-" not in lab.sh(ns, "iptables-save") and "kube-proxy" not in lab.sh(ns, "nft", "list", "tables")
    tc = json.loads(lab.sh(ns, "bpftool", "-j", "net", "show"))[0]["tc"]
    hooks = {(f["devname"], f["kind"], f["name"]) for f in tc}
    veth = lab.jsh(ns, "ip", "-j", "link", "show", "master", "cni0")
    for v in [link["ifname"] for link in veth]:
        assert {(v, "clsact/ingress", "from_container"), (v, "clsact/egress", "to_container")} <= hooks
    assert {("eth0", "clsact/ingress", "from_netdev"), ("eth0", "clsact/egress", "from_host"), ("cni0", "clsact/ingress", "to_host")} <= hooks
    pins = ROOT / lab.name / "node1"
    assert {p.name for p in pins.iterdir()} >= {"lb4_services", "lb4_backends", "lb4_revnat", "ct4", "lb4_affinity", "lb4_config", "progs"}
    vip = lab.topo.service("default/web").cluster_ip
    fronts = json.loads(lab.cli("bpf", "lb", "list", "--lab", lab.name, "--node", "node1", "--json").stdout)
    [front] = [f for f in fronts if f["frontend"] == f"{vip}:80/tcp"]
    assert front["node"] == "node1" and front["type"] == "ClusterIP"
    assert sorted(front["backends"]) == sorted(f"{p.ip}:8080" for p in lab.topo.pods if p.name.startswith("web"))
    text = lab.cli("bpf", "lb", "list", "--lab", lab.name, "--node", "node1").stdout
    assert f"{vip}:80/TCP" in text and "[ClusterIP] (master, count=2)" in text
    dump = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pins / "lb4_services")], capture_output=True, text=True, check=True).stdout)
    assert len(dump) == sum(1 + len(f["backends"]) for f in fronts), "bpf lb list shows every entry bpftool finds"
    status = json.loads(lab.cli("status", "--lab", lab.name, "--json").stdout)
    assert status["proxyMode"] == "ebpf" and status.get("bpfPins") == str(ROOT / lab.name)


def test_megabytes_through_a_cluster_ip_with_checksum_offload_off_arrive_intact(lab):
    """A wrong checksum fix hides behind veth's checksum offload: with it off in both
    pods and on their host veths, 8 MB through the ClusterIP, across nodes and on the
    same node, must hash the same as what the server sent."""
    serve = (
        "import hashlib,socket\n"
        "data=b''.join(hashlib.sha256(str(i).encode()).digest() for i in range(262144))\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('0.0.0.0',9000)); s.listen()\n"
        # read the request first: closing with unread bytes would be a reset, which drops what is in flight
        "while True:\n c,_=s.accept(); c.recv(65536); c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()\n"
    )
    server = pod("blob", node="node2", ports=(9000,), labels={"app": "blob"})
    server["spec"]["containers"][0]["command"] = ["python3", "-c", serve]
    near = pod("near", node="node2", ports=(), labels={"app": "near"})
    lab.up(lab.doc(proxyMode="ebpf", nodes=NODES), server, pod("client", node="node1", ports=()), near, svc("blob", {"app": "blob"}, ports=((80, 9000),)))
    vip = lab.topo.service("default/blob").cluster_ip
    want = subprocess.run(
        ["python3", "-c", "import hashlib; print(hashlib.sha256(b''.join(hashlib.sha256(str(i).encode()).digest() for i in range(262144))).hexdigest())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for p in ("default/blob", "default/client", "default/near"):
        lab.sh(lab.pod_ns(p), "ethtool", "-K", "eth0", "tx", "off", "rx", "off", "tso", "off", "gso", "off")
    for node in ("node1", "node2"):
        for link in lab.jsh(lab.node_ns(node), "ip", "-j", "link", "show", "master", "cni0"):
            lab.sh(lab.node_ns(node), "ethtool", "-K", link["ifname"], "tx", "off", "rx", "off", "tso", "off", "gso", "off")
    deadline = time.monotonic() + 10  # the command starts after `up` returns: wait until it listens
    while ":9000" not in lab.sh(lab.pod_ns("default/blob"), "ss", "-ltn") and time.monotonic() < deadline:
        time.sleep(0.05)
    fetch = f"curl -s -m 20 http://{vip}/ --http0.9 | sha256sum"
    for client in ("client", "near"):  # across VXLAN, and on the server's node
        got = lab.sh(lab.pod_ns(f"default/{client}"), "sh", "-c", fetch).split()[0]
        assert got == want, f"{client}: the bytes changed on the way"


def test_network_policy_and_dns_hold_through_the_ebpf_datapath(lab):
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web-from-friends", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}]}]},
    }
    lab.up(
        lab.doc(proxyMode="ebpf", nodes=NODES, dns=True),
        deployment("web", 2),
        pod("friend", node="node1", ports=(), labels={"role": "friend"}),
        pod("stranger", node="node1", ports=()),
        svc("web", {"app": "web"}),
        deny,
    )
    assert lab.probe("friend", "svc/default/web").verdict == "open"
    assert lab.probe("stranger", "svc/default/web", timeout=0.5).verdict == "blocked", "the policy sees the pod behind the ClusterIP"
    got = lab.sh(lab.pod_ns("default/friend"), "dig", "+short", "+time=2", "+tries=1", "web.default.svc.cluster.local")
    assert got.strip() == lab.topo.service("default/web").cluster_ip, "the cluster DNS through the kube-dns ClusterIP (UDP)"


def test_two_labs_with_the_same_service_network_keep_their_maps_apart(klab):
    lab, other = klab(), klab()
    for each, name in ((lab, "mine"), (other, "theirs")):
        each.up(
            each.doc(proxyMode="ebpf", nodeNetwork="10.10.20.0/24" if each is lab else "10.10.30.0/24"),
            pod(name, labels={"app": "web"}),
            pod("client", ports=()),
            svc("web", {"app": "web"}),
        )
    assert lab.topo.service("default/web").cluster_ip == other.topo.service("default/web").cluster_ip
    assert {lab.probe("client", "svc/default/web").served_by for _ in range(5)} == {"default/mine"}
    assert {other.probe("client", "svc/default/web").served_by for _ in range(5)} == {"default/theirs"}


def test_down_leaves_no_program_or_pin_also_after_kill_9(lab):
    path = lab.write(lab.doc(proxyMode="ebpf", nodes=NODES), deployment("web", 2), pod("client", ports=()), svc("web", {"app": "web"}))
    run_labctl("up", str(path))
    ids = prog_ids(lab, "node1") | prog_ids(lab, "node2")
    assert ids
    run_labctl("down", lab.name)
    assert leftovers(lab) == {"namespaces": [], "processes": [], "records": False, "files": []}
    assert gone(ids), "the programs went with their pins and veths"
    env = dict(os.environ, LABCTL_FAILPOINT="rules:0")  # maps pinned and written, the records not
    p = subprocess.run([*labctl_cmd(), "up", str(path)], capture_output=True, text=True, env=env)
    assert p.returncode == -9 and (ROOT / lab.name).exists()
    run_labctl("down", lab.name)
    assert leftovers(lab) == {"namespaces": [], "processes": [], "records": False, "files": []}


@pytest.mark.stock_kernel
def test_the_datapath_loads_and_serves_on_the_stock_kernels_verifier(lab):
    """Debian's 6.1 verifier is older than this host's: the same object must load
    there and serve a ClusterIP from a pod and from a node, and a NodePort from outside."""
    lab.up(
        lab.doc(proxyMode="ebpf", nodes=NODES, externals=[{"name": "x"}]),
        pod("a", node="node1", labels={"app": "web"}),
        pod("b", node="node2", labels={"app": "web"}),
        pod("client", node="node1", ports=()),
        svc("web", {"app": "web"}, type="NodePort"),
    )
    assert {lab.probe("client", "svc/default/web").served_by for _ in range(12)} == {"default/a", "default/b"}
    assert lab.probe("node/node1", "svc/default/web").verdict == "open"
    r = lab.probe("ext/x", "svc/default/web@nodeport", via="node/node2")
    assert r.verdict == "open" and r.served_by in ("default/a", "default/b")


def test_trace_shows_the_programs_translation_from_its_conntrack(lab):
    lab.up(
        lab.doc(proxyMode="ebpf", nodes=NODES, externals=[{"name": "x"}]),
        pod("a", node="node2", labels={"app": "web"}),
        pod("client", node="node1", ports=()),
        svc("web", {"app": "web"}, type="NodePort"),
    )
    out = json.loads(lab.cli("trace", "--lab", lab.name, "client", "svc/default/web", "--json").stdout)
    vip, a = lab.topo.service("default/web").cluster_ip, lab.pod_ip("a")
    bpf = [h for h in out["hops"] if h["kind"] == "bpf"]
    assert out["verdict"] == "open" and out["served_by"] == "default/a"
    assert [(h["netns"], h["nat"]) for h in bpf] == [("node/node1", {"field": "dst", "before": f"{vip}:80", "after": f"{a}:8080"})]
    assert "from_container" in bpf[0]["detail"]
    back = [h for h in out["reply_hops"] if h["kind"] == "bpf"]
    assert back and back[-1]["nat"] == {"field": "src", "before": f"{a}:8080", "after": f"{vip}:80"} and "to_container" in back[-1]["detail"]
    saved = lab.sh(lab.node_ns("node1"), "iptables-save").splitlines()
    assert all(h["rule"] in saved for h in out["hops"] if h["kind"] == "netfilter" and h["netns"] == "node/node1" and not h["rule"].startswith("(policy"))
    # from outside through node1, whose backend is on node2: DNAT and SNAT by the program, forwarded past node1's netfilter
    out = json.loads(lab.cli("trace", "--lab", lab.name, "ext/x", "svc/default/web@nodeport", "--via", "node/node1", "--json").stdout)
    node1 = [h for h in out["hops"] if h["netns"] == "node/node1"]
    assert [h["kind"] for h in node1] == ["bpf", "bpf"] and node1[1]["nat"]["after"].startswith(lab.topo.lab.node("node1").ip + ":")
    assert out["client_ip_seen"] == lab.topo.lab.node("node1").ip and out["served_by"] == "default/a"


@pytest.mark.parametrize("overlay", ["host-gw", "bgp", pytest.param("ipip", marks=pytest.mark.stock_kernel)])
def test_every_overlay_carries_the_translated_traffic(lab, overlay):
    """The programs hand translated packets to the node's routing (or the FIB): a
    host-gw route, a BGP-learned route and IP-in-IP serve as VXLAN does."""
    lab.up(
        lab.doc(proxyMode="ebpf", overlay=overlay, nodes=NODES, externals=[{"name": "x"}]),
        pod("a", node="node1", labels={"app": "web"}),
        pod("b", node="node2", labels={"app": "web"}),
        pod("client", node="node1", ports=()),
        svc("web", {"app": "web"}, type="NodePort"),
    )
    assert {lab.probe("client", "svc/default/web").served_by for _ in range(12)} == {"default/a", "default/b"}
    assert {lab.probe("node/node2", "svc/default/web").served_by for _ in range(12)} == {"default/a", "default/b"}
    far = [lab.probe("ext/x", "svc/default/web@nodeport", via="node/node1") for _ in range(12)]
    assert all(r.verdict == "open" for r in far) and {r.served_by for r in far} == {"default/a", "default/b"}
    assert {r.client_ip_seen for r in far if r.served_by == "default/b"} == {lab.topo.lab.node("node1").ip}, "SNAT to a remote backend"
