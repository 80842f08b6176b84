"""`labctl verify`: what Kubernetes semantics say must be reachable, against
what the kernel does.

Cases: every pod and every node to every pod, on every port and protocol the
destination serves (the engine says allowed or denied), plus the Lab's
`expect:` lines. Externals have no route to pod addresses (they reach pods
through NodePorts and LoadBalancer IPs: write `expect:` lines for those).
Each case is one probe on the real datapath; they run in parallel threads
(each thread steps into its source's namespace). A case is a mismatch when
"allowed" and "the probe came back open" disagree.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from labctl import registry
from labctl.model import ipam
from labctl.model.expect import parse_expectation, parse_http_expectation
from labctl.model.objects import Topology
from labctl.model.targets import resolve
from labctl.policy.engine import Engine, Party
from labctl.probe import ports, scapy_probe

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
    detail: str | None = None  # what the probe saw: the ICMP error and its sender, who answered and whom it saw
    http: dict | None = None  # an L7 expectation (labctl.model.expect.parse_http_expectation): the status is compared
    family: int | None = None  # a dual-stack lab's family this case is probed over (None: the lab's only one)

    @property
    def mismatch(self) -> bool:
        return self.observed is not None and self.observed != self.expected

    def to_dict(self) -> dict:
        return {
            "from": self.src,
            "to": self.dst,
            "port": self.port,
            "proto": self.protocol.lower(),
            "expected": str(self.http["status"]) if self.http else ("allowed" if self.expected else "denied"),
            "observed": self.verdict if self.http else (None if self.observed is None else ("allowed" if self.observed else "denied")),
            "verdict": self.verdict,
            "detail": self.detail,
            "why": self.why,
            **({"family": f"IPv{self.family}"} if self.family else {}),
        }


def node_source_ip(topo: Topology, node: str, dst) -> str:
    """The address a pod sees when a node connects to it (what an ipBlock is matched
    against): its own node's `cni0` address; from another node, what the overlay
    makes it (Overlay.node_source_ip)."""
    n = topo.lab.node(node)
    if dst.node == node:
        return ipam.gateway(n.pod_cidr)
    return registry.overlay(topo.lab.overlay).node_source_ip(topo.lab, n)


def cases(topo: Topology, fam: int | None = None) -> list[Case]:
    """Every case: in a dual-stack lab, the pod and node cases once per family (each
    from its view of the lab; `fam`: that family alone), the `expect:` lines once."""
    from labctl.model import family

    fams = family.lab_families(topo.lab)
    if len(fams) == 1:
        return _cases(topo, None) + _expected(topo)
    out = []
    for f in [fam] if fam else fams:
        out += _cases(family.view(topo, f), f)
    return out + _expected(topo)


def _cases(topo: Topology, fam: int | None) -> list[Case]:
    engine = Engine(topo)
    out = []
    for src in topo.pods:
        for dst in topo.pods:
            for cp in dst.served_ports():
                if cp.protocol not in PROBED or not src.ip or not dst.ip:
                    continue
                d = engine.pods(src, dst, cp.port, cp.protocol)
                why = f"egress: {d.egress.explain()}; ingress: {d.ingress.explain()}"
                out.append(Case(src.key, dst.key, cp.port, cp.protocol, d.allowed, why, family=fam))
    for node in topo.lab.nodes:
        for dst in topo.pods:
            if not dst.ip:
                continue
            src = Party(node_source_ip(topo, node.name, dst), node=node.name)
            for cp in dst.served_ports():
                if cp.protocol not in PROBED:
                    continue
                d = engine.check(src, Party(dst.ip, dst), cp.port, cp.protocol)
                why = f"from {src.ip}; ingress: {d.ingress.explain()}"
                out.append(Case(f"node/{node.name}", dst.key, cp.port, cp.protocol, d.allowed, why, family=fam))
    return out


def _expected(topo: Topology) -> list[Case]:
    out = []
    for text in topo.lab.expect:
        http = parse_http_expectation(text)
        if http is not None:
            out.append(Case(http["src"], http["dst"], http["port"], "HTTP", True, f"expect: {text}", http=http))
            continue
        src, dst, port, proto, ok = parse_expectation(text)
        out.append(Case(src, dst, port, proto, ok, f"expect: {text}"))
    return out


def _http_case(topo: Topology, case: Case, a, b, timeout: float) -> Case:
    from labctl.probe import http as http_probe

    h = case.http
    tls = None
    if h["https"]:
        from labctl import pki
        from labctl.state.store import LabDir

        tls = http_probe.TlsOptions(sni=h["host"], cafile=str(pki.ca(LabDir(topo.lab.name).path / "ca", topo.lab.name).cert))
    answer = http_probe.probe(a.netns, b.ip, h["port"], h["path"], h["host"], h["method"], [], max(timeout, 2.0), tls)
    case.verdict = str(answer.status) if answer.status is not None else answer.verdict
    case.observed = answer.status == h["status"]
    served = f"served by {answer.served_by}" if answer.served_by else None
    unverified = "certificate not verified" if answer.tls and answer.tls.get("verified") is False else None
    case.detail = ", ".join(x for x in (served, unverified, answer.detail) if x) or None
    return case


def pair_cases(topo: Topology) -> list[Case]:
    """The pod-to-pod cases alone (no node sources, no `expect:` lines): the pairs
    `graph --verify` draws and the web view's matrix shows."""
    from labctl.model import family

    first = family.lab_families(topo.lab)[0]  # one matrix: the first family's (verify checks every family)
    return [c for c in cases(topo, first) if not c.src.startswith("node/") and not c.why.startswith("expect:")]


def run(topo: Topology, todo: list[Case], timeout: float = 1.0, workers: int = 32) -> list[Case]:
    """Probe every case, in parallel; fills `observed` and `verdict`."""

    base = ports.reserve(topo.lab.name, len(todo))

    def one(item: tuple[int, Case]) -> Case:
        i, case = item
        a = resolve(topo, case.src, role="FROM", fam=case.family)
        b = resolve(topo, case.dst, role="TO", fam=case.family)
        if case.http is not None:
            return _http_case(topo, case, a, b, timeout)
        r = scapy_probe.probe(a.label, a.netns, b.ip, b.label, case.protocol.lower(), case.port, timeout, fetch=False, sport=ports.port(base, i))
        case.verdict = r.verdict
        case.observed = r.verdict == "open"
        case.detail = r.detail or (f"served by {r.served_by}, client seen as {r.client_ip_seen}" if r.served_by else None)
        return case

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, enumerate(todo)))


def tables(done: list[Case]) -> list[tuple[str, list[str], list[tuple[str, list[str]]]]]:
    """Truth tables per port/protocol: (title, columns, rows of (from, cells)).
    A cell is "." (allowed) or "X" (denied) as observed; a mismatch is "!" followed
    by what the kernel did."""
    out = []
    groups: dict[tuple[int, str], list[Case]] = {}
    for c in done:
        if not c.why.startswith("expect:"):
            groups.setdefault((c.port, c.protocol, c.family or 0), []).append(c)
    for (port, proto, fam), cs in sorted(groups.items()):
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
        out.append((f"{port}/{proto}" + (f" IPv{fam}" if fam else ""), cols, rows))
    return out
