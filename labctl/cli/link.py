"""labctl link TARGET [--delay D] [--jitter J] [--loss L] [--rate R] | --clear"""

from __future__ import annotations

import subprocess

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_option, running_lab
from labctl.errors import HostLacks, InvalidInput, KernelError
from labctl.impair import tc
from labctl.kernel import run
from labctl.probe.targets import resolve


def _tc(ns: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(run.in_netns(ns, ["tc", *argv]), capture_output=True, text=True)


def current(ns: str) -> str:
    """The root qdisc of the target's eth0, as `tc qdisc show` prints it."""
    p = _tc(ns, ["qdisc", "show", "dev", "eth0", "root"])
    return p.stdout.strip()


@cli.command()
@lab_option
@click.argument("target")
@click.option("--delay", metavar="TIME", help="Added to every packet leaving the link (20ms, 500us). Needs netem.")
@click.option("--jitter", metavar="TIME", help="Random variation of the delay (needs --delay).")
@click.option("--loss", metavar="PCT", help="Share of packets dropped at random (1%, 0.5%). Needs netem.")
@click.option("--rate", metavar="RATE", help="Bandwidth limit (10mbit, 512kbit); alone it is a token bucket (tbf).")
@click.option("--clear", is_flag=True, help="Remove the impairment.")
@json_option
def link(lab_name, target, delay, jitter, loss, rate, clear, as_json) -> None:
    """Impair the underlay link of TARGET (node/NAME or ext/NAME): delay,
    jitter, loss and rate limits on what leaves its eth0, as `tc qdisc ...
    netem` does on a host; without options, show the link's qdisc.

    \b
      labctl link node/node2 --delay 50ms --jitter 5ms   # a far-away zone
      labctl link ext/client --rate 10mbit                # a slow client
      labctl link node/node2 --clear

    Delay and loss need the kernel's netem (sch_netem): on a kernel without
    it, exit 3 and nothing changes. Rate limits alone work on every kernel.
    """
    if not target.startswith(("node/", "ext/")):
        raise InvalidInput(f"TARGET {target!r}: link impairs a node's or an external's underlay link: node/NAME or ext/NAME")
    given = any(x is not None for x in (delay, jitter, loss, rate))
    if clear and given:
        raise InvalidInput("--clear takes no other option")
    imp = tc.Impairment() if clear else tc.parse(delay, jitter, loss, rate)
    require_root("link")
    _, topo = running_lab(lab_name)
    ep = resolve(topo, target, role="TARGET")
    run.require("tc", "iproute2")
    if not clear and not given:
        shown = current(ep.netns)
        if as_json:
            output.emit_json({"target": target, "qdisc": shown})
        else:
            output.say(f"{target} eth0: {shown or 'no qdisc'}")
        return
    for argv in tc.commands(imp):
        p = _tc(ep.netns, argv)
        if p.returncode == 0:
            continue
        if imp.empty and ("No such file" in p.stderr or "Cannot delete qdisc with handle of zero" in p.stderr):
            continue  # nothing to clear
        if imp.needs_netem and ("unknown" in p.stderr.lower() or "No such file" in p.stderr):
            raise HostLacks(
                f"delay, jitter and loss need the kernel's netem (sch_netem), which this kernel lacks: {p.stderr.strip()}",
                hint="--rate alone works here (tbf); for netem use a stock distribution kernel: scripts/vm-test.sh",
            )
        raise KernelError(f"`ip netns exec {ep.netns} tc {' '.join(argv)}` failed: {p.stderr.strip()}")
    shown = current(ep.netns)
    if as_json:
        output.emit_json({"target": target, "impairment": imp.describe(), "qdisc": shown})
        return
    output.say(f"{target}: {'impairment cleared' if imp.empty else imp.describe()}  (tc: {shown})")
