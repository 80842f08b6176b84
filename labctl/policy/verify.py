"""`labctl verify`: what Kubernetes semantics say must be reachable, against
what the kernel does.

Cases: every pod to every pod, on every port and protocol the destination
serves (the engine says allowed or denied), plus the Lab's `expect:` lines.
Each case is one probe on the real datapath; they run in parallel threads
(each thread steps into its source's namespace). A case is a mismatch when
"allowed" and "the probe came back open" disagree.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from labctl.errors import InvalidInput, Problem
from labctl.model.objects import Topology
from labctl.policy.engine import Engine
from labctl.probe import scapy_probe
from labctl.probe.targets import resolve

EXPECT = re.compile(r"^(?P<src>\S+)\s*->\s*(?P<dst>\S+):(?P<port>[0-9]+)(?:/(?P<proto>tcp|udp))?\s+(?P<verdict>allowed|denied)$", re.I)
PROBED = ("TCP", "UDP")


@dataclass
class Case:
    src: str  # labels as `labctl probe` takes them
    dst: str
    port: int
    protocol: str  # TCP | UDP
    expected: bool
    why: str = ""  # the engine's reason, or "expect: ..."
    observed: bool | None = None
    verdict: str | None = None

    @property
    def mismatch(self) -> bool:
        return self.observed is not None and self.observed != self.expected

    def to_dict(self) -> dict:
        return {
            "from": self.src,
            "to": self.dst,
            "port": self.port,
            "proto": self.protocol.lower(),
            "expected": "allowed" if self.expected else "denied",
            "observed": None if self.observed is None else ("allowed" if self.observed else "denied"),
            "verdict": self.verdict,
            "why": self.why,
        }


def parse_expectation(text: str) -> tuple[str, str, int, str, bool]:
    m = EXPECT.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not `FROM -> TO:PORT[/udp] allowed|denied`")
    return m["src"], m["dst"], int(m["port"]), (m["proto"] or "tcp").upper(), m["verdict"].lower() == "allowed"


def check_expectations(topo: Topology, where: str) -> list[Problem]:
    """`expect:` lines must parse and name things the lab has."""
    out = []
    for i, text in enumerate(topo.lab.expect):
        try:
            src, dst, _port, _proto, _ok = parse_expectation(text)
            resolve(topo, src, role="FROM")
            resolve(topo, dst, role="TO")
        except (ValueError, InvalidInput) as e:
            out.append(Problem(where, f"spec.expect[{i}]", str(e.message if isinstance(e, InvalidInput) else e)))
    return out


def cases(topo: Topology) -> list[Case]:
    engine = Engine(topo)
    out = []
    for src in topo.pods:
        for dst in topo.pods:
            for cp in dst.served_ports():
                if cp.protocol not in PROBED or not src.ip or not dst.ip:
                    continue
                d = engine.pods(src, dst, cp.port, cp.protocol)
                why = f"egress: {d.egress.explain()}; ingress: {d.ingress.explain()}"
                out.append(Case(src.key, dst.key, cp.port, cp.protocol, d.allowed, why))
    for text in topo.lab.expect:
        src, dst, port, proto, ok = parse_expectation(text)
        out.append(Case(src, dst, port, proto, ok, f"expect: {text}"))
    return out


def run(topo: Topology, todo: list[Case], timeout: float = 1.0, workers: int = 32) -> list[Case]:
    """Probe every case, in parallel; fills `observed` and `verdict`."""

    def one(case: Case) -> Case:
        a = resolve(topo, case.src, role="FROM")
        b = resolve(topo, case.dst, role="TO")
        r = scapy_probe.probe(a.label, a.netns, b.ip, b.label, case.protocol.lower(), case.port, timeout, fetch=False)
        case.verdict = r.verdict
        case.observed = r.verdict == "open"
        return case

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, todo))


def tables(done: list[Case]) -> list[tuple[str, list[str], list[tuple[str, list[str]]]]]:
    """Truth tables per port/protocol: (title, columns, rows of (from, cells)).
    A cell is "." (allowed) or "X" (denied) as observed; a mismatch is "!" followed
    by what the kernel did."""
    out = []
    groups: dict[tuple[int, str], list[Case]] = {}
    for c in done:
        if not c.why.startswith("expect:"):
            groups.setdefault((c.port, c.protocol), []).append(c)
    for (port, proto), cs in sorted(groups.items()):
        cols = sorted({c.dst for c in cs})
        rows = []
        for src in sorted({c.src for c in cs}):
            cells = []
            for dst in cols:
                hit = [c for c in cs if c.src == src and c.dst == dst]
                if not hit:
                    cells.append(" ")
                    continue
                c = hit[0]
                mark = "." if c.observed else "X"
                cells.append(("!" + mark) if c.mismatch else mark)
            rows.append((src, cells))
        out.append((f"{port}/{proto}", cols, rows))
    return out
