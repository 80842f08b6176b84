"""The reliability promises of the contract, tried as a careless user or an
attacker would: lab names that are paths, a user's process that carries
LABCTL_LAB, commands run at the same time, commands racing `down`."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from labctl.kernel import netns, procs
from labctl.state.store import LabDir
from tests.helpers import REPO, dump, lab_doc, labctl_cmd, new_lab_name, pod, run_labctl, svc

pytestmark = pytest.mark.e2e

BAD_NAMES = ["../../tmp/victim", ".", "..", "a/b", "x\n", "", "UPPER", "toolongname123", "x_y", "demo/../demo", "9lab"]


@pytest.fixture
def small_lab(root, tmp_path):
    name = new_lab_name()
    path = tmp_path / "lab.yaml"
    path.write_text(dump(lab_doc(name, nodes=[{"name": "node1"}, {"name": "node2"}]), pod("a", node="node1"), pod("b", node="node2")))
    run_labctl("up", str(path))
    yield name, path
    run_labctl("down", name)
    assert not [n for n in netns.listed() if n.startswith(name + "-")]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_lab_name_that_is_not_one_is_refused_before_anything_is_read_or_removed(root, tmp_path, bad):
    state = tmp_path / "state"
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (state / "other").mkdir(parents=True)
    (state / "other" / "journal").write_text("")
    env = dict(os.environ, LABCTL_STATE_DIR=str(state))
    target = str(victim) if bad == "../../tmp/victim" else bad
    tries = [(["down", target], env), (["status", "--lab", target], env), (["probe", "--lab", target, "a", "b"], env)]
    if bad:  # an empty LABCTL_LAB counts as unset, as click reads it
        tries += [(["status"], dict(env, LABCTL_LAB=target)), (["probe", "a", "b"], dict(env, LABCTL_LAB=target))]
    for args, e in tries:
        p = run_labctl(*args, env=e, check=False)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert "internal error" not in p.stderr and len(p.stderr) < 1000
        if bad:
            assert "is not a lab name" in p.stderr or "say which lab" in p.stderr, p.stderr
    assert (victim / "sub").is_dir(), "nothing outside the state root is removed"
    assert (state / "other" / "journal").exists(), "another lab's records stay"


def test_down_all_ignores_entries_of_the_state_root_that_are_no_lab(root, tmp_path):
    state = tmp_path / "state"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    state.mkdir()
    (state / "Not-A-Lab").mkdir()
    (state / "link").symlink_to(outside)
    env = dict(os.environ, LABCTL_STATE_DIR=str(state))
    p = run_labctl("down", "--all", env=env)
    assert "no lab is up" in p.stdout
    assert (outside / "keep").exists() and (state / "Not-A-Lab").is_dir()


def test_down_leaves_alone_a_users_process_that_carries_labctl_lab(small_lab):
    """The README tells users to export LABCTL_LAB: their shell, tmux or watch carry it."""
    name, _ = small_lab
    shell = subprocess.Popen(["sleep", "300"], env=dict(os.environ, LABCTL_LAB=name), start_new_session=True)
    try:
        run_labctl("down", name)
        assert procs.alive(shell.pid), "down stopped a process it did not start"
    finally:
        shell.kill()
        shell.wait()


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(labctl_cmd() + list(args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_applies_and_up_all_land(small_lab, tmp_path):
    name, path = small_lab
    files = []
    for i in range(4):
        f = tmp_path / f"p{i}.yaml"
        f.write_text(dump(pod(f"c{i}", node="node2")))
        files.append(f)
    grown = tmp_path / "grown.yaml"
    grown.write_text(
        dump(
            lab_doc(name, nodes=[{"name": "node1"}, {"name": "node2"}, {"name": "node3"}]),
            pod("a", node="node1"),
            pod("b", node="node2"),
            svc("web", {"app": "a"}),
        )
    )
    running = [_spawn("apply", "--lab", name, "-f", str(f), "--json") for f in files] + [_spawn("up", str(grown), "--json")]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in running]
    assert [r[0] for r in results] == [0] * 5, results
    st = json.loads(run_labctl("status", "--lab", name, "--json").stdout)
    assert sorted(p["name"] for p in st["pods"]) == ["a", "b", "c0", "c1", "c2", "c3"], "no command's change was lost"
    assert [n["name"] for n in st["nodes"]] == ["node1", "node2", "node3"] and "web" in [s["name"] for s in st["services"]]
    # `up` prunes only what its own file had: the applied pods stay through another `up`
    run_labctl("up", str(grown))
    assert len(json.loads(run_labctl("status", "--lab", name, "--json").stdout)["pods"]) == 6
    assert run_labctl("probe", "--lab", name, "a", "c3").returncode == 0


RACERS = [
    ["apply", "-f", "{extra}"],
    ["delete", "-f", "{extra}", "--ignore-not-found"],
    ["ready", "b", "false"],
    ["status", "--json"],
    ["probe", "a", "b"],
    ["verify", "--timeout", "1"],
    ["explain", "a", "b"],
    ["exec", "a", "--", "true"],
]


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3])
def test_commands_racing_down_end_cleanly(root, tmp_path, delay):
    name = new_lab_name()
    path = tmp_path / "lab.yaml"
    path.write_text(dump(lab_doc(name, nodes=[{"name": "node1"}, {"name": "node2"}]), pod("a", node="node1"), pod("b", node="node2")))
    extra = tmp_path / "extra.yaml"
    extra.write_text(dump(pod("c", node="node1")))
    run_labctl("up", str(path))
    racers = [_spawn(*[a.format(extra=extra) for a in args[:1]], "--lab", name, *[a.format(extra=extra) for a in args[1:]]) for args in RACERS]
    time.sleep(delay)
    down = _spawn("down", name)
    outcomes = [(r.args[3:], r.wait(timeout=120), r.stderr.read()) for r in racers]
    assert down.wait(timeout=120) == 0, down.stderr.read()
    for args, code, err in outcomes:
        assert "internal error" not in err and "Traceback" not in err, (args, err)
        if args[0] != "exec":  # exec passes on the exit code of what it ran (ip netns exec's, when the namespace went)
            assert code in (0, 2), (args, code, err)
        if code == 2:
            assert "error:" in err, (args, err)
    assert not [n for n in netns.listed() if n.startswith(name + "-")]
    assert not LabDir(name).exists() and not LabDir(name).lock_path.exists()
    run_labctl("down", name)  # a lab an apply may have raced back up: nothing of it stays
