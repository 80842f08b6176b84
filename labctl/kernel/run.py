"""Argument-list subprocesses inside a namespace: iptables-restore, nft, ip.

Rules are written as kube-proxy writes them: rendered to text, applied in one
transaction per table family, run inside the node's namespace (nsenter
--net, which switches only the network namespace). Several namespaces'
transactions run in parallel. Never shell=True.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from labctl import failpoints
from labctl.errors import HostLacks, KernelError
from labctl.kernel import netns


def require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise HostLacks(f"{tool} is not installed", hint=f"install the Debian package {package} (scripts/setup.sh does)")
    return path


def in_netns(name: str, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={netns.path(name)}", "--"] + argv


@dataclass
class Transaction:
    netns: str
    argv: list[str]
    text: str

    def describe(self) -> str:
        return f"ip netns exec {self.netns} {' '.join(self.argv)}"


def _context(text: str, stderr: str) -> str:
    """The offending line of a restore input, with its neighbours."""
    m = re.search(r"line:? (\d+)", stderr)
    if not m:
        return ""
    n = int(m.group(1))
    lines = text.splitlines()
    lo, hi = max(0, n - 3), min(len(lines), n + 2)
    return "\n".join(f"{'>' if i + 1 == n else ' '} {i + 1:5d}  {lines[i]}" for i in range(lo, hi))


def _memfd(text: str) -> int:
    """An anonymous file holding `text`, read from its start: a child's whole standard
    input, there before the child runs (a pipe would be fed one child at a time)."""
    fd = os.memfd_create("labctl-transaction", os.MFD_CLOEXEC)
    data = text.encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def apply_all(transactions: list[Transaction]) -> None:
    """Run every transaction, all at once; raise KernelError naming each failure."""
    running = []
    for t in transactions:
        fd = _memfd(t.text)
        try:
            running.append((t, subprocess.Popen(in_netns(t.netns, t.argv), stdin=fd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        finally:
            os.close(fd)
    failures = []
    for t, p in running:
        failpoints.hit("restore")
        _, err = p.communicate()
        if p.returncode != 0:
            ctx = _context(t.text, err)
            failures.append(f"`{t.describe()}` failed: {err.strip()}" + (f"\n{ctx}" if ctx else ""))
    if failures:
        raise KernelError("\n".join(failures))


def output(name: str, argv: list[str]) -> str:
    """Run a command in a namespace and return its standard output."""
    p = subprocess.run(in_netns(name, argv), capture_output=True, text=True)
    if p.returncode != 0:
        raise KernelError(f"`ip netns exec {name} {' '.join(argv)}` failed: {p.stderr.strip()}")
    return p.stdout
