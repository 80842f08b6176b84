"""Deterministic crash points, for the tests of crash recovery.

LABCTL_FAILPOINT=STEP:N makes labctl kill itself with SIGKILL when the N-th
unit of STEP is done (N=0: when STEP is reached). Steps: namespaces, uplinks,
nodes, pods, spawned (a process started, its pid not yet journaled), files,
rules (service rules written, their records not), state (everything built, the
applied state not yet written), and the side-effect edges: journal (a line
appended), netlink (a batch sent), restore (a rule transaction applied),
record (a node's record written), responder (reloaded), stopped (processes
stopped), netns-del (a namespace deleted), ingress-config (a controller's
nginx.conf replaced, nginx not yet told), traced (a trace's rules and monitors
in place, its probe not yet sent).

LABCTL_FAILPOINT=*:N kills at the N-th point of any step: a test walks N up
from 1 until the command finishes, and so crashes it at every point it has.
Unset, a point costs one comparison.
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("LABCTL_FAILPOINT", "")
_step, _, _count = _spec.partition(":")
_target = int(_count or 0) if _step else -1
_seen: dict[str, int] = {}


def hit(step: str, n: int = 1) -> None:
    if not _step or (step != _step and _step != "*"):
        return
    key = _step
    _seen[key] = _seen.get(key, 0) + (1 if _step == "*" else n)
    if _seen[key] >= _target:
        os.kill(os.getpid(), signal.SIGKILL)
