"""Link impairment in a host's namespace: `tc` on its eth0 (the side effects of tc.py)."""

from __future__ import annotations

import subprocess

from labctl.errors import HostLacks, KernelError
from labctl.impair.tc import Impairment, commands
from labctl.kernel import run

NO_NETEM_HINT = "rate alone works on every kernel (tbf); for netem use a stock distribution kernel: scripts/vm-test.sh"


def _tc(ns: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(run.in_netns(ns, ["tc", *argv]), capture_output=True, text=True)


def current(ns: str) -> str:
    """The root qdisc of the host's eth0, as `tc qdisc show` prints it."""
    return _tc(ns, ["qdisc", "show", "dev", "eth0", "root"]).stdout.strip()


def set_link(ns: str, imp: Impairment) -> None:
    """Replace the impairment of the host's eth0 (an empty one clears it)."""
    for argv in commands(imp):
        p = _tc(ns, argv)
        if p.returncode == 0:
            continue
        if imp.empty and ("No such file" in p.stderr or "Cannot delete qdisc with handle of zero" in p.stderr):
            continue  # nothing to clear
        if imp.needs_netem and ("unknown" in p.stderr.lower() or "No such file" in p.stderr):
            raise HostLacks(f"delay, jitter and loss need the kernel's netem (sch_netem), which this kernel lacks: {p.stderr.strip()}", hint=NO_NETEM_HINT)
        raise KernelError(f"`ip netns exec {ns} tc {' '.join(argv)}` failed: {p.stderr.strip()}")
