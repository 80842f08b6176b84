"""NetworkPolicy (networking.k8s.io/v1) as plain data, and what the API
server checks of it. Pure.

policyTypes are defaulted as the API server does: [Ingress], plus Egress
only when the egress list is non-empty.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any, Callable

from labctl.model import fields as v
from labctl.model.errors import Problem

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Selector:
    """A label selector; the empty one selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        for k, val in self.match_labels:
            if labels.get(k) != val:
                return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True

    def __str__(self) -> str:
        return self.text

    @functools.cached_property
    def text(self) -> str:  # (computed once: sets and chains are named after it)
        parts = [f"{k}={val}" for k, val in self.match_labels]
        parts += [f"{k} {op.lower()} ({','.join(vals)})" if vals else f"{k} {op.lower()}" for k, op, vals in self.match_expressions]
        return ",".join(parts) or "{}"


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    excepts: tuple[str, ...] = ()

    def contains(self, ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        net = ipaddress.ip_network(self.cidr)
        if a.version != net.version or a not in net:
            return False
        return not any(a in ipaddress.ip_network(e) for e in self.excepts)


@dataclass(frozen=True)
class Peer:
    pods: Selector | None = None
    namespaces: Selector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class Port:
    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of the protocol; a string names a container port
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] = ()  # empty: every peer
    ports: tuple[Port, ...] = ()  # empty: every port


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: Selector
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    types: tuple[str, ...] = ("Ingress",)
    doc: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def family_view(pol: NetworkPolicy, fam: int) -> NetworkPolicy:
    """The policy as one family's rules enforce it: an ipBlock of the other family
    matches nothing there, so it is left out, and a rule left without peers goes (it
    allows nothing in this family; the policy still isolates what it selects)."""

    def rules(items: tuple[Rule, ...]) -> tuple[Rule, ...]:
        out = []
        for r in items:
            peers = tuple(p for p in r.peers if p.ip_block is None or ipaddress.ip_network(p.ip_block.cidr, strict=False).version == fam)
            if r.peers and not peers:
                continue
            out.append(Rule(peers, r.ports) if len(peers) != len(r.peers) else r)
        return tuple(out)

    from dataclasses import replace

    return replace(pol, ingress=rules(pol.ingress), egress=rules(pol.egress))


# -- reading ------------------------------------------------------------------------------


def selector(d: dict[str, Any] | None) -> Selector:
    d = d or {}
    labels = tuple(sorted((d.get("matchLabels") or {}).items()))
    exprs = tuple((e["key"], e["operator"], tuple(e.get("values") or ())) for e in d.get("matchExpressions") or [])
    return Selector(labels, exprs)


def _peer(d: dict[str, Any]) -> Peer:
    block = d.get("ipBlock")
    return Peer(
        pods=selector(d["podSelector"]) if "podSelector" in d and d["podSelector"] is not None else None,
        namespaces=selector(d["namespaceSelector"]) if "namespaceSelector" in d and d["namespaceSelector"] is not None else None,
        ip_block=IPBlock(block["cidr"], tuple(block.get("except") or ())) if block else None,
    )


def _rules(items: list[dict[str, Any]] | None, peers_key: str) -> tuple[Rule, ...]:
    out = []
    for r in items or []:
        ports = tuple(Port(p.get("protocol") or "TCP", p.get("port"), p.get("endPort")) for p in r.get("ports") or [])
        out.append(Rule(tuple(_peer(x) for x in r.get(peers_key) or []), ports))
    return tuple(out)


def from_manifest(doc_index: int, data: dict[str, Any]) -> NetworkPolicy:
    meta, spec = data["metadata"], data.get("spec") or {}
    types = spec.get("policyTypes") or []
    if not types:
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    return NetworkPolicy(
        namespace=meta.get("namespace") or "default",
        name=meta["name"],
        pod_selector=selector(spec.get("podSelector")),
        ingress=_rules(spec.get("ingress"), "from"),
        egress=_rules(spec.get("egress"), "to"),
        types=tuple(types),
        doc=doc_index,
    )


# -- validation ------------------------------------------------------------------------


def selector_problems(d: dict[str, Any] | None, w: str, path: str) -> list[Problem]:
    """A label selector as the API server checks it: matchLabels as labels, each
    expression's key a label key, its values label values, and its operator's rules."""
    out: list[Problem] = []
    if not d:
        return out
    out += v.label_problems(d.get("matchLabels") or {}, w, f"{path}.matchLabels")
    for i, e in enumerate(d.get("matchExpressions") or []):
        p = f"{path}.matchExpressions[{i}]"
        why = v.label_key(e.get("key"))
        if why:
            out.append(Problem(w, f"{p}.key", why))
        for j, value in enumerate(e.get("values") or []):
            why = v.label_value(value)
            if why:
                out.append(Problem(w, f"{p}.values[{j}]", why))
        op = e.get("operator")
        if op not in OPERATORS:
            out.append(Problem(w, f"{p}.operator", f"must be one of {', '.join(OPERATORS)}, not {op!r}"))
        elif op in ("In", "NotIn") and not e.get("values"):
            out.append(Problem(w, f"{p}.values", f"must be non-empty for operator {op}"))
        elif op in ("Exists", "DoesNotExist") and e.get("values"):
            out.append(Problem(w, f"{p}.values", f"must be empty for operator {op}"))
    return out


def check(doc_index: int, data: dict[str, Any], where: Callable[[int], str]) -> list[Problem]:
    """What the API server refuses in a NetworkPolicy, with field paths."""
    w = where(doc_index)
    spec = data.get("spec") or {}
    out: list[Problem] = []
    out += selector_problems(spec.get("podSelector"), w, "spec.podSelector")
    for i, t in enumerate(spec.get("policyTypes") or []):
        if t not in ("Ingress", "Egress"):
            out.append(Problem(w, f"spec.policyTypes[{i}]", f"must be Ingress or Egress, not {t!r}"))
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for ri, rule in enumerate(spec.get(direction) or []):
            rp = f"spec.{direction}[{ri}]"
            for pi, peer in enumerate(rule.get(peers_key) or []):
                pp = f"{rp}.{peers_key}[{pi}]"
                has_sel = peer.get("podSelector") is not None or peer.get("namespaceSelector") is not None
                block = peer.get("ipBlock")
                if not has_sel and not block:
                    out.append(Problem(w, pp, "must specify podSelector, namespaceSelector or ipBlock"))
                if has_sel and block:
                    out.append(Problem(w, pp, "ipBlock may not be combined with podSelector or namespaceSelector"))
                out += selector_problems(peer.get("podSelector"), w, f"{pp}.podSelector")
                out += selector_problems(peer.get("namespaceSelector"), w, f"{pp}.namespaceSelector")
                if block:
                    net = v.parse_cidr(str(block.get("cidr", "")), w, f"{pp}.ipBlock.cidr", out)
                    for ei, exc in enumerate(block.get("except") or []):
                        sub = v.parse_cidr(str(exc), w, f"{pp}.ipBlock.except[{ei}]", out, family=net.version if net is not None else None)
                        if net is not None and sub is not None and not (sub.subnet_of(net) and sub != net):
                            out.append(Problem(w, f"{pp}.ipBlock.except[{ei}]", f"{sub} must be a strict subset of cidr {net}"))
            for qi, port in enumerate(rule.get("ports") or []):
                qp = f"{rp}.ports[{qi}]"
                proto = port.get("protocol") or "TCP"
                if proto not in v.PROTOCOLS:
                    out.append(Problem(w, f"{qp}.protocol", f"must be one of TCP, UDP, SCTP, not {proto!r}"))
                num, end = port.get("port"), port.get("endPort")
                if isinstance(num, int) and not 1 <= num <= 65535:
                    out.append(Problem(w, f"{qp}.port", f"{num} is out of range 1-65535"))
                if isinstance(num, str) and v.port_name(num):
                    out.append(Problem(w, f"{qp}.port", v.port_name(num)))
                if end is not None:
                    if num is None:
                        out.append(Problem(w, f"{qp}.endPort", "may only be set with a port"))
                    elif isinstance(num, str):
                        out.append(Problem(w, f"{qp}.endPort", "may not be set with a named port"))
                    elif end < num:
                        out.append(Problem(w, f"{qp}.endPort", f"{end} must be at least port {num}"))
                    elif end > 65535:
                        out.append(Problem(w, f"{qp}.endPort", f"{end} is out of range 1-65535"))
    return out
