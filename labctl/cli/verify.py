"""labctl verify: expected reachability (Kubernetes semantics) against probes.
labctl explain FROM TO: which policies decide a connection, and where in the kernel."""

from __future__ import annotations

import os
import time

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import family_option, family_targets, http_request_options, json_option, lab_option, responder_pid, running_lab, still_up
from labctl.errors import CheckFailed, InvalidInput
from labctl.model.family import hostport


@cli.command()
@lab_option
@click.option("--timeout", type=click.FloatRange(0.05, 10), default=1.0, show_default=True, help="Seconds to wait for each answer.")
@click.option("--workers", type=click.IntRange(1, 256), default=32, show_default=True, help="Probes in flight at once.")
@click.option("--family", "fam", type=click.Choice(["4", "6"]), help="In a dual-stack lab, probe over this family alone (default: both).")
@json_option
def verify(lab_name, timeout, workers, fam, as_json) -> None:
    """Probe every pod pair on every served port and protocol, plus the Lab's
    `expect:` lines, and compare with what NetworkPolicy semantics allow.

    \b
    Tables: rows are sources, columns destinations; "." allowed, "X" denied
    (as the kernel did); "!" marks a mismatch with the expected verdict.
    A dual-stack lab is verified over both families (tables per family).
    Exit 1 on any mismatch.
    """
    from labctl.model import family
    from labctl.policy import verify as V

    require_root("verify")
    handle, topo = running_lab(lab_name)
    if fam and int(fam) not in family.lab_families(topo.lab):
        raise InvalidInput(f"--family {fam}: lab {topo.lab.name} has no IPv{fam} family (spec.ipFamilies: {', '.join(topo.lab.ip_families)})")
    t0 = time.monotonic()
    before = responder_pid(handle)
    done = V.run(topo, V.cases(topo, int(fam) if fam else None), timeout=timeout, workers=workers)
    still_up(handle, topo, before)
    seconds = time.monotonic() - t0
    bad = [c for c in done if c.mismatch]
    if bad and handle.applied() != topo:  # probes of a lab another command changed meanwhile: no verdict on either
        from labctl.errors import NoSuchLab

        raise NoSuchLab(
            f"lab {handle.name} changed while verify ran ({len(bad)} probes disagree with the topology it started from)",
            hint="run `labctl verify` again",
        )
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
                f"[bold]mismatch[/bold]: {c.src} -> {c.dst}:{c.port}/{c.protocol.lower()}{f' (IPv{c.family})' if c.family else ''} expected "
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
@click.option(
    "--http",
    "http_path",
    is_flag=False,
    flag_value="/",
    default=None,
    metavar="[PATH]",
    help="TO is an L7 proxy (ingress, gw/NS/NAME): explain an HTTP request for PATH (default /), both hops.",
)
@http_request_options
@click.option("--https", is_flag=True, help="--http: over TLS (hop 1 to port 443).")
@click.option("--trace", "with_trace", is_flag=True, help="Also trace the flow in the kernel (labctl trace) and say where the two disagree (root).")
@family_option
@json_option
def explain(lab_name, src, dst, port, proto, http_path, http_host, http_method, http_headers, https, with_trace, fam, as_json) -> None:
    """Which policies select FROM (egress) and TO (ingress), which rule allows
    the connection or why it is denied, and the kernel chains that decide it.
    TO may be a service (svc/NS/NAME): where FROM's node decides it, and the
    verdict for each endpoint (policies see the pod after the DNAT).
    With --http, TO is an L7 proxy (`ingress`, gw/NS/NAME): hop 1 to the
    proxy's Service, the route its nginx.conf picks, and hop 2 from each proxy
    pod to the backend's endpoints.
    Needs no root: it reads the applied topology. With --trace (root), a probe
    of the same flow is traced in the kernel and shown beside it, with the
    places where the semantics and the kernel's path disagree."""
    from labctl.model.targets import resolve
    from labctl.policy.explain import explain as why
    from labctl.policy.explain import explain_http

    handle, topo = running_lab(lab_name)
    if http_path is not None:
        headers = _headers(http_headers)
        r = explain_http(topo, resolve(topo, src, role="FROM"), resolve(topo, dst, role="TO"), http_path, http_host, https, http_method, headers, port)
        if as_json:
            output.emit_json({k: v for k, v in r.items() if k != "ip"})
        else:
            _say_http(r)
        return
    a, b, topo = family_targets(topo, src, dst, fam)  # --family 6 / an IPv6 address: that family's view
    r = why(topo, a, b, port, proto)
    if with_trace:
        from labctl.probe.trace import agreement

        r["trace"] = _trace(handle, topo, a, b, r["port"], proto)
        d = agreement(r, r["trace"])
        r["trace"].update(agrees=d is None, disagreement=d)
    if "service" not in r and os.geteuid() == 0:  # the semantics, and whether the kernel can route it at all
        from labctl.probe.routes import route_gap

        gap = route_gap(topo, a, b.ip)
        if gap:
            r["routeMissing"] = gap
    if as_json:
        output.emit_json({k: v for k, v in r.items() if k != "ip"} if "service" in r else _pod_json(r))
        return
    _say_explain(r)
    if with_trace:
        from labctl.cli.trace import say

        output.say("the kernel's path (labctl trace):")
        say(r["trace"], b, r["port"])
        t = r["trace"]
        output.say("[bold]the semantics and the kernel agree[/bold]" if t["agrees"] else f"[bold]they disagree[/bold]: {output.escaped(t['disagreement'])}")


def _trace(handle, topo, a, b, port, proto) -> dict:
    from labctl.cli import require_root
    from labctl.cli.trace import traced

    require_root("explain --trace")
    if proto not in ("tcp", "udp"):
        raise InvalidInput(f"--trace follows tcp and udp flows, not {proto}")
    return traced(handle, topo, a, b, port, proto, 1.0)


def _say_explain(r: dict) -> None:
    verdict = "[bold]allowed[/bold]" if r["allowed"] else "[bold]denied[/bold]"
    if "service" in r:
        svc = r["service"]
        output.say(
            output.escaped(f"{r['from']} -> {r['to']} ({hostport(r['ip'], r['port'])}/{r['proto']}), decided on {svc['node']} by {_decider(svc['proxyMode'])}:")
        )
        for line in svc["kernel"]:
            output.say(f"  kernel: {line}")
        if svc.get("topology"):
            output.say(f"  topology: {svc['topology']}")
        if not svc["endpoints"]:
            output.say("  no endpoint: the connection is refused")
        for v in svc["endpoints"]:
            verdict = "[bold]allowed[/bold]" if v["allowed"] else "[bold]denied[/bold]"
            output.say(f"  -> {v['endpoint'] or v['address']} ({v['address']}): {verdict}: {v['explanation'][0]}; {v['explanation'][1]}")
        return
    head = f"{r['from']} -> {r['to']} ({hostport(r['ip'], r['port'])}/{r['proto']})"
    output.say(f"{output.escaped(head)}: {verdict}")
    if r.get("routeMissing"):
        output.say(f"  [bold]but[/bold] {r['routeMissing']}")
    for direction, label in (("egress", r["from"]), ("ingress", r["to"])):
        side = r[direction]
        where = f" on {side['node']}" if side["node"] else ""
        output.say(f"  {direction} of {label}{where}: {side['explanation']}")
        for line in side["kernel"]:
            output.say(f"    kernel: {line}")


def _decider(mode: str) -> str:
    from labctl import registry

    return registry.proxy_mode(mode).decider.format(mode=mode)


def _pod_json(r: dict) -> dict:
    """explain --json to a pod: the contract's keys (a side's node is for the text)."""
    return {
        **{k: v for k, v in r.items() if k not in ("ip", "egress", "ingress")},
        **{d: {k: v for k, v in r[d].items() if k != "node"} for d in ("egress", "ingress")},
    }


def _headers(given: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for h in given:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{h!r} is not 'Name: value'", param_hint="-H")
        out.setdefault(name.strip().lower(), value.strip())
    return out


def _say_http(r: dict) -> None:
    svc, http, route = r["service"], r["http"], r["http"]["route"]
    verdict = "[bold]served[/bold]" if r["allowed"] else "[bold]not served[/bold]"
    head = f"{r['from']} -> {r['to']} ({hostport(r['ip'], r['port'])}) http://{http['host']}{http['path']}"
    output.say(f"{output.escaped(head)}: {verdict}")
    output.say(f"hop 1: {r['from']} -> {r['to']}, decided on {svc['node']} by {_decider(svc['proxyMode'])}:")
    for line in svc["kernel"]:
        output.say(f"  kernel: {line}")
    for v in svc["endpoints"]:
        verdict = "[bold]allowed[/bold]" if v["allowed"] else "[bold]denied[/bold]"
        output.say(f"  -> proxy {v['endpoint'] or v['address']} ({v['address']}): {verdict}: {v['explanation'][0]}; {v['explanation'][1]}")
    output.say(f"route: server {route['server']}, {route['location'] or 'no location matches'}")
    if route["status"] is not None:
        output.say(f"  the proxy answers {route['status']} itself: {route['backend'] or 'nothing matches'}")
        return
    output.say(f"  -> {route['backend']}")
    for hop in http["hops"]:
        output.say(f"hop 2: from {hop['proxy']} ({hop['ip']}), a new connection:")
        for v in hop["endpoints"]:
            verdict = "[bold]allowed[/bold]" if v["allowed"] else "[bold]denied[/bold] (the proxy answers 502)"
            output.say(f"  -> {v['endpoint'] or v['address']} ({v['address']}): {verdict}: {v['explanation'][0]}; {v['explanation'][1]}")
