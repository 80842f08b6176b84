"""labctl probe FROM TO: one probe on the real datapath."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_option, responder_pid, running_lab, still_up
from labctl.errors import CheckFailed, InvalidInput
from labctl.model.targets import default_port, resolve
from labctl.probe import scapy_probe

VERDICTS = ("open", "refused", "blocked", "filtered")


@cli.command()
@lab_option
@click.argument("src", metavar="FROM")
@click.argument("dst", metavar="TO")
@click.option("--port", type=click.IntRange(1, 65535), help="Destination port (default: the pod's first port of the protocol).")
@click.option("--proto", type=click.Choice(["tcp", "udp", "icmp"]), default="tcp", show_default=True)
@click.option("--timeout", type=click.FloatRange(0.05, 60), default=1.0, show_default=True, help="Seconds to wait for an answer.")
@click.option("--via", metavar="node/NAME", help="For svc/NS/NAME@nodeport: the node whose address is probed (default: the first).")
@click.option("--expect", type=click.Choice(VERDICTS), help="Exit 1 unless the verdict is this.")
@json_option
def probe(lab_name, src, dst, port, proto, timeout, via, expect, as_json) -> None:
    """Send one TCP SYN, UDP datagram or ICMP echo from FROM to TO and report
    what came back: open, refused (RST / port unreachable), blocked (ICMP
    administratively prohibited) or filtered (nothing).

    \b
    FROM: NS/POD, POD, node/NAME, ext/NAME
    TO:   the same, an IPv4 address, svc/NS/NAME (its ClusterIP),
          svc/NS/NAME@nodeport [--via node/NAME], svc/NS/NAME@lb
    """
    require_root("probe")
    handle, topo = running_lab(lab_name)
    a = resolve(topo, src, role="FROM")
    b = resolve(topo, dst, role="TO", via=via)
    if proto != "icmp":
        port = port or default_port(b, proto)
        if port is None:
            raise InvalidInput(f"TO {dst!r} declares no {proto} port: give --port")
    else:
        port = None
    from labctl.probe import ports

    before = responder_pid(handle)
    result = scapy_probe.probe(a.label, a.netns, b.ip, b.label, proto, port, timeout, sport=ports.reserve(topo.lab.name))
    still_up(handle, topo, before)
    if as_json:
        output.emit_json(result.to_dict())
    else:
        where = f"{b.ip}:{port}/{proto}" if port else f"{b.ip} icmp"
        target = f"{b.label} ({where})" if b.label != b.ip else where
        line = f"{a.label} -> {target}: [bold]{result.verdict}[/bold]"
        extra = []
        if result.served_by:
            extra.append(f"served by {result.served_by}")
        if result.client_ip_seen:
            extra.append(f"client seen as {result.client_ip_seen}")
        if result.rtt_ms is not None:
            extra.append(f"rtt {result.rtt_ms:.2f} ms")
        if result.detail and not result.served_by:
            extra.append(result.detail)
        output.say(line + (f" ({', '.join(extra)})" if extra else ""))
    if expect and result.verdict != expect:
        raise CheckFailed(f"expected {expect}, got {result.verdict}")
