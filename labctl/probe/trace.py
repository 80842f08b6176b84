"""labctl trace: one probe with the kernel's own netfilter tracing switched on for
that flow only, in the nodes it may cross (iptables mode, first part).

In each node, two rules in the raw table (PREROUTING and OUTPUT) mark the
probe's packets (its source port one way, its destination port the other) with
TRACE; `xtables-monitor --trace`, run in the node as a recorded process of the
lab, prints every rule each marked packet then hits, as `iptables-save` writes
rules. The rules and monitors go when the trace ends. After a crash: the
monitors are recorded processes (the next change of the lab stops them, as
`down` does), the rules carry the comment "labctl trace" (the next trace
removes them first; `down` takes the namespaces with them).

Parsing is pure (`parse`): PACKET lines start a packet's evaluation (its
addresses), TRACE lines name table, chain, rule and verdict. A rule that
rewrites the destination (DNAT) or the source (MASQUERADE, SNAT) is shown with
the addresses before and after, from the next packet line of the same flow.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from typing import Any

COMMENT = "labctl trace"
_PACKET = re.compile(r"^PACKET: \d+ (?P<id>[0-9a-f]+) (?P<rest>.*)$")
_TRACE = re.compile(r"^\s*TRACE: \d+ (?P<id>[0-9a-f]+) (?P<table>\w+):(?P<chain>[^:]+):(?P<kind>rule|return|policy):(?P<tail>\S*)\s*(?P<rule>.*)$")


def rules(proto: str, sport: int) -> list[list[str]]:
    """iptables arguments marking the probe's flow, both ways, in the raw table. For
    TCP only the SYN and the SYN-ACK: the probe is that exchange (what follows, the
    prober's reset, is not part of the path)."""
    out = []
    for chain in ("PREROUTING", "OUTPUT"):
        for flag, tcp_flags in (("--sport", "SYN"), ("--dport", "SYN,ACK")):
            match = ["-m", proto, flag, str(sport)] + (["--tcp-flags", "SYN,ACK", tcp_flags] if proto == "tcp" else [])
            out.append(["-t", "raw", "-I", chain, "-p", proto, *match, "-m", "comment", "--comment", COMMENT, "-j", "TRACE"])
    return out


def outcome(hops: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(the address the request was sent to after every DNAT, the source the far
    end saw after every SNAT/MASQUERADE), from the request's NAT hops."""
    dst = src = None
    for h in hops:
        nat = h.get("nat") or {}
        if nat.get("after"):
            if nat["field"] == "dst":
                dst = nat["after"]
            else:
                src = nat["after"]
    return dst, src


def _fields(rest: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)


def _addr(f: dict[str, str], field: str) -> str:
    return f"{f.get('DST')}:{f.get('DPORT')}" if field == "dst" else f"{f.get('SRC')}:{f.get('SPORT')}"


class _Flow:
    """One namespace's trace as it is read: which way each packet goes (the probe's
    source port says), and the NAT rules waiting for the next packet line of their
    direction to show what they rewrote. Both monitors' parsers fill it."""

    def __init__(self, where: str, sport: int):
        self.where, self.sport = where, str(sport)
        self.current = "other"
        self.last: dict[str, dict[str, str]] = {}  # direction -> the fields of its last packet line
        self.pending: list[dict[str, Any]] = []
        self.hops: list[dict[str, Any]] = []

    def packet(self, f: dict[str, str]) -> None:
        self.current = "request" if f.get("SPORT") == self.sport else "reply" if f.get("DPORT") == self.sport else "other"
        for hop in [h for h in self.pending if h["direction"] == self.current]:
            after = _addr(f, hop["nat"]["field"])
            if after != hop["nat"]["before"]:
                hop["nat"]["after"] = after
            self.pending.remove(hop)
        self.last[self.current] = f

    def hop(self, table: str, chain: str, rule: str, verdict: str, nat: str | None) -> None:
        """`nat`: "dst" or "src" when the rule rewrites that side."""
        hop: dict[str, Any] = {
            "netns": self.where,
            "kind": "netfilter",
            "direction": self.current,
            "table": table,
            "chain": chain,
            "rule": rule,
            "verdict": verdict,
        }
        if nat:
            hop["nat"] = {"field": nat, "before": _addr(self.last.get(self.current) or {}, nat), "after": None}
            self.pending.append(hop)
        self.hops.append(hop)


def parse(text: str, where: str, sport: int) -> list[dict[str, Any]]:
    """Hops of one namespace's xtables-monitor output, in order. Each: netns, kind
    ("netfilter"), direction ("request" | "reply"), table, chain, rule (as
    iptables-save prints it, "-A CHAIN ..."), verdict; NAT rules also "nat"."""
    flow = _Flow(where, sport)
    for line in text.splitlines():
        m = _PACKET.match(line)
        if m:
            flow.packet(_fields(m.group("rest")))
            continue
        m = _TRACE.match(line)
        # the raw table holds nothing but the trace's own marking; "return" lines repeat the caller
        if not m or m.group("table") == "raw" or m.group("kind") == "return":
            continue
        rule = re.sub(r"^-4 -t \w+ ", "", m.group("rule").strip())
        tail = m.group("tail")
        verdict = tail if m.group("kind") == "policy" else tail.partition(":")[2]
        verdict = "RETURN" if verdict == "0xfffffffb" else verdict
        nat = next((field for target, field in (("DNAT", "dst"), ("SNAT", "src"), ("MASQUERADE", "src")) if f"-j {target}" in rule), None)
        flow.hop(m.group("table"), m.group("chain"), rule or f"(policy of {m.group('chain')})", verdict, nat)
    return flow.hops


def iptables(ns: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "iptables", *args], capture_output=True, text=True, check=check)


def clear(ns: str) -> None:
    """Remove every trace rule of a node (this trace's, or one a crash left)."""
    listing = iptables(ns, ["-t", "raw", "-S"], check=False).stdout
    for line in listing.splitlines():
        if f'--comment "{COMMENT}"' in line and line.startswith("-A "):
            iptables(ns, ["-t", "raw", "-D", *shlex.split(line)[1:]], check=False)


def settle(paths, quiet: float = 0.15, limit: float = 1.5) -> None:
    """Wait until the monitors' logs stop growing for `quiet` seconds (bounded)."""
    deadline = time.monotonic() + limit
    sizes = None
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        now = [p.stat().st_size if p.exists() else 0 for p in paths]
        if now != sizes:
            sizes, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            return
        time.sleep(0.02)


# -- nftables mode: kube-proxy's own table, traced with `nft monitor trace` ------------

NFT_TABLE = "labctl-trace"
_NFT = re.compile(r"^trace id (?P<id>[0-9a-f]+) ip (?P<table>\S+) (?P<chain>\S+) (?P<what>packet|rule|policy|verdict)\b:?\s*(?P<rest>.*)$")
_COUNTER = re.compile(r"\s*counter packets \d+ bytes \d+")


def nft_rules(proto: str, sport: int) -> str:
    """`nft -f` input: a table of labctl's own whose chains, ahead of every other
    (priority -350), set nftrace on the probe's packets (for TCP its SYN and SYN-ACK)."""
    if proto == "tcp":
        request = f"tcp sport {sport} tcp flags & (syn|ack) == syn"
        reply = f"tcp dport {sport} tcp flags & (syn|ack) == syn|ack"
    else:
        request, reply = f"{proto} sport {sport}", f"{proto} dport {sport}"
    chains = []
    for name, hook in (("pre", "prerouting"), ("out", "output")):
        chains.append(
            f"  chain {name} {{\n    type filter hook {hook} priority -350; policy accept;\n"
            f'    {request} meta nftrace set 1 comment "{COMMENT}"\n    {reply} meta nftrace set 1 comment "{COMMENT}"\n  }}'
        )
    return f"table ip {NFT_TABLE} {{\n" + "\n".join(chains) + "\n}\n"


def normal_rule(text: str) -> str:
    """A rule as nft prints it, its counters' values left out (they move)."""
    return re.sub(r"\s+", " ", _COUNTER.sub(" counter", text)).strip()


_NFT_FIELDS = {
    "SRC": re.compile(r"ip saddr (\S+)"),
    "DST": re.compile(r"ip daddr (\S+)"),
    "SPORT": re.compile(r"(?:tcp|udp) sport (\d+)"),
    "DPORT": re.compile(r"(?:tcp|udp) dport (\d+)"),
}


def _nft_fields(rest: str) -> dict[str, str]:
    return {k: m.group(1) for k, rx in _NFT_FIELDS.items() if (m := rx.search(rest))}


def parse_nft(text: str, where: str, sport: int) -> list[dict[str, Any]]:
    """Hops of one namespace's `nft monitor trace` output (the shape of parse())."""
    flow = _Flow(where, sport)
    for line in text.splitlines():
        m = _NFT.match(line.strip())
        if not m or m.group("table") == NFT_TABLE:
            continue
        what, rest = m.group("what"), m.group("rest")
        if what == "packet":
            flow.packet(_nft_fields(rest))
        elif what == "policy":
            flow.hop(m.group("table"), m.group("chain"), f"(policy of {m.group('chain')})", rest.strip().upper(), None)
        elif what == "rule":
            body, _, tail = rest.rpartition(" (verdict ")
            rule = normal_rule(body)
            nat = next((field for word, field in ((" dnat ", "dst"), (" snat ", "src"), (" masquerade", "src")) if word in f" {rule}"), None)
            flow.hop(m.group("table"), m.group("chain"), rule, tail.rstrip(")").strip(), nat)
    return flow.hops


def clear_nft(ns: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", NFT_TABLE], capture_output=True)


# -- one trace, end to end (the side effects) ---------------------------------------------


def run(handle, topo, a, b, proto: str, port: int, timeout: float, tracer: str, still_up=lambda: None):
    """Mark the flow and start a monitor in every node, send the probe, collect and
    parse what the monitors saw, and take everything away again. Returns (the probe's
    result, request hops, reply hops); for an answered TCP probe, who served and whom
    it saw come from the kernel's own rewrites of the traced SYN. `still_up()`
    raises when the lab went down while the probe ran."""
    from labctl.kernel import netns, procs
    from labctl.model import names
    from labctl.probe import ports, scapy_probe
    from labctl.probe.routes import node_of

    nodes = [n.name for n in topo.lab.nodes]
    spaces = {n: names.node_netns(topo.lab.name, n) for n in nodes}
    sport = ports.reserve(topo.lab.name)
    logs = {n: handle.dir.logs / f"trace-{n}.log" for n in nodes}
    keys = {n: f"trace:node/{n}" for n in nodes}
    pids = []
    try:
        for n, ns in spaces.items():
            clear(ns)
            clear_nft(ns)
            if tracer == "nft":
                subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=nft_rules(proto, sport), text=True, check=True, capture_output=True)
                monitor = ["nft", "monitor", "trace"]
            else:
                for args in rules(proto, sport):
                    iptables(ns, args)
                monitor = ["xtables-monitor", "--trace", "-4"]
            logs[n].write_text("")
            pids.append(procs.spawn(monitor, key=keys[n], journal=handle.journal, log=logs[n], netns=ns))
        _wait_listening(pids)
        result = scapy_probe.probe(a.label, a.netns, b.ip, b.label, proto, port, timeout, fetch=False, sport=sport)
        settle(list(logs.values()))
        still_up()
    finally:
        procs.stop(pids)
        present = set(netns.listed())
        for n, ns in spaces.items():
            handle.journal.release_proc(keys[n])
            if ns in present:
                clear(ns)
                clear_nft(ns)
    first = node_of(topo, a)
    order = ([first.name] if first is not None else []) + [n for n in nodes if first is None or n != first.name]
    read = parse_nft if tracer == "nft" else parse
    hops = []
    for n in order:
        hops += read(logs[n].read_text(), f"node/{n}", sport)
        logs[n].unlink(missing_ok=True)
    request = [h for h in hops if h["direction"] == "request"]
    reply = [h for h in hops if h["direction"] == "reply"]
    if proto == "tcp" and result.verdict == "open":
        dst, seen = outcome(request)
        ip = (dst or f"{b.ip}:").split(":")[0]
        result.served_by = next((p.key for p in topo.pods if p.ip == ip), None) or next((f"ext/{e.name}" for e in topo.lab.externals if e.ip == ip), ip)
        result.client_ip_seen = (seen or f"{result.src_ip}:").split(":")[0]
    return result, request, reply


def _wait_listening(pids: list[int], limit: float = 3.0) -> None:
    """Each monitor has its netlink socket open (it listens from then on)."""
    import os

    from labctl.errors import LabError

    deadline = time.monotonic() + limit
    for pid in pids:
        while True:
            try:
                if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd")):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"the trace monitor (pid {pid}) did not start listening within {limit:.0f} s")
            time.sleep(0.01)
