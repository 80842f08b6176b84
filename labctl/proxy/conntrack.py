"""Stale UDP conntrack entries, cleared as kube-proxy clears them.

A UDP "connection" to a service is a conntrack entry that keeps its DNAT for
as long as datagrams flow, so a client that keeps its source port would keep
talking to an endpoint that is gone or no longer ready. After a sync that
changed a UDP service port, kube-proxy deletes the node's entries addressed to
a UDP service (cluster IP, external IP, load-balancer IP or node port) whose
reply comes from an address that is not one of the service's endpoints any
more; the next datagram is translated afresh. TCP needs none of this (a reset
ends the connection).

`targets` and `stale` are pure; `clean` lists and deletes in a node's namespace
with the `conntrack` tool.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from labctl.errors import KernelError
from labctl.kernel import run
from labctl.proxy.endpoints import ServicePortInfo

_PAIR = re.compile(r"(src|dst|sport|dport)=(\S+)")


@dataclass(frozen=True)
class Entry:
    """One conntrack entry: the original direction, and where the reply comes from."""

    src: str
    dst: str
    sport: int
    dport: int
    reply_src: str


def targets(infos: list[ServicePortInfo], node_ip: str) -> dict[tuple[str, int], frozenset[str]]:
    """(destination address, port) of every UDP service frontend reachable on a node
    -> the addresses its replies may legitimately come from (the endpoints)."""
    out: dict[tuple[str, int], frozenset[str]] = {}
    for i in infos:
        if i.proto != "udp":
            continue
        s, eps = i.service, frozenset(e.ip for e in i.endpoints)
        for ip in (s.cluster_ip, *s.external_ips, s.load_balancer_ip):
            if ip and ip != "None":
                out[(ip, i.port.port)] = eps
        if i.port.node_port:
            out[(node_ip, i.port.node_port)] = eps
    return out


def parse(listing: str) -> list[Entry]:
    """`conntrack -L -p udp` lines -> entries (the first src/dst/sport/dport are the
    original direction, the second the reply)."""
    out = []
    for line in listing.splitlines():
        pairs = _PAIR.findall(line)
        if len(pairs) < 8:
            continue
        orig = dict(pairs[:4])
        reply = dict(pairs[4:8])
        out.append(Entry(orig["src"], orig["dst"], int(orig["sport"]), int(orig["dport"]), reply["src"]))
    return out


def stale(entries: list[Entry], frontends: dict[tuple[str, int], frozenset[str]]) -> list[Entry]:
    """Entries to a UDP service frontend whose reply source is not one of its endpoints
    (a removed or unready endpoint, or no translation at all)."""
    return [e for e in entries if (e.dst, e.dport) in frontends and e.reply_src not in frontends[(e.dst, e.dport)]]


def clean(ns: str, frontends: dict[tuple[str, int], frozenset[str]]) -> int:
    """Delete a node's stale UDP service entries; returns how many were stale. One
    delete per frontend and stale reply source, however many clients' flows it holds."""
    if not frontends:
        return 0
    six = any(":" in ip for ip, _ in frontends)  # an IPv6 family's frontends (conntrack lists IPv4 unless told)
    fam = ["-f", "ipv6"] if six else []
    gone = stale(parse(run.output(ns, ["conntrack", "-L", *fam, "-p", "udp"])), frontends)
    for dst, dport, reply_src in sorted({(e.dst, e.dport, e.reply_src) for e in gone}):
        argv = ["conntrack", "-D", *fam, "-p", "udp", "--orig-dst", dst, "--orig-port-dst", str(dport), "--reply-src", reply_src]
        p = subprocess.run(run.in_netns(ns, argv), capture_output=True, text=True)
        if p.returncode not in (0, 1):  # 1: the entries expired meanwhile
            raise KernelError(f"`ip netns exec {ns} {' '.join(argv)}` failed: {p.stderr.strip()}")
    return len(gone)
