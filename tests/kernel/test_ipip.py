"""overlay: ipip (Calico's IP-in-IP): bird's routes through tunl0 onlink, pods at MTU
1480, pod traffic inside protocol-4 packets on the node network; switching a
running lab in and out of it; labs built where tunnel modules give every new
namespace fallback devices. The ipip module exists only on a stock kernel (the VM
of scripts/vm-test.sh); on this CI host's kernel `up` is exit 3 and makes nothing."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import deployment, pod, run_labctl, svc
from tests.kernel.test_bgp import NODES, bird_routes, birds

pytestmark = pytest.mark.kernel


def docs(lab, overlay: str):
    return lab.doc(overlay=overlay, nodes=NODES), deployment("web", 3), svc("web", {"app": "web"})


def link(lab, ns: str, dev: str) -> dict:
    return json.loads(lab.sh(ns, "ip", "-j", "-s", "-d", "link", "show", dev))[0]


def test_ipip_on_a_kernel_without_the_module_is_exit_3_and_creates_nothing(lab):
    """On this CI host's kernel (no ipip); on a kernel with it the lab simply comes up."""
    from labctl.kernel import netns
    from labctl.state.store import LabDir

    path = lab.write(lab.doc(overlay="ipip"), pod("a"))
    p = lab.cli("up", str(path), check=False)
    if p.returncode == 0:
        assert link(lab, lab.node_ns("node1"), "tunl0")["mtu"] == 1480
        return
    assert p.returncode == 3, p.stderr
    assert "overlay ipip needs the kernel's ipip module" in p.stderr and "scripts/vm-test.sh" in p.stderr
    assert not [n for n in netns.listed() if n.startswith(lab.name + "-")] and not LabDir(lab.name).exists()


@pytest.mark.stock_kernel
def test_pods_talk_inside_ip_in_ip_over_routes_bird_learned(lab):
    lab.up(*docs(lab, "ipip"))
    spec = lab.topo.lab
    for n in spec.nodes:
        ns = lab.node_ns(n.name)
        assert bird_routes(lab, n.name) == {r.pod_cidr: r.ip for r in spec.nodes if r.name != n.name}, n.name
        routes = json.loads(lab.sh(ns, "ip", "-j", "route", "show", "proto", "bird"))
        assert {r["dev"] for r in routes} == {"tunl0"} and all("onlink" in r["flags"] for r in routes), routes
        tunl0 = link(lab, ns, "tunl0")
        assert tunl0["mtu"] == 1480 and "UP" in tunl0["flags"] and tunl0["linkinfo"]["info_kind"] == "ipip"
        addrs = json.loads(lab.sh(ns, "ip", "-j", "-4", "addr", "show", "tunl0"))[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [(n.pod_cidr.split("/")[0], 32)]
        assert link(lab, ns, "cni0")["mtu"] == 1480
    assert link(lab, lab.pod_ns("default/web-0"), "eth0")["mtu"] == 1480
    assert set(birds(lab)) == {"node1", "node2", "node3"}
    web1 = lab.topo.pod("default/web-1")
    web0_node = lab.topo.pod("default/web-0").node
    assert web1.node != web0_node
    before = link(lab, lab.node_ns(web1.node), "tunl0")["stats64"]["rx"]["packets"]
    r = lab.probe("web-0", "web-1")
    assert r.verdict == "open" and r.client_ip_seen == lab.pod_ip("web-0"), "pod to pod keeps its source inside the tunnel"
    assert link(lab, lab.node_ns(web1.node), "tunl0")["stats64"]["rx"]["packets"] > before, "the packets came out of tunl0"
    # a full-size inner packet (1480 bytes, DF) passes; one byte more does not fit
    web1_ip = web1.ip
    ok = subprocess.run(["ip", "netns", "exec", lab.pod_ns("default/web-0"), "ping", "-c1", "-W2", "-M", "do", "-s", "1452", web1_ip], capture_output=True)
    assert ok.returncode == 0, ok.stdout
    assert lab.probe("web-0", "svc/default/web").verdict == "open"
    out = json.loads(run_labctl("verify", "--lab", lab.name, "--json").stdout)
    assert out["mismatches"] == [], out["mismatches"]


@pytest.mark.stock_kernel
def test_a_running_lab_switches_into_ipip_and_out_and_new_namespaces_avoid_fallback_devices(lab):
    """With ipip (and gre, sit when there) loaded, every new namespace holds tunl0, gre0...:
    a vxlan lab built then puts its devices after them. vxlan -> ipip -> bgp -> vxlan keep
    the pods; leaving ipip puts tunl0 down without its address (the module owns it)."""
    from labctl.kernel import netns

    for module in ("ipip", "ip_gre", "sit"):
        subprocess.run(["modprobe", "-q", module], capture_output=True)
    lab.up(*docs(lab, "vxlan"))
    node1 = lab.node_ns("node1")
    indexes = {link["ifname"]: link["ifindex"] for link in json.loads(lab.sh(node1, "ip", "-j", "link", "show"))}
    assert indexes["eth0"] > max(i for n, i in indexes.items() if n in ("tunl0", "gre0", "sit0"))
    assert [indexes["cni0"], indexes["flannel.1"]] == [indexes["eth0"] + 1, indexes["eth0"] + 2]

    def pods():
        return {p.key: (p.ip, netns.inode(lab.pod_ns(p.key))) for p in lab.topo.pods}

    before = pods()
    for overlay, mtu in (("ipip", 1480), ("bgp", 1500), ("vxlan", 1450)):
        lab.up(*docs(lab, overlay))
        assert pods() == before, overlay
        tunl0 = link(lab, node1, "tunl0")
        assert ("UP" in tunl0["flags"]) == (overlay == "ipip"), overlay
        has_addr = any(a["family"] == "inet" for a in json.loads(lab.sh(node1, "ip", "-j", "addr", "show", "tunl0"))[0]["addr_info"])
        assert has_addr == (overlay == "ipip"), overlay
        assert link(lab, lab.pod_ns("default/web-0"), "eth0")["mtu"] == mtu, overlay
        out = json.loads(run_labctl("verify", "--lab", lab.name, "--json").stdout)
        assert out["mismatches"] == [], (overlay, out["mismatches"])
