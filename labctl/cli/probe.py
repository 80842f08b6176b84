"""labctl probe FROM TO: one probe on the real datapath."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import family_option, family_targets, http_request_options, json_option, lab_option, responder_pid, running_lab, still_up
from labctl.errors import CheckFailed, InvalidInput
from labctl.model.family import hostport
from labctl.model.targets import default_port
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
@click.option(
    "--http",
    "http_path",
    is_flag=False,
    flag_value="/",
    default=None,
    metavar="[PATH]",
    help="Make one real HTTP/1.1 request (PATH default /) and report the answer and what the backend saw.",
)
@http_request_options
@click.option("--expect-status", type=click.IntRange(100, 599), help="--http: exit 1 unless the answer has this status.")
@click.option(
    "--https", is_flag=True, help="--http over TLS (port 443 unless --port): verified against the lab's CA, made anyway when that fails (as curl -k)."
)
@click.option("--sni", help="--https: the server name sent (default: --host).")
@click.option("--insecure", is_flag=True, help="--https: no verification at all (tls.verified is null).")
@family_option
@json_option
def probe(
    lab_name, src, dst, port, proto, timeout, via, expect, http_path, http_host, http_method, http_headers, expect_status, https, sni, insecure, fam, as_json
) -> None:
    """Send one TCP SYN, UDP datagram or ICMP echo from FROM to TO and report
    what came back: open, refused (RST / port unreachable), blocked (ICMP
    administratively prohibited) or filtered (nothing).

    \b
    FROM: NS/POD, POD, node/NAME, ext/NAME
    TO:   the same, an IPv4 or IPv6 address, svc/NS/NAME (its ClusterIP),
          svc/NS/NAME@nodeport [--via node/NAME], svc/NS/NAME@lb
    --family 6 probes over IPv6 in a dual-stack lab (pods', nodes' and
    services' IPv6 addresses).
    """
    require_root("probe")
    handle, topo = running_lab(lab_name)
    a, b, view = family_targets(topo, src, dst, fam, via)
    if http_path is not None or http_host or http_headers or expect_status or https:
        tls = None
        if https:
            from labctl import pki
            from labctl.probe.http import TlsOptions

            cafile = None if insecure else str(pki.ca(handle.dir.path / "ca", topo.lab.name).cert)
            tls = TlsOptions(sni=sni or http_host or b.ip, cafile=cafile)
            port = port or 443
        return _http(handle, topo, a, b, port, timeout, http_path or "/", http_host, http_method, http_headers, expect_status, expect, as_json, tls)
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
    if result.verdict == "filtered" or "unreachable" in (result.detail or ""):
        from labctl.probe.routes import route_gap

        result.detail = route_gap(view, a, b.ip) or result.detail  # the kernel's reason, when it has one
    if as_json:
        output.emit_json(result.to_dict())
    else:
        where = f"{hostport(b.ip, port)}/{proto}" if port else f"{b.ip} icmp"
        target = f"{b.label} ({where})" if b.label != b.ip else where
        line = f"{output.escaped(a.label)} -> {output.escaped(target)}: [bold]{result.verdict}[/bold]"
        extra = []
        if result.served_by:
            extra.append(f"served by {result.served_by}")
        if result.client_ip_seen:
            extra.append(f"client seen as {result.client_ip_seen}")
        if result.rtt_ms is not None:
            extra.append(f"rtt {result.rtt_ms:.2f} ms")
        if result.detail and not result.served_by:
            extra.append(result.detail)
        output.say(line + (f" ({output.escaped(', '.join(extra))})" if extra else ""))
    if expect and result.verdict != expect:
        raise CheckFailed(f"expected {expect}, got {result.verdict}")


def _http(handle, topo, a, b, port, timeout, path, host, method, raw_headers, expect_status, expect, as_json, tls=None) -> None:
    from labctl.probe import http

    headers = []
    for h in raw_headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise InvalidInput(f"-H {h!r}: a header is 'Name: value'")
        headers.append((name.strip(), value.strip()))
    if not path.startswith("/"):
        raise InvalidInput(f"--http {path!r}: a path starts with /")
    port = port or default_port(b, "tcp") or 80
    host = host or (f"[{b.ip}]" if ":" in b.ip else b.ip)
    before = responder_pid(handle)
    answer = http.probe(a.netns, b.ip, port, path, host, method, headers, timeout, tls)
    still_up(handle, topo, before)
    result = {
        "from": a.label,
        "to": b.ip,
        "target": b.label,
        "proto": "tcp",
        "port": port,
        "verdict": answer.verdict,
        "served_by": answer.served_by,
        "client_ip_seen": answer.client_ip_seen,
        "rtt_ms": answer.rtt_ms,
        "src_ip": answer.src_ip,
        "detail": answer.detail,
        "http": answer.http(),
    }
    if as_json:
        output.emit_json(result)
    else:
        scheme = "https" if tls else "http"
        line = f"{output.escaped(f'{a.label} -> {b.label} ({hostport(b.ip, port)}) {method} {scheme}://{host}{path}')}: [bold]{answer.status or answer.verdict}[/bold]"
        extra = [f"served by {answer.served_by}"] if answer.served_by else []
        if answer.location:
            extra.append(f"Location {answer.location}")
        if answer.detail:
            extra.append(answer.detail)
        output.say(line + (f" ({', '.join(extra)})" if extra else ""))
        if answer.tls is not None:
            t = answer.tls
            state = "verified" if t.get("verified") else ("not verified" if tls and tls.cafile else "not checked")
            output.say(
                f"  TLS: {state}; subject {t.get('subject')}, issuer {t.get('issuer')}, SAN {', '.join(t.get('san') or []) or '-'}"
                + (f"; {t['error']}" if t.get("error") else "")
            )
        saw = answer.backend_saw
        if saw:
            output.say(output.escaped(f"  the backend saw: {saw.get('method')} {saw.get('path')} Host {saw.get('host')}"))
            for name, values in saw.get("headers", {}).items():
                if name.startswith("x-"):
                    output.say(f"    {name}: {', '.join(values)}")
    if expect and answer.verdict != expect:
        raise CheckFailed(f"expected {expect}, got {answer.verdict}")
    if expect_status is not None and answer.status != expect_status:
        raise CheckFailed(f"expected HTTP {expect_status}, got {answer.status or answer.verdict}")
