"""Processes a lab starts, owned by what the journal records of them.

A process is spawned behind a gate: a shell that waits for one line on a
pipe before it execs the program (same pid, same start time). labctl journals
the pid and the start time from /proc, then opens the gate. If labctl is
killed before that, the pipe closes without a line and the gate exits: no
program ever runs that the journal does not name. `down` stops a process only
when its pid and start time still match the record (a pid reused by another
process is left alone), plus whatever runs inside the lab's own namespaces
(a server a user started with `labctl exec`), found by the namespace's inode.
Nothing is found by an environment variable a user's shell may also carry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from labctl import failpoints
from labctl.state.journal import Journal

# The gate's standard input is the pipe; `read` fails at its end: a gate whose
# writer died exits instead of running the program, which gets /dev/null instead.
GATE = ["sh", "-c", 'IFS= read -r go || exit 125; exec "$@" </dev/null', "labctl-gate"]


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, to tell a process from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def alive(pid: int, start: int | None = None) -> bool:
    st = _state(pid)
    if st is None or st in ("Z", "X"):
        return False
    return start is None or start_time(pid) == start


def spawn(
    argv: list[str],
    *,
    key: str,
    journal: Journal,
    log: Path,
    netns: str | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Start a detached process for the lab, journaled before it runs."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    if netns is not None:
        # `ip netns exec` gives the process /etc/netns/<ns>/* (resolv.conf) as it does for users.
        argv = ["ip", "netns", "exec", netns] + argv
    gate_r, gate_w = os.pipe()
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                GATE + argv,
                stdin=gate_r,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=full_env,
                cwd="/",
            )
        os.close(gate_r)
        gate_r = -1
        failpoints.hit("spawned")
        journal.proc(key, proc.pid, start_time(proc.pid))
        os.write(gate_w, b"go\n")
    finally:
        if gate_r >= 0:
            os.close(gate_r)
        os.close(gate_w)
    return proc.pid


def record_alive(rec: dict | None) -> bool:
    """A journal's process record whose process still runs (pid and start time match)."""
    return bool(rec and rec.get("pid") and alive(rec["pid"], rec.get("start")))


def recorded(owned: dict[str, dict]) -> list[int]:
    """The journaled processes still running (pid and start time both match)."""
    return [r["pid"] for r in owned.values() if r.get("pid") and alive(r["pid"], r.get("start"))]


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def in_namespaces(inodes: set[int]) -> list[int]:
    """Processes whose network namespace is one of these (by nsfs inode)."""
    if not inodes:
        return []
    out = []
    for pid in _pids():
        try:
            link = os.readlink(f"/proc/{pid}/ns/net")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(link[5:-1]) in inodes:  # "net:[4026532…]"
            out.append(pid)
    return out


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(pids: list[int], grace: float = 1.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Gone processes are fine."""
    pids = [p for p in set(pids) if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while True:
            for pid in pids:
                _reap(pid)
            pids = [p for p in pids if alive(p)]
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not pids:
            break
    failpoints.hit("stopped")
