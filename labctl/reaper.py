"""The lab's reaper: removes pods deleted with a grace period once it is over,
as the kubelet does when a pod's terminationGracePeriodSeconds ends.

`labctl delete --grace` starts it (a recorded process of the lab: `down` stops
it, also after a crash) when none runs. It wakes at the earliest deadline,
removes what is due through the same locked change as every command, and exits
when no pod is terminating. Should it die, the next command that changes the
lab removes what is due all the same (labctl.changes).

    python -m labctl.reaper LAB
"""

from __future__ import annotations

import sys
import time

KEY = "reaper"
POLL = 0.5  # a later `delete --grace` may end sooner than what it sleeps for


def ensure(handle) -> None:
    """Start the reaper of a lab that has terminating pods, unless one runs."""
    from labctl.kernel import procs

    topo = handle.applied()
    if topo is None or not topo.terminating:
        return
    rec = handle.journal.replay().procs.get(KEY)
    if procs.record_alive(rec):
        return
    if rec:
        handle.journal.release_proc(KEY)
    procs.spawn([sys.executable, "-m", "labctl.reaper", handle.name], key=KEY, journal=handle.journal, log=handle.dir.logs / "reaper.log")


def main(argv: list[str]) -> int:
    from labctl import changes
    from labctl.errors import LabError
    from labctl.lab import LabHandle

    handle = LabHandle(argv[0])
    while True:
        topo = handle.applied()
        if topo is None or not topo.terminating:
            return 0
        due = min(topo.terminating.values())
        if time.time() >= due:
            try:
                result = handle.change(changes.expire())
            except LabError as e:  # the lab went down meanwhile
                print(f"reaper: {e}", flush=True)
                return 0
            print(f"reaper: removed the pods whose grace period ended ({result.plan.summary()})", flush=True)
            continue
        time.sleep(min(POLL, max(0.0, due - time.time())))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
