"""overlay: bgp on real bird2: routes learned over full-mesh iBGP (never written by
labctl), the datapath over them, nodes joining and leaving, a dead daemon brought
back by `up`, a node's link going down, and `down` (also after kill -9) leaving no
bird behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.helpers import deployment, lab_processes, labctl_cmd, leftovers, run_labctl, svc
from tests.kernel.conftest import STACKS

pytestmark = pytest.mark.kernel

NODES = [{"name": "node1"}, {"name": "node2"}, {"name": "node3"}]


def up(lab, nodes=NODES, **spec):
    web = svc("web", {"app": "web"}, **({"ipFamilyPolicy": "RequireDualStack"} if lab.stack == "dual" else {}))
    return lab.up(lab.doc(overlay="bgp", nodes=nodes, **spec), deployment("web", 3), web)


def bird_routes(lab, node: str, six: bool | None = None) -> dict[str, str]:
    """prefix -> gateway of the routes bird installed on a node (of the probes' family)."""
    six = lab.six if six is None else six
    out = json.loads(lab.sh(lab.node_ns(node), "ip", "-j", "-6" if six else "-4", "route", "show", "proto", "bird"))
    return {r["dst"]: r.get("gateway") for r in out}


def birds(lab) -> dict[str, int]:
    """node -> pid of the bird running in its namespace."""
    from labctl.kernel import netns

    by_inode = {netns.inode(lab.node_ns(n.name)): n.name for n in lab.topo.lab.nodes}
    out = {}
    for pid in lab_processes(lab.name):
        try:
            if open(f"/proc/{pid}/comm").read().strip() == "bird":
                inode = int(os.readlink(f"/proc/{pid}/ns/net").split("[")[1].rstrip("]"))
                out[by_inode[inode]] = pid
        except (OSError, KeyError):
            continue
    return out


def wait_for(what, condition, timeout: float):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic()


@pytest.mark.parametrize("stack", STACKS)
def test_routes_are_learned_over_bgp_and_carry_pods_and_services(lab, stack):
    """In every stack: a dual-stack lab has a session per family between each pair of
    nodes (as calico-node peers), each family's routes learned over its own."""
    lab.use(stack)
    up(lab)
    topo = lab.topo
    for n in topo.lab.nodes:
        want = {r.pod_cidr: r.ip for r in topo.lab.nodes if r.name != n.name}
        assert bird_routes(lab, n.name) == want, n.name
        # labctl wrote none of them: no static route to another node's pod CIDR
        assert "proto boot" not in lab.sh(lab.node_ns(n.name), "ip", "route", "show", "root", topo.lab.pod_network)
    assert set(birds(lab)) == {"node1", "node2", "node3"}, "one bird per node, in its namespace"
    for src, dst in (("web-0", "web-1"), ("web-1", "web-2"), ("web-2", "web-0")):
        assert lab.probe(src, dst).verdict == "open", (src, dst)
    assert lab.probe("web-0", "svc/default/web").verdict == "open"
    shown = subprocess.run(labctl_cmd() + ["exec", "--lab", lab.name, "node/node1", "--", "birdc", "show", "protocols"], capture_output=True, text=True)
    sessions = 4 if stack == "dual" else 2
    assert shown.returncode == 0 and shown.stdout.count("Established") == sessions, shown.stdout + shown.stderr
    if stack == "dual":  # the first family's routes too, over its own sessions
        v4 = {n.name: n for n in lab.whole.lab.nodes}
        assert bird_routes(lab, "node1", six=False) == {v4[r].pod_cidr: v4[r].ip for r in ("node2", "node3")}
    st = json.loads(run_labctl("status", "--lab", lab.name, "--json").stdout)
    assert [n["bgp"]["peers"] for n in st["nodes"]] == [
        {"node2": "Established", "node3": "Established"},
        {"node1": "Established", "node3": "Established"},
        {"node1": "Established", "node2": "Established"},
    ]
    assert st["nodes"][0]["bgp"]["as"] == 64512


def test_nodes_join_and_leave_the_mesh(lab):
    up(lab)
    up(lab, nodes=[*NODES, {"name": "node4"}])
    node4 = lab.topo.lab.node("node4")
    for n in ("node1", "node2", "node3"):
        assert bird_routes(lab, n)[node4.pod_cidr] == node4.ip, "up returns once the new node's routes are everywhere"
    assert len(bird_routes(lab, "node4")) == 3
    up(lab)
    for n in ("node1", "node2", "node3"):
        assert node4.pod_cidr not in bird_routes(lab, n), "the node left: its route is withdrawn"
        assert "node4" not in lab.sh(lab.node_ns(n), "cat", f"{lab.handle.dir.path}/bird/{n}/bird.conf")
    assert set(birds(lab)) == {"node1", "node2", "node3"}


def test_a_dead_bird_is_withdrawn_by_its_peers_and_restarted_by_up(lab):
    up(lab)
    node2 = lab.topo.lab.node("node2")
    os.kill(birds(lab)["node2"], signal.SIGKILL)
    wait_for("node2's route withdrawn on node1", lambda: node2.pod_cidr not in bird_routes(lab, "node1"), 15)
    up(lab)
    assert bird_routes(lab, "node1")[node2.pod_cidr] == node2.ip and "node2" in birds(lab)


def test_a_node_whose_link_goes_down_is_withdrawn_within_the_hold_time(lab):
    up(lab)
    node2 = lab.topo.lab.node("node2")
    t0 = time.monotonic()
    lab.sh(lab.node_ns("node2"), "ip", "link", "set", "eth0", "down")
    t1 = wait_for("node2 withdrawn from node1", lambda: node2.pod_cidr not in bird_routes(lab, "node1"), 15)
    assert t1 - t0 < 15
    on = {p.node: p.name for p in lab.topo.pods}
    p = run_labctl("probe", "--lab", lab.name, on["node1"], on["node2"], "--timeout", "0.5", "--json", check=False)
    detail = json.loads(p.stdout)["detail"]
    assert p.returncode == 0 and f"node node1 has no route to {node2.pod_cidr} (node node2's pods)" in detail and "birdc" in detail, detail
    explained = json.loads(run_labctl("explain", "--lab", lab.name, on["node1"], on["node2"], "--json").stdout)
    assert explained["allowed"] and "has no route" in explained["routeMissing"], "allowed by policy, not routable"
    # `up` looks at the kernel, not only its records: the link is set up again, and it
    # returns once the routes are learned again
    t2 = time.monotonic()
    result = up(lab)
    assert result.links_up == [f"{lab.node_ns('node2')}/eth0"]
    assert bird_routes(lab, "node1").get(node2.pod_cidr) == node2.ip and time.monotonic() - t2 < 20
    assert up(lab).links_up == [], "nothing down: nothing set up"


def test_down_after_kill_9_while_birds_start_leaves_nothing(lab):
    path = lab.write(lab.doc(overlay="bgp", nodes=NODES), deployment("web", 3))
    env = dict(os.environ, LABCTL_FAILPOINT="spawned:2")
    p = subprocess.run(labctl_cmd() + ["up", str(path)], capture_output=True, text=True, env=env)
    assert p.returncode == -9, p.stderr
    run_labctl("down", lab.name)
    assert leftovers(lab) == {"namespaces": [], "processes": [], "records": False, "files": []}
    assert not [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _is_lab_bird(pid, lab.name)]


def _is_lab_bird(pid: int, lab: str) -> bool:
    try:
        return open(f"/proc/{pid}/comm").read().strip() == "bird" and f"/{lab}/" in open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return False


def test_a_running_lab_switches_overlays_and_keeps_its_pods(lab):
    """vxlan -> bgp -> host-gw -> vxlan with `up`: the old overlay's device, routes and
    daemons go, the MTU follows (1450 with VXLAN, 1500 without), pods keep their
    namespaces and addresses, and every pair still answers as Kubernetes says."""
    from labctl.kernel import netns

    def pods():
        return {p.key: (p.ip, netns.inode(lab.pod_ns(p.key))) for p in lab.topo.pods}

    def mtu(ns, dev):
        return json.loads(lab.sh(ns, "ip", "-j", "link", "show", dev))[0]["mtu"]

    def links(node):
        return {link["ifname"] for link in json.loads(lab.sh(lab.node_ns(node), "ip", "-j", "link", "show"))}

    lab.up(lab.doc(overlay="vxlan", nodes=NODES), deployment("web", 3), svc("web", {"app": "web"}))
    before = pods()
    for overlay, want_mtu in (("bgp", 1500), ("host-gw", 1500), ("vxlan", 1450), ("bgp", 1500)):
        up(lab) if overlay == "bgp" else lab.up(lab.doc(overlay=overlay, nodes=NODES), deployment("web", 3), svc("web", {"app": "web"}))
        assert pods() == before, f"{overlay}: no pod was recreated"
        assert ("flannel.1" in links("node1")) == (overlay == "vxlan"), overlay
        assert (set(birds(lab)) == {"node1", "node2", "node3"}) == (overlay == "bgp"), overlay
        assert mtu(lab.node_ns("node1"), "cni0") == want_mtu and mtu(lab.pod_ns("default/web-0"), "eth0") == want_mtu, overlay
        routes = json.loads(lab.sh(lab.node_ns("node1"), "ip", "-j", "route", "show", lab.topo.lab.node("node2").pod_cidr))
        assert len(routes) == 1 and (routes[0].get("protocol") == "bird") == (overlay == "bgp"), (overlay, routes)
        out = json.loads(run_labctl("verify", "--lab", lab.name, "--json").stdout)
        assert out["mismatches"] == [], (overlay, out["mismatches"])
