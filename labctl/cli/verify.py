"""labctl verify: expected reachability (Kubernetes semantics) against probes.
labctl explain FROM TO: which policies decide a connection, and where in the kernel."""

from __future__ import annotations

import time

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_option, running_lab, still_up
from labctl.errors import CheckFailed, InvalidInput
from labctl.model import names


@cli.command()
@lab_option
@click.option("--timeout", type=click.FloatRange(0.05, 10), default=1.0, show_default=True, help="Seconds to wait for each answer.")
@click.option("--workers", type=click.IntRange(1, 256), default=32, show_default=True, help="Probes in flight at once.")
@json_option
def verify(lab_name, timeout, workers, as_json) -> None:
    """Probe every pod pair on every served port and protocol, plus the Lab's
    `expect:` lines, and compare with what NetworkPolicy semantics allow.

    \b
    Tables: rows are sources, columns destinations; "." allowed, "X" denied
    (as the kernel did); "!" marks a mismatch with the expected verdict.
    Exit 1 on any mismatch.
    """
    from labctl.policy import verify as V

    require_root("verify")
    handle, topo = running_lab(lab_name)
    t0 = time.monotonic()
    done = V.run(topo, V.cases(topo), timeout=timeout, workers=workers)
    still_up(handle, topo)
    seconds = time.monotonic() - t0
    bad = [c for c in done if c.mismatch]
    if as_json:
        output.emit_json({"checked": len(done), "mismatches": [c.to_dict() for c in bad], "seconds": round(seconds, 3)})
    else:
        for title, cols, rows in V.tables(done):
            output.table(["FROM \\ TO " + title] + cols, [[src] + cells for src, cells in rows])
            output.say("")
        expects = [c for c in done if c.why.startswith("expect:")]
        for c in expects:
            state = "ok" if not c.mismatch else "MISMATCH"
            output.say(f"{state}: {c.why[8:]} (kernel: {c.verdict})")
        for c in bad:
            output.say(
                f"[bold]mismatch[/bold]: {c.src} -> {c.dst}:{c.port}/{c.protocol.lower()} expected "
                f"{'allowed' if c.expected else 'denied'}, kernel {c.verdict}{f' ({c.detail})' if c.detail else ''}: {c.why}"
            )
        output.say(f"{len(done)} checks in {seconds:.2f} s: {len(bad)} mismatch{'es' * (len(bad) != 1)}")
    if bad:
        raise CheckFailed(f"{len(bad)} of {len(done)} checks do not match Kubernetes semantics")


@cli.command()
@lab_option
@click.argument("src", metavar="FROM")
@click.argument("dst", metavar="TO")
@click.option("--port", type=click.IntRange(1, 65535), help="Destination port (default: the pod's first port of the protocol).")
@click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"]), default="tcp", show_default=True)
@json_option
def explain(lab_name, src, dst, port, proto, as_json) -> None:
    """Which policies select FROM (egress) and TO (ingress), which rule allows
    the connection or why it is denied, and the kernel chains that decide it.
    TO may be a service (svc/NS/NAME): where FROM's node decides it, and the
    verdict for each endpoint (policies see the pod after the DNAT).
    Needs no root: it reads the applied topology."""
    from labctl.model.targets import default_port, resolve
    from labctl.policy.engine import Engine
    from labctl.policy.rules import CHAIN, ISOLATED, policy_chain

    _, topo = running_lab(lab_name)
    a = resolve(topo, src, role="FROM")
    b = resolve(topo, dst, role="TO")
    if b.service is not None:
        _explain_service(topo, a, b, dst, port, proto, as_json)
        return
    port = port or default_port(b, proto if proto != "sctp" else "tcp")
    if port is None:
        raise InvalidInput(f"TO {dst!r} declares no {proto} port: give --port")
    engine = Engine(topo)
    d = engine.check(engine.party(a.ip), engine.party(b.ip), port, proto.upper())
    by_key = {p.key: p for p in topo.policies}

    def kernel(side, pod) -> list[str]:
        if pod is None or side.note or not side.isolated_by:
            return []
        node = names.node_netns(topo.lab.name, pod.node)
        chains = " | ".join(f"{k} -> {policy_chain(by_key[k], side.direction)}" for k in side.isolated_by)
        return [f"{node}: filter {CHAIN[side.direction]} (the pod is in ipset {ISOLATED[side.direction]}): {chains}"]

    sides = [(d.egress, a.pod, a.label), (d.ingress, b.pod, b.label)]
    if as_json:
        output.emit_json(
            {
                "from": a.label,
                "to": b.label,
                "port": port,
                "proto": proto,
                "allowed": d.allowed,
                "egress": {
                    "isolatedBy": d.egress.isolated_by,
                    "allowedBy": d.egress.allowed_by,
                    "explanation": d.egress.explain(),
                    "kernel": kernel(d.egress, a.pod),
                },
                "ingress": {
                    "isolatedBy": d.ingress.isolated_by,
                    "allowedBy": d.ingress.allowed_by,
                    "explanation": d.ingress.explain(),
                    "kernel": kernel(d.ingress, b.pod),
                },
            }
        )
        return
    verdict = "[bold]allowed[/bold]" if d.allowed else "[bold]denied[/bold]"
    output.say(f"{a.label} -> {b.label} ({b.ip}:{port}/{proto}): {verdict}")
    for side, pod, label in sides:
        where = f" on {pod.node}" if pod else ""
        output.say(f"  {side.direction} of {label}{where}: {side.explain()}")
        for line in kernel(side, pod):
            output.say(f"    kernel: {line}")


def _explain_service(topo, a, b, dst, port, proto, as_json) -> None:
    """explain FROM svc/NS/NAME: the proxy mode's path on FROM's node, then each endpoint's verdict."""
    from labctl import registry
    from labctl.model.targets import default_port
    from labctl.policy.engine import Engine
    from labctl.proxy.endpoints import service_ports

    port = port or default_port(b, proto)
    infos = [i for i in service_ports(topo, only={b.service.key}) if i.port.port == port and i.proto == proto]
    if not infos:
        raise InvalidInput(f"TO {dst!r} has no {proto} port {port}")
    info = infos[0]
    node = a.pod.node if a.pod else (a.label[5:] if a.label.startswith("node/") else topo.lab.nodes[0].name)
    kernel = registry.proxy_mode(topo.lab.proxy_mode).explain(info, node)
    engine = Engine(topo)
    verdicts = []
    for ep in info.endpoints:
        d = engine.check(engine.party(a.ip), engine.party(ep.ip), ep.port, proto.upper())
        verdicts.append({"endpoint": ep.pod, "address": ep.addr, "allowed": d.allowed, "explanation": (d.egress.explain(), d.ingress.explain())})
    if as_json:
        output.emit_json(
            {
                "from": a.label,
                "to": b.label,
                "port": port,
                "proto": proto,
                "allowed": any(v["allowed"] for v in verdicts),
                "service": {"node": node, "proxyMode": topo.lab.proxy_mode, "kernel": kernel, "endpoints": verdicts},
            }
        )
        return
    output.say(f"{a.label} -> {b.label} ({b.ip}:{port}/{proto}), decided on {node} by kube-proxy's {topo.lab.proxy_mode} rules:")
    for line in kernel:
        output.say(f"  kernel: {line}")
    if not verdicts:
        output.say("  no endpoint: the connection is refused")
    for v in verdicts:
        verdict = "[bold]allowed[/bold]" if v["allowed"] else "[bold]denied[/bold]"
        output.say(f"  -> {v['endpoint'] or v['address']} ({v['address']}): {verdict}: {v['explanation'][0]}; {v['explanation'][1]}")
