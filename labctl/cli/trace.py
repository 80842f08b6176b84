"""labctl trace FROM TO: a probe, and every netfilter rule the kernel says it hit."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_option, responder_pid, running_lab, still_up
from labctl.cli.probe import VERDICTS
from labctl.errors import CheckFailed, InvalidInput


@cli.command()
@lab_option
@click.argument("src", metavar="FROM")
@click.argument("dst", metavar="TO")
@click.option("--port", type=click.IntRange(1, 65535), help="Destination port (default: the target's first port of the protocol).")
@click.option("--proto", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)
@click.option("--timeout", type=click.FloatRange(0.05, 30), default=1.0, show_default=True, help="Seconds to wait for an answer.")
@click.option("--via", metavar="node/NAME", help="For svc/NS/NAME@nodeport: the node whose address is used.")
@click.option("--expect", type=click.Choice(VERDICTS), help="Exit 1 unless the verdict is this.")
@json_option
def trace(lab_name, src, dst, port, proto, timeout, via, expect, as_json) -> None:
    """Send one probe with the kernel's tracing on for that flow only and print its
    path hop by hop, namespace by namespace: the sender's route, the bridge port,
    conntrack's entry, every netfilter rule it hit (as iptables-save or nft list
    ruleset prints it, in the iptables, nftables and ipvs modes), the DNAT and
    masquerade rewrites, IPVS's connection, the route the kernel chose, VXLAN
    encapsulation and decapsulation with the outer addresses, delivery; then the
    reply's. The trace rules and monitors are gone when it ends."""
    from labctl.model.targets import resolve

    require_root("trace")
    handle, topo = running_lab(lab_name)
    a = resolve(topo, src, role="FROM")
    b = resolve(topo, dst, role="TO", via=via)
    out = traced(handle, topo, a, b, port, proto, timeout)
    if as_json:
        output.emit_json(out)
    else:
        say(out, b, port)
    if expect and out["verdict"] != expect:
        raise CheckFailed(f"expected {expect}, got {out['verdict']}")


def traced(handle, topo, a, b, port, proto, timeout) -> dict:
    """One trace from resolved targets: the probe's keys, hops and reply_hops."""
    from labctl import registry
    from labctl.model.targets import default_port
    from labctl.probe import trace as T

    mode = registry.proxy_mode(topo.lab.proxy_mode)
    if mode.tracer is None:
        raise InvalidInput(f"trace does not follow proxyMode {topo.lab.proxy_mode} yet (lab {topo.lab.name})")
    if a.netns is None:
        raise InvalidInput(f"FROM {a.label!r} is an address: trace sends from a pod, a node or an external")
    if ":" in (b.ip or ""):
        raise InvalidInput(
            f"TO {b.label!r} is an IPv6 address ({b.ip}): trace follows IPv4 flows (its marks are IPv4 u32 words)",
            hint="`labctl probe` it; in a dual-stack lab, trace the same pair over IPv4",
        )
    port = port or default_port(b, proto)
    if port is None:
        raise InvalidInput(f"TO {b.label!r} declares no {proto} port: give --port")
    before = responder_pid(handle)
    result, request, reply = T.run(
        handle, topo, a, b, proto, port, timeout, mode.tracer, still_up=lambda: still_up(handle, topo, before), ipvs=mode.traces_ipvs, bpf=mode.bpf_maps
    )
    return {**result.to_dict(), "hops": request, "reply_hops": reply}


def say(out: dict, b, port) -> None:
    """The text form: a line per hop, grouped by namespace, request then reply."""
    from labctl.probe import trace as T

    where = f"{b.ip}:{out.get('port') or port}/{out.get('proto')}"
    output.say(
        f"{out.get('from', '')} -> {b.label if b.label != b.ip else where} ({where}): [bold]{out['verdict']}[/bold]"
        + (f" (served by {out['served_by']})" if out.get("served_by") else "")
    )
    for title, group in (("request", out["hops"]), ("reply", out["reply_hops"])):
        if not group:
            continue
        output.say(f"{title}:")
        last = None
        for h in group:
            if h["netns"] != last:
                output.say(f"  {h['netns']}")
                last = h["netns"]
            output.say(output.escaped(T.hop_line(h)))
