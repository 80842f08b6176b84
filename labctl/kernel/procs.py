"""Processes a lab starts, and finding them again after a crash.

Every process a lab starts is journaled before it is spawned and carries
LABCTL_LAB=<lab> in its environment, so `down` finds it even when labctl was
killed between the spawn and the journal line that records its pid. Processes
living inside one of the lab's namespaces (a server a user started with
`labctl exec`, say) are found by their namespace and stopped too: they would
otherwise keep the namespace, and its interfaces, alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from labctl import failpoints
from labctl.state.journal import Journal

MARKER = "LABCTL_LAB"


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
    lab: str,
    key: str,
    journal: Journal,
    log: Path,
    netns: str | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Start a detached process for the lab; journaled before and after."""
    token = uuid.uuid4().hex
    journal.proc(key, token)
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env[MARKER] = lab
    full_env["LABCTL_PROC"] = token
    if netns is not None:
        # `ip netns exec` gives the process /etc/netns/<ns>/* (resolv.conf) as it does for users.
        argv = ["ip", "netns", "exec", netns] + argv
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=full_env,
            cwd="/",
        )
    failpoints.hit("spawned")
    journal.pid(key, proc.pid, start_time(proc.pid))
    return proc.pid


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return needle in data.split(b"\0")


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def marked(lab: str) -> list[int]:
    """Processes started by the lab (by the marker in their environment)."""
    needle = f"{MARKER}={lab}".encode()
    me = os.getpid()
    return [pid for pid in _pids() if pid != me and _environ_has(pid, needle)]


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
            return
