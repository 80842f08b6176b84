"""labctl verify: expected reachability (Kubernetes semantics) against probes.
labctl explain FROM TO: which policies decide a connection, and where in the kernel."""

from __future__ import annotations

import time

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_option, responder_pid, running_lab, still_up
from labctl.errors import CheckFailed


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
    before = responder_pid(handle)
    done = V.run(topo, V.cases(topo), timeout=timeout, workers=workers)
    still_up(handle, topo, before)
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
            wanted = f"HTTP {c.http['status']}" if c.http else ("allowed" if c.expected else "denied")
            output.say(
                f"[bold]mismatch[/bold]: {c.src} -> {c.dst}:{c.port}/{c.protocol.lower()} expected "
                f"{wanted}, kernel {c.verdict}{f' ({c.detail})' if c.detail else ''}: {c.why}"
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
    from labctl.model.targets import resolve
    from labctl.policy.explain import explain as why

    _, topo = running_lab(lab_name)
    r = why(topo, resolve(topo, src, role="FROM"), resolve(topo, dst, role="TO"), port, proto)
    if as_json:
        output.emit_json({k: v for k, v in r.items() if k != "ip"} if "service" in r else _pod_json(r))
        return
    verdict = "[bold]allowed[/bold]" if r["allowed"] else "[bold]denied[/bold]"
    if "service" in r:
        svc = r["service"]
        output.say(f"{r['from']} -> {r['to']} ({r['ip']}:{r['port']}/{r['proto']}), decided on {svc['node']} by kube-proxy's {svc['proxyMode']} rules:")
        for line in svc["kernel"]:
            output.say(f"  kernel: {line}")
        if not svc["endpoints"]:
            output.say("  no endpoint: the connection is refused")
        for v in svc["endpoints"]:
            verdict = "[bold]allowed[/bold]" if v["allowed"] else "[bold]denied[/bold]"
            output.say(f"  -> {v['endpoint'] or v['address']} ({v['address']}): {verdict}: {v['explanation'][0]}; {v['explanation'][1]}")
        return
    output.say(f"{r['from']} -> {r['to']} ({r['ip']}:{r['port']}/{r['proto']}): {verdict}")
    for direction, label in (("egress", r["from"]), ("ingress", r["to"])):
        side = r[direction]
        where = f" on {side['node']}" if side["node"] else ""
        output.say(f"  {direction} of {label}{where}: {side['explanation']}")
        for line in side["kernel"]:
            output.say(f"    kernel: {line}")


def _pod_json(r: dict) -> dict:
    """explain --json to a pod: the contract's keys (a side's node is for the text)."""
    return {
        **{k: v for k, v in r.items() if k not in ("ip", "egress", "ingress")},
        **{d: {k: v for k, v in r[d].items() if k != "node"} for d in ("egress", "ingress")},
    }
