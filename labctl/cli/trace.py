"""labctl trace FROM TO: a probe, and every netfilter rule the kernel says it hit."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_option, responder_pid, running_lab, still_up
from labctl.errors import InvalidInput


@cli.command()
@lab_option
@click.argument("src", metavar="FROM")
@click.argument("dst", metavar="TO")
@click.option("--port", type=click.IntRange(1, 65535), help="Destination port (default: the target's first port of the protocol).")
@click.option("--proto", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)
@click.option("--timeout", type=click.FloatRange(0.05, 30), default=1.0, show_default=True, help="Seconds to wait for an answer.")
@click.option("--via", metavar="node/NAME", help="For svc/NS/NAME@nodeport: the node whose address is used.")
@json_option
def trace(lab_name, src, dst, port, proto, timeout, via, as_json) -> None:
    """Send one probe with the kernel's netfilter tracing on for that flow only, in
    the nodes it may cross, and print every rule it hit (as iptables-save writes
    them), the address rewrites (DNAT, masquerade) and the reply's rules. Proxy
    mode iptables; the trace rules and monitors are gone when it ends."""
    from labctl import registry
    from labctl.model.targets import default_port, resolve
    from labctl.probe import trace as T

    require_root("trace")
    handle, topo = running_lab(lab_name)
    tracer = registry.proxy_mode(topo.lab.proxy_mode).tracer
    if tracer is None:
        raise InvalidInput(
            f"trace follows the iptables and nftables modes' rules so far; lab {topo.lab.name} runs proxyMode {topo.lab.proxy_mode}",
            hint="labctl explain FROM TO shows the rules this mode has for the flow",
        )
    a = resolve(topo, src, role="FROM")
    b = resolve(topo, dst, role="TO", via=via)
    if a.netns is None:
        raise InvalidInput(f"FROM {src!r} is an address: trace sends from a pod, a node or an external")
    port = port or default_port(b, proto)
    if port is None:
        raise InvalidInput(f"TO {dst!r} declares no {proto} port: give --port")
    before = responder_pid(handle)
    result, request, reply = T.run(handle, topo, a, b, proto, port, timeout, tracer, still_up=lambda: still_up(handle, topo, before))
    out = {**result.to_dict(), "hops": request, "reply_hops": reply}
    if as_json:
        output.emit_json(out)
        return
    where = f"{b.ip}:{port}/{proto}"
    output.say(
        f"{a.label} -> {b.label if b.label != b.ip else where} ({where}): [bold]{result.verdict}[/bold]"
        + (f" (served by {result.served_by})" if result.served_by else "")
    )
    for title, group in (("request", request), ("reply", reply)):
        if not group:
            continue
        output.say(f"{title}:")
        last = None
        for h in group:
            if h["netns"] != last:
                output.say(f"  {h['netns']}")
                last = h["netns"]
            where = "" if h["rule"].startswith(("-A ", "(policy")) else f"{h['chain']}: "
            output.say(f"    {h['table']:<6} " + output.escaped(f"{where}{h['rule']}   [{h['verdict']}]"))
            if h.get("nat") and h["nat"].get("after"):
                output.say(f"           {h['nat']['field']} {h['nat']['before']} -> {h['nat']['after']}")
