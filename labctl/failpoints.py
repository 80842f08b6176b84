"""Deterministic crash points, for the tests of crash recovery.

LABCTL_FAILPOINT=STEP:N makes labctl kill itself with SIGKILL when the N-th
unit of STEP is done (N=0: when STEP is reached). Steps: namespaces, uplinks,
nodes, pods, spawned (a process started, its pid not yet journaled), rules
(service rules written, their records not), state (everything built, the
applied state not yet written). Unset, it costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("LABCTL_FAILPOINT", "")
_step, _, _count = _spec.partition(":")
_target = int(_count or 0) if _step else -1
_seen: dict[str, int] = {}


def hit(step: str, n: int = 1) -> None:
    if step != _step:
        return
    _seen[step] = _seen.get(step, 0) + n
    if _seen[step] >= _target:
        os.kill(os.getpid(), signal.SIGKILL)
