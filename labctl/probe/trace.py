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


def parse(text: str, where: str, sport: int) -> list[dict[str, Any]]:
    """Hops of one namespace's monitor output, in order. Each: netns, kind
    ("netfilter"), direction ("request" | "reply"), table, chain, rule (as
    iptables-save prints it, "-A CHAIN ..."), verdict; NAT rules also "nat"."""
    hops: list[dict[str, Any]] = []
    last_packet: dict[str, dict[str, str]] = {}  # direction -> the fields of its last packet line
    pending_nat: list[tuple[dict[str, Any], str]] = []
    for line in text.splitlines():
        m = _PACKET.match(line)
        if m:
            f = _fields(m.group("rest"))
            direction = "request" if f.get("SPORT") == str(sport) else "reply" if f.get("DPORT") == str(sport) else "other"
            for hop, field in [p for p in pending_nat if p[0]["direction"] == direction]:
                before = hop["nat"]["before"]
                after = f"{f.get('DST' if field == 'dst' else 'SRC')}:{f.get('DPORT' if field == 'dst' else 'SPORT')}"
                if after != before:
                    hop["nat"]["after"] = after
                pending_nat.remove((hop, field))
            last_packet[direction] = f
            last_packet["_current"] = {"direction": direction}
            continue
        m = _TRACE.match(line)
        if not m or m.group("table") == "raw":  # the raw table holds nothing but the trace's own marking
            continue
        direction = (last_packet.get("_current") or {}).get("direction", "other")
        kind, tail, rule = m.group("kind"), m.group("tail"), m.group("rule").strip()
        rule = re.sub(r"^-4 -t \w+ ", "", rule)
        verdict = tail.split(":", 1)[-1] if kind == "rule" else (tail or kind).upper() if kind == "policy" else "RETURN"
        if kind == "rule" and tail.startswith("0x"):
            verdict = tail.split(":", 1)[1] if ":" in tail else tail
        if verdict == "0xfffffffb":
            verdict = "RETURN"
        if kind == "return":
            continue
        hop: dict[str, Any] = {
            "netns": where,
            "kind": "netfilter",
            "direction": direction,
            "table": m.group("table"),
            "chain": m.group("chain"),
            "rule": rule or f"(policy of {m.group('chain')})",
            "verdict": verdict,
        }
        f = last_packet.get(direction) or {}
        for target, field in (("DNAT", "dst"), ("SNAT", "src"), ("MASQUERADE", "src")):
            if f"-j {target}" in rule:
                before = f"{f.get('DST' if field == 'dst' else 'SRC')}:{f.get('DPORT' if field == 'dst' else 'SPORT')}"
                hop["nat"] = {"field": field, "before": before, "after": None}
                pending_nat.append((hop, field))
        hops.append(hop)
    return hops


def _iptables(ns: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "iptables", *args], capture_output=True, text=True, check=check)


def clear(ns: str) -> None:
    """Remove every trace rule of a node (this trace's, or one a crash left)."""
    listing = _iptables(ns, ["-t", "raw", "-S"], check=False).stdout
    for line in listing.splitlines():
        if f'--comment "{COMMENT}"' in line and line.startswith("-A "):
            _iptables(ns, ["-t", "raw", "-D", *shlex.split(line)[1:]], check=False)


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
    hops: list[dict[str, Any]] = []
    last: dict[str, dict[str, str]] = {}
    current = "other"
    pending: list[dict[str, Any]] = []
    for line in text.splitlines():
        m = _NFT.match(line.strip())
        if not m or m.group("table") == NFT_TABLE:
            continue
        what, rest = m.group("what"), m.group("rest")
        if what == "packet":
            f = _nft_fields(rest)
            current = "request" if f.get("SPORT") == str(sport) else "reply" if f.get("DPORT") == str(sport) else "other"
            for hop in [h for h in pending if h["direction"] == current]:
                field = hop["nat"]["field"]
                after = f"{f.get('DST' if field == 'dst' else 'SRC')}:{f.get('DPORT' if field == 'dst' else 'SPORT')}"
                if after != hop["nat"]["before"]:
                    hop["nat"]["after"] = after
                pending.remove(hop)
            last[current] = f
            continue
        if what == "policy":
            rule, verdict = f"(policy of {m.group('chain')})", rest.strip().upper()
        elif what == "rule":
            body, _, tail = rest.rpartition(" (verdict ")
            rule, verdict = normal_rule(body), tail.rstrip(")").strip()
        else:
            continue
        hop: dict[str, Any] = {
            "netns": where,
            "kind": "netfilter",
            "direction": current,
            "table": m.group("table"),
            "chain": m.group("chain"),
            "rule": rule,
            "verdict": verdict,
        }
        f = last.get(current) or {}
        for word, field in ((" dnat ", "dst"), (" snat ", "src"), (" masquerade", "src")):
            if word in f" {rule}":
                hop["nat"] = {
                    "field": field,
                    "before": f"{f.get('DST' if field == 'dst' else 'SRC')}:{f.get('DPORT' if field == 'dst' else 'SPORT')}",
                    "after": None,
                }
                pending.append(hop)
                break
        hops.append(hop)
    return hops


def clear_nft(ns: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", NFT_TABLE], capture_output=True)
