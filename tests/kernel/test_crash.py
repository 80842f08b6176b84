"""kill -9 at any moment of `up`, then `down`: nothing of the lab is left.

Crashes are placed deterministically with LABCTL_FAILPOINT (labctl kills
itself with SIGKILL at the named step), so every phase of `up` is covered on
every run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from labctl.kernel import netns
from tests.helpers import deployment, lab_processes, labctl_cmd, leftovers, pod, run_labctl

pytestmark = pytest.mark.kernel

FAILPOINTS = [
    "namespaces:0",  # journaled, nothing created yet
    "namespaces:1",  # the underlay switch exists
    "namespaces:7",  # midway through the namespaces
    "uplinks:1",  # switch and uplinks made, nodes not configured
    "nodes:1",  # one node configured
    "pods:3",  # some pods wired
    "spawned:1",  # the responder started, its pid not yet journaled
    "files:2",  # some pods' /etc/netns files written
    "rules:0",  # service rules written, their records not
    "state:1",  # everything built, the applied state not yet written
]


def crash_up(lab, failpoint: str, *docs) -> subprocess.CompletedProcess:
    path = lab.write(*docs)
    env = dict(os.environ, LABCTL_FAILPOINT=failpoint)
    return subprocess.run(labctl_cmd() + ["up", str(path)], capture_output=True, text=True, env=env)


def docs(lab):
    web = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    return (lab.doc(nodes=[{"name": "n1"}, {"name": "n2"}], externals=[{"name": "x"}], dns=True), deployment("web", 4), pod("p"), web)


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_down_after_kill_9_during_up_leaves_nothing(lab, failpoint):
    p = crash_up(lab, failpoint, *docs(lab))
    assert p.returncode == -9, f"the failpoint did not fire: {p.returncode} {p.stderr}"
    down = run_labctl("down", lab.name)
    assert "is down" in down.stdout
    assert leftovers(lab) == {"namespaces": [], "processes": [], "records": False, "files": []}


@pytest.mark.parametrize("failpoint", ["namespaces:7", "pods:3", "spawned:1", "files:2", "rules:0", "state:1"])
def test_up_after_kill_9_finishes_the_lab(lab, failpoint):
    assert crash_up(lab, failpoint, *docs(lab)).returncode == -9
    path = lab.write(*docs(lab))
    run_labctl("up", str(path))
    topo = lab.topo
    assert len(topo.pods) == 6
    for p in topo.pods:
        if p.key != "kube-system/coredns":
            assert lab.probe("p", p.key).served_by == p.key
    web = topo.service("default/web").cluster_ip
    assert lab.sh(lab.pod_ns("p"), "getent", "hosts", "web").split()[:1] == [web], "the cluster DNS answers"
    assert lab.probe("p", "svc/default/web").served_by.startswith("default/web-"), "the service rules are whole again"
    assert len([x for x in lab_processes(lab.name)]) == 1, "exactly one responder"
    assert sorted(n for n in netns.listed() if n.startswith(lab.name + "-")) == sorted(
        [f"{lab.name}-underlay", f"{lab.name}-n1", f"{lab.name}-n2", f"{lab.name}-x", f"{lab.name}-default.p", f"{lab.name}-kube-system.coredns"]
        + [f"{lab.name}-default.web-{i}" for i in range(4)]
    )
    assert sorted(str(f) for f in Path("/etc/netns").glob(f"{lab.name}-*")) == sorted(
        f"/etc/netns/{n}" for n in netns.listed() if n.startswith(lab.name + "-") and ("." in n or n == f"{lab.name}-x")
    ), "one /etc/netns directory per pod and per external (its resolv.conf)"


def test_a_namespace_file_left_half_made_is_removed(lab):
    """kill -9 between creating /run/netns/NAME and mounting the namespace on it."""
    lab.up(lab.doc(), pod("a"))
    half = f"{lab.name}-default.half"
    lab.handle.journal.netns([half])
    open(netns.path(half), "w").close()
    assert netns.exists(half) and not netns.is_mounted(half)
    lab.down()
    assert not os.path.lexists(netns.path(half))


def test_down_never_removes_what_the_lab_did_not_make(lab):
    lab.up(lab.doc(), pod("a"))
    foreign = f"{lab.name}-foreign"
    netns.create(foreign)
    try:
        lab.down()
        assert netns.exists(foreign), "a namespace with the lab's prefix that the lab did not make stays"
    finally:
        netns.delete(foreign)
