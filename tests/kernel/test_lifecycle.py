"""up, re-up, reconcile, apply/delete, container commands, down."""

from __future__ import annotations

import json
import re
import time

import pytest

from labctl.kernel import netns, procs
from labctl.model import names
from tests.helpers import deployment, dump, namespace, pod

pytestmark = pytest.mark.kernel


def _steady(text: str) -> str:
    """Drop what the kernel changes by itself: running timers, a bridge's carrier settling, packet counters,
    IPv6 link-local addresses finishing duplicate address detection and the multicast groups they join."""
    text = re.sub(r"(\w+_timer)\s+[\d.]+", r"\1", text)
    text = re.sub(r" tentative| dadfailed| optimistic", "", text)
    text = "\n".join(line for line in text.splitlines() if not re.match(r"(33:33|01:00:5e):", line))
    text = re.sub(r"\[\d+:\d+\]", "[0:0]", text)
    return re.sub(r"state (UP|UNKNOWN)", "state up", text)


def snapshot(lab) -> dict[str, str]:
    """What a learner would inspect in every namespace of the lab."""
    out = {}
    for ns in sorted(n for n in netns.listed() if n.startswith(lab.name + "-")):
        rules = "\n".join(line for line in lab.sh(ns, "iptables-save").splitlines() if not line.startswith("#"))
        out[ns] = _steady(
            "\n".join(
                [
                    lab.sh(ns, "ip", "-d", "addr"),
                    lab.sh(ns, "ip", "route"),
                    lab.sh(ns, "ip", "neigh", "show", "nud", "permanent"),
                    lab.sh(ns, "bridge", "fdb", "show", "state", "permanent"),
                    rules,
                ]
            )
        )
    return out


def macs(lab, pod_keys) -> dict[str, str]:
    return {k: lab.jsh(lab.pod_ns(k), "ip", "-j", "link", "show", "eth0")[0]["address"] for k in pod_keys}


def test_a_second_up_changes_nothing(lab):
    docs = (lab.doc(externals=[{"name": "x"}]), pod("a"), pod("b"), deployment("web", 3))
    first = lab.up(*docs)
    assert first.created
    before = snapshot(lab)
    pids = lab.owned_pids()
    again = lab.up(*docs)
    assert not again.created and again.plan.empty() and not again.to_dict()["changed"]
    assert snapshot(lab) == before
    assert lab.owned_pids() == pids, "the responder was not restarted"


def test_reconcile_adds_and_removes_pods_and_leaves_the_rest_alone(lab):
    lab.up(lab.doc(), pod("a"), pod("b"), pod("c"))
    ips = {p.key: p.ip for p in lab.topo.pods}
    before_macs = macs(lab, ["a", "b"])
    result = lab.up(lab.doc(), pod("a"), pod("b"), pod("d"))
    assert result.plan.summary()["podsAdded"] == 1 and result.plan.summary()["podsRemoved"] == 1
    assert {k: lab.topo.pod(k).ip for k in ("default/a", "default/b")} == {k: ips[k] for k in ("default/a", "default/b")}
    assert macs(lab, ["a", "b"]) == before_macs
    assert not netns.exists(lab.pod_ns("c"))
    veth_c = names.pod_veth(lab.name, "default", "c")
    for n in lab.topo.lab.nodes:
        assert veth_c not in lab.sh(lab.node_ns(n.name), "ip", "link")
    d = lab.probe("a", "d")
    assert d.verdict == "open" and d.served_by == "default/d"
    assert lab.probe("b", ips["default/c"], port=8080, timeout=0.3).verdict != "open"


def test_scaling_a_deployment_and_moving_a_pod(lab):
    lab.up(lab.doc(), deployment("web", 2), pod("p", node="node1"))
    lab.up(lab.doc(), deployment("web", 4), pod("p", node="node2"))
    topo = lab.topo
    assert sorted(p.name for p in topo.pods if p.owner) == ["web-0", "web-1", "web-2", "web-3"]
    assert topo.pod("default/p").node == "node2" and topo.pod("default/p").ip.startswith("10.244.1.")
    for p in topo.pods:
        assert lab.probe("p", p.key, "tcp").served_by == p.key
    lab.up(lab.doc(), deployment("web", 1))
    assert [p.name for p in lab.topo.pods] == ["web-0"]
    assert not netns.exists(lab.pod_ns("web-3")) and not netns.exists(lab.pod_ns("p"))


def test_nodes_and_externals_join_and_leave_a_running_lab(lab):
    lab.up(lab.doc(nodes=[{"name": "node1"}, {"name": "node2"}]), pod("a", node="node1"), pod("b", node="node2"))
    lab.up(
        lab.doc(nodes=[{"name": "node1"}, {"name": "node2"}, {"name": "node3"}], externals=[{"name": "x"}]),
        pod("a", node="node1"),
        pod("b", node="node2"),
        pod("c", node="node3"),
    )
    assert lab.probe("a", "c").verdict == "open" and lab.probe("c", "b").verdict == "open"
    assert lab.probe("ext/x", "node/node3", "icmp").verdict == "open"
    n3 = lab.topo.lab.node("node3")
    fdb = [e["dst"] for e in lab.jsh(lab.node_ns("node1"), "bridge", "-j", "fdb", "show", "dev", "flannel.1") if e.get("dst")]
    assert n3.ip in fdb
    # node2 leaves: its pods go, and the other nodes forget its overlay entries
    lab.up(lab.doc(nodes=[{"name": "node1"}, {"name": "node3"}]), pod("a", node="node1"), pod("c", node="node3"))
    assert not netns.exists(lab.node_ns("node2")) and not netns.exists(lab.pod_ns("b"))
    assert not netns.exists(names.external_netns(lab.name, "x"))
    routes = [r["dst"] for r in lab.jsh(lab.node_ns("node1"), "ip", "-j", "route")]
    assert "10.244.1.0/24" not in routes and "10.244.2.0/24" in routes
    fdb = [e["dst"] for e in lab.jsh(lab.node_ns("node1"), "bridge", "-j", "fdb", "show", "dev", "flannel.1") if e.get("dst")]
    assert fdb == [n3.ip]
    assert lab.probe("a", "c").verdict == "open"


def test_apply_and_delete_through_the_cli(lab):
    lab.up(lab.doc(), pod("a"))
    extra = lab.tmp / "extra.yaml"
    extra.write_text(dump(namespace("shop"), pod("b", namespace="shop"), deployment("web", 2)))
    out = json.loads(lab.cli("apply", "--lab", lab.name, "-f", str(extra), "--json").stdout)
    assert out["changes"]["podsAdded"] == 3
    assert lab.probe("a", "shop/b").served_by == "shop/b"
    a_ip = lab.pod_ip("a")
    # applying the same file again changes nothing
    assert json.loads(lab.cli("apply", "--lab", lab.name, "-f", str(extra), "--json").stdout)["changed"] is False
    gone = lab.tmp / "gone.yaml"
    gone.write_text(dump(namespace("shop")))
    out = json.loads(lab.cli("delete", "--lab", lab.name, "-f", str(gone), "--json").stdout)
    assert out["deleted"] == ["Namespace shop", "Pod shop/b"] and out["changes"]["podsRemoved"] == 1
    assert not netns.exists(lab.pod_ns("shop/b")) and lab.pod_ip("a") == a_ip
    # deleting it again is an error (exit 2) unless --ignore-not-found
    again = lab.cli("delete", "--lab", lab.name, "-f", str(gone), check=False)
    assert again.returncode == 2 and "Namespace shop not found" in again.stderr
    assert lab.cli("delete", "--lab", lab.name, "-f", str(gone), "--ignore-not-found").returncode == 0
    # a Lab document is refused by apply
    bad = lab.tmp / "bad.yaml"
    bad.write_text(dump(lab.doc()))
    refused = lab.cli("apply", "--lab", lab.name, "-f", str(bad), check=False)
    assert refused.returncode == 2 and "use `labctl up FILE`" in refused.stderr


def test_a_container_command_runs_in_the_pod_and_down_stops_it(lab):
    server = ["python3", "-m", "http.server", "--bind", "0.0.0.0", "9000"]
    lab.up(lab.doc(), pod("srv", ports=(9000,), command=server), pod("cli"))
    deadline = time.monotonic() + 15
    while True:  # the server needs a moment to bind: poll the real condition
        r = lab.probe("cli", "srv", port=9000, timeout=0.2)
        if r.verdict == "open" or time.monotonic() > deadline:
            break
    assert r.verdict == "open"
    assert r.served_by is None, "the responder does not answer for a container that has its own command"
    owned = lab.handle.journal.replay().procs
    pid = owned["cmd:default/srv/c"]["pid"]
    assert procs.alive(pid)
    assert int(lab.sh(lab.pod_ns("srv"), "stat", "-Lc", "%i", f"/proc/{pid}/ns/net").strip()) == netns.inode(lab.pod_ns("srv"))
    # a command that exits is started again by the next `up` (restartPolicy Always)
    procs.stop([pid])
    result = lab.up(lab.doc(), pod("srv", ports=(9000,), command=server), pod("cli"))
    assert result.restarted == 1
    lab.down()
    assert not procs.alive(lab.handle.journal.replay().procs.get("cmd:default/srv/c", {}).get("pid", pid))


def test_down_stops_processes_users_started_inside_the_lab(lab):
    import subprocess

    lab.up(lab.doc(), pod("a"))
    p = subprocess.Popen(["ip", "netns", "exec", lab.pod_ns("a"), "sleep", "300"])
    inode = netns.inode(lab.pod_ns("a"))
    deadline = time.monotonic() + 10
    while p.pid not in procs.in_namespaces({inode}) and time.monotonic() < deadline:
        time.sleep(0.01)  # until `ip netns exec` has entered the namespace
    try:
        result = lab.down()
        assert result["processes"] >= 2  # the responder and the sleep
        assert not procs.alive(p.pid)  # (down reaped it: it was this test's child)
    finally:
        if p.poll() is None:
            p.kill()


def test_up_rebuilds_a_pod_whose_namespace_was_deleted_by_hand(lab):
    lab.up(lab.doc(), pod("a"), pod("b"))
    ip = lab.pod_ip("b")
    netns.delete(lab.pod_ns("b"))
    result = lab.up(lab.doc(), pod("a"), pod("b"))
    assert result.plan.summary()["podsAdded"] == 1
    assert lab.pod_ip("b") == ip
    assert lab.probe("a", "b").verdict == "open"


def test_up_sets_up_again_the_links_someone_set_down(lab):
    docs = (lab.doc(externals=[{"name": "client"}]), pod("a", node="node1"), pod("b", node="node2"))
    lab.up(*docs)
    veth = names.pod_veth(lab.name, "default", "b")
    port = names.switch_port(lab.name, "node1")
    lab.sh(lab.node_ns("node2"), "ip", "link", "set", veth, "down")
    lab.sh(lab.node_ns("node1"), "ip", "link", "set", "flannel.1", "down")
    lab.sh(names.underlay_netns(lab.name), "ip", "link", "set", port, "down")
    lab.sh(names.external_netns(lab.name, "client"), "ip", "link", "set", "eth0", "down")
    assert lab.probe("a", "b", timeout=0.3).verdict == "filtered"
    result = lab.up(*docs)
    assert sorted(result.links_up) == sorted(
        [
            f"{lab.node_ns('node2')}/{veth}",
            f"{lab.node_ns('node1')}/flannel.1",
            f"{names.underlay_netns(lab.name)}/{port}",
            f"{names.external_netns(lab.name, 'client')}/eth0",
        ]
    )
    assert result.changed and lab.probe("a", "b").verdict == "open" and lab.probe("ext/client", "node/node1", proto="icmp").verdict == "open"
    assert lab.up(*docs).links_up == []


def test_down_is_idempotent_and_reports_an_unknown_lab(lab):
    lab.up(lab.doc(), pod("a"))
    first = lab.cli("down", lab.name)
    assert "namespaces removed" in first.stdout
    second = lab.cli("down", lab.name)
    assert second.returncode == 0 and "is not up" in second.stdout
    assert not [n for n in netns.listed() if n.startswith(lab.name + "-")]
    assert re.search(r"4 namespaces removed, 1 process stopped", first.stdout)


def test_a_pod_leaving_changes_no_mac_other_hosts_have_cached(lab):
    """A bridge takes the lowest MAC of its ports unless given one: when that port's pod
    left, every pod on the node kept sending to a gateway MAC that was gone (seconds of
    loss, until ARP noticed). cni0 and the switch's br0 have fixed MACs; so has each
    host's eth0, so a node that leaves and comes back is not hidden by its peers' ARP."""
    docs = [lab.doc(), pod("a", node="node1"), pod("b", node="node2")] + [pod(f"z{i}", node="node1") for i in range(6)]
    lab.up(*docs)
    cni0 = lab.jsh(lab.node_ns("node1"), "ip", "-j", "link", "show", "cni0")[0]["address"]
    assert cni0 == names.bridge_mac(lab.name, "node1", "cni0")
    assert lab.probe("a", "b").served_by == "default/b"  # a caches its gateway's MAC
    lab.up(*docs[:3])
    assert lab.jsh(lab.node_ns("node1"), "ip", "-j", "link", "show", "cni0")[0]["address"] == cni0
    assert lab.probe("a", "b").served_by == "default/b", "at once, with the MAC a has cached"
    eth0 = lab.jsh(lab.node_ns("node2"), "ip", "-j", "link", "show", "eth0")[0]["address"]
    assert eth0 == names.host_mac(lab.name, "node2")
    br0 = lab.jsh(names.underlay_netns(lab.name), "ip", "-j", "link", "show", "br0")[0]["address"]
    assert br0 == names.bridge_mac(lab.name, "underlay", "br0")
