"""Link impairment rendered as `tc` commands (parsed in labctl.model.impairment).

An impairment applies to what leaves the target's eth0 (its underlay link),
as `tc qdisc ... netem` on a host or containerlab's `tools netem` do: a delay
of 50 ms on node2 adds 50 ms to every round trip through node2's link.

- rate alone: a token bucket (tbf), which every kernel with traffic control has;
- delay, jitter or loss (with or without a rate): netem, which needs the
  kernel's sch_netem (stock distribution kernels have it, this CI host not).
"""

from __future__ import annotations

import os
import subprocess

from labctl.model.impairment import Impairment, from_spec, parse, parse_loss, parse_rate, parse_time

__all__ = ["Impairment", "from_spec", "parse", "parse_loss", "parse_rate", "parse_time", "netem_available", "commands"]


def netem_available() -> bool:
    """Whether this kernel has netem (loaded, built in, or a module modprobe can load), without touching it."""
    if os.path.isdir("/sys/module/sch_netem"):
        return True
    try:
        return subprocess.run(["modprobe", "-n", "-q", "sch_netem"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def commands(imp: Impairment, dev: str = "eth0") -> list[list[str]]:
    """The `tc` argument lists that set the impairment (replacing any before), or clear it."""
    if imp.empty:
        return [["qdisc", "del", "dev", dev, "root"]]
    if imp.needs_netem:
        argv = ["qdisc", "replace", "dev", dev, "root", "netem"]
        if imp.delay_ms:
            argv += ["delay", f"{imp.delay_ms:g}ms"] + ([f"{imp.jitter_ms:g}ms"] if imp.jitter_ms else [])
        if imp.loss_pct:
            argv += ["loss", f"{imp.loss_pct:g}%"]
        if imp.rate_bps:
            argv += ["rate", f"{imp.rate_bps:.0f}bit"]
        return [argv]
    # a token bucket: a burst of at least one MTU-sized packet per timer tick, 50 ms of queue
    burst = max(1600, int(imp.rate_bps / 8 / 250))
    limit = max(3000, int(imp.rate_bps / 8 * 0.05))
    return [["qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{imp.rate_bps:.0f}bit", "burst", str(burst), "limit", str(limit)]]
