"""kill -9 at every point of `up`, `apply`, `delete` and `down`.

LABCTL_FAILPOINT=*:N kills labctl at the N-th crash point it passes (a journal
line, a netlink batch, a rule transaction, a record, a process started or
stopped, a namespace deleted...). Each sweep walks N up from 1 until the
command finishes on its own, and after every crash checks the promise of the
contract: the next run of the same command completes the lab in one go (the
lab is whole: exactly its namespaces, one responder, pods served across
nodes and through a service), and `down` leaves nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from labctl.kernel import netns
from labctl.state.store import LabDir
from tests.helpers import deployment, dump, lab_processes, labctl_cmd, namespace, pod, run_labctl, svc

pytestmark = pytest.mark.kernel

MAX_POINTS = 400  # a sweep that never ends is a bug of its own


def crashed_at(n: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(labctl_cmd() + list(args), capture_output=True, text=True, env=dict(os.environ, LABCTL_FAILPOINT=f"*:{n}"))


def leftovers(lab) -> dict:
    return {
        "namespaces": [n for n in netns.listed() if n.startswith(lab.name + "-")],
        "processes": lab_processes(lab.name),
        "records": LabDir(lab.name).exists() or LabDir(lab.name).lock_path.exists(),
        "files": [str(f) for f in Path("/etc/netns").glob(f"{lab.name}-*")],
    }


def assert_whole(lab, nodes: list[str], pods: list[str], where: str = "") -> None:
    """Exactly the lab's namespaces, one responder, and traffic across nodes and through a service."""
    want = {f"{lab.name}-underlay", f"{lab.name}-x"} | {f"{lab.name}-{n}" for n in nodes} | {f"{lab.name}-{p.replace('/', '.')}" for p in pods}
    assert set(n for n in netns.listed() if n.startswith(lab.name + "-")) == want, where
    assert sorted(p.key for p in lab.topo.pods) == sorted(pods), where
    assert len(lab_processes(lab.name)) == 1, f"{where}: the responder, and nothing else"
    r = lab.probe("default/a", "default/b")
    assert r.served_by == "default/b", f"{where}: {r}"
    r = lab.probe("default/b", "svc/default/web")
    assert (r.served_by or "").startswith("default/web-"), f"{where}: {r}"


def lab_docs(lab, nodes=("n1", "n2"), replicas=2, extra_pods=()):
    web = svc("web", {"app": "web"})
    return (
        lab.doc(nodes=[{"name": n} for n in nodes], externals=[{"name": "x"}]),
        pod("a", node="n1"),
        pod("b", node="n2"),
        deployment("web", replicas),
        web,
        *extra_pods,
    )


def sweep(lab, command: list[str], before, after_pods: list[str], after_nodes: list[str], again: list[str] | None = None) -> int:
    """Crash `command` at every point; after each crash, `again` (the same command by
    default) must finish the change in one run, leaving the lab whole; then `before`
    resets the lab for the next point. Returns the number of points."""
    for n in range(1, MAX_POINTS):
        before()
        p = crashed_at(n, *command)
        if p.returncode == 0:
            assert_whole(lab, after_nodes, after_pods, "without a crash")
            return n - 1
        assert p.returncode == -9, f"point {n}: exit {p.returncode}: {p.stderr}"
        r = run_labctl(*(again or command), check=False)
        assert r.returncode == 0, f"after a crash at point {n}, `labctl {' '.join(again or command)}` did not finish: {r.stderr}"
        assert_whole(lab, after_nodes, after_pods, f"after a crash at point {n} and one more run")
    raise AssertionError(f"{' '.join(command)} passed more than {MAX_POINTS} crash points")


def test_kill_9_at_every_point_of_up_then_up_completes_and_down_removes_all(lab):
    path = lab.write(*lab_docs(lab))
    pods = ["default/a", "default/b", "default/web-0", "default/web-1"]
    points = sweep(lab, ["up", str(path)], lambda: run_labctl("down", lab.name), pods, ["n1", "n2"])
    assert points > 20, points
    print("POINTS up", points)
    run_labctl("down", lab.name)
    assert leftovers(lab) == {"namespaces": [], "processes": [], "records": False, "files": []}


def test_kill_9_while_up_adds_a_node_and_pods(lab):
    small = lab.write(*lab_docs(lab))
    big = lab.tmp / "big.yaml"
    big.write_text(dump(*lab_docs(lab, nodes=("n1", "n2", "n3"), replicas=3, extra_pods=(pod("c", node="n3"),))))
    pods = ["default/a", "default/b", "default/c", "default/web-0", "default/web-1", "default/web-2"]
    points = sweep(lab, ["up", str(big)], lambda: run_labctl("up", str(small)), pods, ["n1", "n2", "n3"])
    assert points > 15
    assert lab.probe("default/c", "default/a").served_by == "default/a"


def test_kill_9_while_apply_adds_and_delete_removes(lab):
    base = lab.write(*lab_docs(lab))
    extra = lab.tmp / "extra.yaml"
    extra.write_text(dump(namespace("shop"), pod("d", namespace="shop", node="n2"), deployment("web", 3)))
    shop = lab.tmp / "shop.yaml"
    shop.write_text(dump(namespace("shop")))
    web2 = lab.tmp / "web2.yaml"
    web2.write_text(dump(deployment("web", 2)))
    run_labctl("up", str(base))
    applied = ["default/a", "default/b", "default/web-0", "default/web-1", "default/web-2", "shop/d"]

    def reset_to_base():
        run_labctl("delete", "--lab", lab.name, "-f", str(shop), "--ignore-not-found")
        run_labctl("apply", "--lab", lab.name, "-f", str(web2))

    points = sweep(lab, ["apply", "--lab", lab.name, "-f", str(extra)], reset_to_base, applied, ["n1", "n2"])
    assert points > 10
    # and delete: crashed at every point, then run again (what it removed may be gone already)
    deleted = ["default/a", "default/b", "default/web-0", "default/web-1", "default/web-2"]
    points = sweep(
        lab,
        ["delete", "--lab", lab.name, "-f", str(shop)],
        lambda: run_labctl("apply", "--lab", lab.name, "-f", str(extra)),
        deleted,
        ["n1", "n2"],
        again=["delete", "--lab", lab.name, "-f", str(shop), "--ignore-not-found"],
    )
    assert points > 5


def test_kill_9_at_every_point_of_down_then_down_removes_all(lab):
    path = lab.write(*lab_docs(lab))
    for n in range(1, MAX_POINTS):
        run_labctl("up", str(path))
        p = crashed_at(n, "down", lab.name)
        if p.returncode == 0:
            break
        assert p.returncode == -9, p.stderr
        assert run_labctl("down", lab.name).returncode == 0
        assert leftovers(lab) == {"namespaces": [], "processes": [], "records": False, "files": []}, f"point {n}"
    assert n > 5
    assert leftovers(lab) == {"namespaces": [], "processes": [], "records": False, "files": []}
