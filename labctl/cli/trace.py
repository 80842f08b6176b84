"""labctl trace FROM TO: a probe, and every netfilter rule the kernel says it hit."""

from __future__ import annotations

import os
import subprocess
import time

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_option, responder_pid, running_lab, still_up
from labctl.errors import InvalidInput, LabError


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
    from labctl.kernel import procs
    from labctl.model import names
    from labctl.model.targets import default_port, resolve
    from labctl.probe import ports, scapy_probe
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
    nodes = [n.name for n in topo.lab.nodes]
    sport = ports.reserve(topo.lab.name)
    logs = {n: handle.dir.logs / f"trace-{n}.log" for n in nodes}
    keys = {n: f"trace:node/{n}" for n in nodes}
    pids = []
    try:
        for n in nodes:
            ns = names.node_netns(topo.lab.name, n)
            T.clear(ns)
            T.clear_nft(ns)
            if tracer == "nft":
                subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=T.nft_rules(proto, sport), text=True, check=True, capture_output=True)
                monitor = ["nft", "monitor", "trace"]
            else:
                for args in T.rules(proto, sport):
                    T._iptables(ns, args)
                monitor = ["xtables-monitor", "--trace", "-4"]
            logs[n].write_text("")
            pids.append(procs.spawn(monitor, key=keys[n], journal=handle.journal, log=logs[n], netns=ns))
        _wait_listening(pids)
        before = responder_pid(handle)
        result = scapy_probe.probe(a.label, a.netns, b.ip, b.label, proto, port, timeout, fetch=False, sport=sport)
        T.settle(list(logs.values()))
        still_up(handle, topo, before)
    finally:
        procs.stop(pids)
        for n in nodes:
            handle.journal.release_proc(keys[n])
            ns = names.node_netns(topo.lab.name, n)
            if ns in _present():
                T.clear(ns)
                T.clear_nft(ns)
    hops = []
    for n in _order(topo, a, nodes):
        parse = T.parse_nft if tracer == "nft" else T.parse
        hops += parse(logs[n].read_text(), f"node/{n}", sport)
        logs[n].unlink(missing_ok=True)
    request = [h for h in hops if h["direction"] == "request"]
    reply = [h for h in hops if h["direction"] == "reply"]
    if proto == "tcp" and result.verdict == "open":
        # who answered, from the kernel's own rewrites (the probe's SYN is the traced connection)
        dst, seen = T.outcome(request)
        ip = (dst or f"{b.ip}:").split(":")[0]
        result.served_by = next((p.key for p in topo.pods if p.ip == ip), None) or next((f"ext/{e.name}" for e in topo.lab.externals if e.ip == ip), ip)
        result.client_ip_seen = (seen or f"{result.src_ip}:").split(":")[0]
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


def _present() -> set[str]:
    from labctl.kernel import netns

    return set(netns.listed())


def _wait_listening(pids: list[int], limit: float = 3.0) -> None:
    """Each monitor has its netlink socket open (it listens from then on)."""
    deadline = time.monotonic() + limit
    for pid in pids:
        while True:
            try:
                if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd")):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"xtables-monitor (pid {pid}) did not start listening within {limit:.0f} s")
            time.sleep(0.01)


def _order(topo, a, nodes: list[str]) -> list[str]:
    """The source's node first (the request starts there), then the others."""
    first = a.pod.node if a.pod is not None else a.label[5:] if a.label.startswith("node/") else None
    return ([first] if first in nodes else []) + [n for n in nodes if n != first]
