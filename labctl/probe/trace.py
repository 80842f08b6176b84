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

import random
import re
import shlex
import subprocess
import time
from typing import Any

COMMENT = "labctl trace"
MONITOR_KEY = "trace:node/"  # + the node's name: a trace's monitor in the lab's journal
_PACKET = re.compile(r"^PACKET: \d+ (?P<id>[0-9a-f]+) (?P<rest>.*)$")
_TRACE = re.compile(r"^\s*TRACE: \d+ (?P<id>[0-9a-f]+) (?P<table>\w+):(?P<chain>[^:]+):(?P<kind>rule|return|policy):(?P<tail>\S*)\s*(?P<rule>.*)$")


def rules(proto: str, sport: int, seq: int) -> list[list[str]]:
    """iptables arguments marking the probe's flow, both ways, in the raw table, by
    what no NAT rewrites: for TCP the SYN's sequence number and the SYN-ACK's
    acknowledgement of it (the probe is that exchange; the prober's reset is not
    part of the path), for UDP the request's first payload word; the UDP answer by
    the probe's port (so where a masquerade changed it, the answer goes untraced)."""
    if proto == "tcp":
        request = ["--tcp-flags", "SYN,ACK", "SYN", "-m", "u32", "--u32", f"0>>22&0x3C@4={seq:#x}"]
        reply = ["--tcp-flags", "SYN,ACK", "SYN,ACK", "-m", "u32", "--u32", f"0>>22&0x3C@8={(seq + 1) % 2**32:#x}"]
    else:
        request = ["-m", "u32", "--u32", f"0>>22&0x3C@8={seq:#x}"]
        reply = ["--dport", str(sport)]
    out = []
    for chain in ("PREROUTING", "OUTPUT"):
        for match in (request, reply):
            out.append(["-t", "raw", "-I", chain, "-p", proto, "-m", proto, *match, "-m", "comment", "--comment", COMMENT, "-j", "TRACE"])
    return out


def direction(f: dict[str, str], proto: str, sport: int) -> str:
    """Which way a traced packet goes: the SYN is the request, the SYN-ACK the
    reply (ports may have been rewritten); for UDP, the answer comes to the probe's port."""
    if proto == "tcp":
        flags = f.get("FLAGS", "")
        return "reply" if "ACK" in flags else "request" if "SYN" in flags else "other"
    return "reply" if f.get("DPORT") == str(sport) else "request"


def hop_line(h: dict[str, Any]) -> str:
    """A hop as the text form prints it (under its namespace's heading)."""
    nat = h.get("nat") or {}
    rewrite = f"\n{'':15}{nat['field']} {nat['before']} -> {nat['after']}" if nat.get("after") and h["kind"] == "netfilter" else ""
    if h["kind"] == "netfilter":
        where = "" if h["rule"].startswith(("-A ", "(policy")) else f"{h['chain']}: "
        return f"    {h['table']:<10} {where}{h['rule']}   [{h['verdict']}]{rewrite}"
    return f"    {h['kind']:<10} {h['detail']}"


def agreement(why: dict[str, Any], out: dict[str, Any]) -> str | None:
    """Where `explain`'s semantics and a trace of the same flow disagree (None when
    they agree): a flow allowed but dropped or unanswered, a flow denied but let
    through, a Service answered by an endpoint its rules on that node should not use."""
    passed = out["verdict"] in ("open", "refused")  # refused: the destination itself answered
    drop = next((h for h in out["hops"] if h["kind"] == "drop"), None)
    allowed = why["allowed"]
    if "service" in why and out.get("served_by"):
        eps = why["service"]["endpoints"]
        ep = next((e for e in eps if e["endpoint"] == out["served_by"] or e["address"].split(":")[0] == out["served_by"]), None)
        if ep is None:
            return f"served by {out['served_by']}, which is not among the endpoints {why['service']['node']}'s rules use"
        allowed = ep["allowed"]
    if allowed and not passed:
        where = f": dropped on {drop['netns']} by {drop['detail']}" if drop else ""
        return f"the semantics allow it, but the kernel's verdict is {out['verdict']}{where}"
    if not allowed and passed:
        return f"the semantics deny it, but the kernel let it through ({out['verdict']}" + (f", served by {out['served_by']})" if out.get("served_by") else ")")
    return None


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
    f = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)
    f["FLAGS"] = " ".join(w for w in rest.split() if w in ("SYN", "ACK", "RST", "FIN"))
    return f


def _addr(f: dict[str, str], field: str) -> str:
    return f"{f.get('DST')}:{f.get('DPORT')}" if field == "dst" else f"{f.get('SRC')}:{f.get('SPORT')}"


class _Flow:
    """One namespace's trace as it is read: which way each packet goes (the probe's
    source port says), and the NAT rules waiting for the next packet line of their
    direction to show what they rewrote. Both monitors' parsers fill it."""

    def __init__(self, where: str, sport: int, proto: str):
        self.where, self.sport, self.proto = where, sport, proto
        self.current = "other"
        self.last: dict[str, dict[str, str]] = {}  # direction -> the fields of its last packet line
        self.pending: list[dict[str, Any]] = []
        self.routed: set[str] = set()
        self.hops: list[dict[str, Any]] = []

    def packet(self, f: dict[str, str]) -> None:
        self.current = d = direction(f, self.proto, self.sport)
        for hop in [h for h in self.pending if h["direction"] == d]:
            after = _addr(f, hop["nat"]["field"])
            if after != hop["nat"]["before"]:
                hop["nat"]["after"] = after
            self.pending.remove(hop)
        # the packet's devices are the kernel's routing decision: marks for path.expand
        if d == "other":
            return
        if d not in self.last:
            self.hops.append({"netns": self.where, "kind": "_in", "direction": d, "fields": f})
        if f.get("OUT") and d not in self.routed:
            self.routed.add(d)
            self.hops.append({"netns": self.where, "kind": "_route", "direction": d, "fields": f})
        self.last[d] = f

    def done(self) -> list[dict[str, Any]]:
        """The hops, each direction closed by a mark of its last packet (where it left)."""
        for d, f in self.last.items():
            self.hops.append({"netns": self.where, "kind": "_out", "direction": d, "fields": f})
        return self.hops

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


def parse(text: str, where: str, sport: int, proto: str = "tcp") -> list[dict[str, Any]]:
    """Hops of one namespace's xtables-monitor output, in order. Each: netns, kind
    ("netfilter"), direction ("request" | "reply"), table, chain, rule (as
    iptables-save prints it, "-A CHAIN ..."), verdict; NAT rules also "nat"."""
    flow = _Flow(where, sport, proto)
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
    return flow.done()


def iptables(ns: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "iptables", *args], capture_output=True, text=True, check=check)


def clear(ns: str) -> None:
    """Remove every trace rule of a node (this trace's, or one a crash left), and
    the raw table itself when nothing but trace rules ever filled it (labctl's
    modes write no raw rule: an empty raw table is the trace's leftover)."""
    listing = iptables(ns, ["-t", "raw", "-S"], check=False).stdout
    ours = [line for line in listing.splitlines() if f'--comment "{COMMENT}"' in line and line.startswith("-A ")]
    for line in ours:
        iptables(ns, ["-t", "raw", "-D", *shlex.split(line)[1:]], check=False)
    if ours and all(line.startswith("-P ") or line in ours for line in listing.splitlines()):
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "raw"], capture_output=True)


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


def nft_rules(proto: str, sport: int, seq: int) -> str:
    """`nft -f` input: a table of labctl's own whose chains, ahead of every other
    (priority -350), set nftrace on the probe's packets, matched as rules() does."""
    if proto == "tcp":
        request = f"tcp sequence {seq} tcp flags & (syn|ack) == syn"
        reply = f"tcp ackseq {(seq + 1) % 2**32} tcp flags & (syn|ack) == syn|ack"
    else:
        request, reply = f"meta l4proto udp @th,64,32 {seq:#x}", f"udp dport {sport}"
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


_NFT_FLAGS = re.compile(r"tcp flags == (\S+(?: ?\| ?\S+)*)")
_NFT_FIELDS = {
    "IN": re.compile(r'\biif "([^"]+)"'),
    "OUT": re.compile(r'\boif "([^"]+)"'),
    "MACSRC": re.compile(r"ether saddr (\S+)"),
    "SRC": re.compile(r"ip saddr (\S+)"),
    "DST": re.compile(r"ip daddr (\S+)"),
    "SPORT": re.compile(r"(?:tcp|udp) sport (\d+)"),
    "DPORT": re.compile(r"(?:tcp|udp) dport (\d+)"),
}


def _nft_fields(rest: str) -> dict[str, str]:
    f = {k: m.group(1) for k, rx in _NFT_FIELDS.items() if (m := rx.search(rest))}
    m = _NFT_FLAGS.search(rest)
    flags = m.group(1).upper().replace("|", " ") if m else ""
    if flags.startswith("0X"):  # nft prints a combination it has no name for in hex: 0x12 is syn|ack
        bits = int(flags, 16)
        flags = " ".join(n for n, b in (("FIN", 1), ("SYN", 2), ("RST", 4), ("ACK", 16)) if bits & b)
    f["FLAGS"] = flags
    return f


def parse_nft(text: str, where: str, sport: int, proto: str = "tcp") -> list[dict[str, Any]]:
    """Hops of one namespace's `nft monitor trace` output (the shape of parse())."""
    flow = _Flow(where, sport, proto)
    for line in text.splitlines():
        m = _NFT.match(line.strip())
        if not m or m.group("table") == NFT_TABLE:
            continue
        what, rest = m.group("what"), m.group("rest")
        if what == "packet":
            flow.packet(_nft_fields(rest))
        elif what == "policy":
            flow.hop(m.group("table"), m.group("chain"), f"(policy of {m.group('chain')})", (rest.split() or ["?"])[0].upper(), None)
        elif what == "rule":
            body, _, tail = rest.rpartition(" (verdict ")
            rule = normal_rule(body)
            nat = next((field for word, field in ((" dnat ", "dst"), (" snat ", "src"), (" masquerade", "src")) if word in f" {rule}"), None)
            flow.hop(m.group("table"), m.group("chain"), rule, tail.rstrip(")").strip(), nat)
    return flow.done()


def clear_nft(ns: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", NFT_TABLE], capture_output=True)


def clear_after_crash(lab: str, monitor_keys: list[str], present: set[str]) -> None:
    """A trace killed before it cleaned up left its monitors' records: remove the
    marking rules of those nodes (their monitors are stopped with the records)."""
    from labctl.model import names

    for key in monitor_keys:
        if key.startswith(MONITOR_KEY):
            ns = names.node_netns(lab, key[len(MONITOR_KEY) :])
            if ns in present:
                clear(ns)
                clear_nft(ns)


# -- one trace, end to end (the side effects) ---------------------------------------------


def run(handle, topo, a, b, proto: str, port: int, timeout: float, tracer: str, still_up=lambda: None, ipvs: bool = False, bpf: bool = False):
    """Mark the flow and start a monitor in every node, send the probe, collect and
    parse what the monitors saw, and take everything away again. Returns (the probe's
    result, request hops, reply hops); for an answered TCP probe, who served and whom
    it saw come from the kernel's own rewrites of the traced SYN. `still_up()`
    raises when the lab went down while the probe ran."""
    from labctl import failpoints
    from labctl.kernel import netns, procs
    from labctl.model import names
    from labctl.probe import path, ports, scapy_probe
    from labctl.probe.routes import node_of

    nodes = [n.name for n in topo.lab.nodes]
    spaces = {n: names.node_netns(topo.lab.name, n) for n in nodes}
    sport = ports.reserve(topo.lab.name)
    seq = random.SystemRandom().randint(1, 2**31)
    logs = {n: handle.dir.logs / f"trace-{n}.log" for n in nodes}
    keys = {n: MONITOR_KEY + n for n in nodes}
    pids = []
    try:
        for n, ns in spaces.items():
            clear(ns)
            clear_nft(ns)
            # the monitor first: its journal record is what tells a later run that this
            # node may hold trace rules (Lab._clear_debris removes them with it)
            logs[n].write_text("")
            monitor = ["nft", "monitor", "trace"] if tracer == "nft" else ["xtables-monitor", "--trace", "-4"]
            pids.append(procs.spawn(monitor, key=keys[n], journal=handle.journal, log=logs[n], netns=ns))
            if tracer == "nft":
                subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=nft_rules(proto, sport, seq), text=True, check=True, capture_output=True)
            else:
                for args in rules(proto, sport, seq):
                    iptables(ns, args)
        _wait_listening(pids)
        failpoints.hit("traced")
        result = scapy_probe.probe(a.label, a.netns, b.ip, b.label, proto, port, timeout, fetch=False, sport=sport, seq=seq)
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
    read = parse_nft if tracer == "nft" else parse
    by_node = {}
    views = {n: path.View(spaces[n]) for n in nodes}
    if bpf:
        from labctl.kernel.bpf import node_dir

        for n in nodes:
            views[n].pins = str(node_dir(topo.lab.name, n))
    name = _namer(topo)
    for n in nodes:
        parsed = read(logs[n].read_text(), f"node/{n}", sport, proto)
        logs[n].unlink(missing_ok=True)
        if parsed:
            by_node[n] = path.expand(parsed, views[n], name, proto, sport, ipvs=ipvs)
        elif bpf:  # translated and forwarded by the program alone (an SNAT to a remote backend): no netfilter saw it
            hops = path.bpf_hops(f"node/{n}", views[n], sport)
            if hops:
                by_node[n] = hops
    first = node_of(topo, a)
    node_ips = {n.name: n.ip for n in topo.lab.nodes}
    request, reply = [], []
    for d, group in (("request", request), ("reply", reply)):
        for n in path.order(by_node, d, first.name if first is not None and d == "request" else None, node_ips):
            group += [h for h in by_node[n] if h["direction"] == d]
    if proto == "tcp" and result.verdict == "open":
        dst, seen = outcome(request)
        ip = (dst or f"{b.ip}:").split(":")[0]
        result.served_by = next((p.key for p in topo.pods if p.ip == ip), None) or next((f"ext/{e.name}" for e in topo.lab.externals if e.ip == ip), ip)
        result.client_ip_seen = (seen or f"{result.src_ip}:").split(":")[0]
    # the two ends' own routes: the sender's, and the server's for its answer
    request[:0] = _end_route(a.label, a.netns, b.ip, "request")
    if result.served_by and result.client_ip_seen:
        from labctl.model.targets import resolve

        server_ns = resolve(topo, result.served_by, role="TO").netns
        if server_ns:
            reply[:0] = _end_route(result.served_by, server_ns, result.client_ip_seen, "reply")
    return result, request, reply


def _namer(topo):
    """ip -> the lab's name for the place that holds it."""
    places = {p.ip: p.key for p in topo.pods}
    places.update({n.ip: f"node/{n.name}" for n in topo.lab.nodes})
    places.update({e.ip: f"ext/{e.name}" for e in topo.lab.externals})
    return lambda ip: places.get(ip or "")


def _end_route(label: str, ns: str, dst: str, direction: str) -> list[dict[str, Any]]:
    """A pod's or external's route toward an address (nodes' routes come from the
    monitors: their hops say which device the kernel chose)."""
    if label.startswith("node/"):
        return []
    from labctl.probe.path import View, _gateway

    route = View(ns).fibmatch(dst)
    return [{"netns": label, "direction": direction, "kind": "route", "detail": f"{dst} -> {route or '(no route)'}", "gateway": _gateway(route)}]


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
