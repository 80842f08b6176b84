"""Source ports for probes, handed out in sequence per lab rather than at random.

A probe is a new flow only if its 5-tuple is new. Conntrack in the nodes keeps
an answered UDP flow for 30 s (120 s once it has seen a stream) and lets its
packets through whatever policy now says: stateful, as on a cluster. With
random ports, a run of `labctl verify` (hundreds of probes) right after a
policy change repeats the tuple of a flow the old policy allowed about once
in a hundred runs, and that probe comes back open. A per-lab counter
(/run/labctl/<lab>/probe-ports, under flock) walks the range instead, so a
port comes back for the same lab only after 28,000 probes.
"""

from __future__ import annotations

import fcntl
import os
import random

from labctl.state.store import LabDir

LOW, HIGH = 33000, 61000  # inside the usual ephemeral range, clear of its first ports
SPAN = HIGH - LOW


def port(base: int, i: int) -> int:
    """The i-th port of a block that starts at base."""
    return LOW + (base - LOW + i) % SPAN


def reserve(lab: str, n: int = 1) -> int:
    """The first of n consecutive ports (use `port(base, i)`), never handed out
    for this lab in the last 28,000 probes. Without the lab's directory (not up,
    or not root), a random start."""
    d = LabDir(lab)
    if not d.exists():
        return random.SystemRandom().randrange(LOW, HIGH)
    try:
        fd = os.open(d.path / "probe-ports", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:  # not root, or the lab went down meanwhile
        return random.SystemRandom().randrange(LOW, HIGH)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.read(fd, 32).decode().strip()
        base = int(text) if text.isdigit() and LOW <= int(text) < HIGH else random.SystemRandom().randrange(LOW, HIGH)
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(port(base, n)).encode())
        return base
    finally:
        os.close(fd)
