"""labctl link TARGET [--delay D] [--jitter J] [--loss L] [--rate R] | --clear"""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_option, running_lab
from labctl.errors import InvalidInput
from labctl.impair import tc
from labctl.impair.kernel import current, set_link
from labctl.kernel import run
from labctl.model.targets import resolve


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
    The topology file can set the same on a node or external (`link:`); the
    next `labctl up` puts back what the file says for links it changed.
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
    set_link(ep.netns, imp)
    shown = current(ep.netns)
    if as_json:
        output.emit_json({"target": target, "impairment": imp.describe(), "qdisc": shown})
        return
    output.say(f"{target}: {'impairment cleared' if imp.empty else imp.describe()}  (tc: {shown})")
