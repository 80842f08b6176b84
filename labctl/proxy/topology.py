"""Topology-aware routing: the hints the EndpointSlice controller writes, and the
filter kube-proxy applies with them. Pure.

Hints. `trafficDistribution: PreferClose` (or PreferSameZone) gives every ready
endpoint a hint for its own zone; PreferSameNode for its own node too. The
annotation `service.kubernetes.io/topology-mode: Auto` (which wins over
trafficDistribution) shares the ready endpoints out among the zones in
proportion to each zone's capacity, as the controller's topology cache does,
every node counting the same here (lab nodes have no allocatable CPU to
weigh): each endpoint is first hinted for its own zone, then zones holding
more than their share give endpoints to zones holding less. It gives no hints
at all when a node has no zone label, when there are fewer than two zones,
fewer ready endpoints than zones, a share below the 20% overload threshold's
minimum, or a ready endpoint without a zone.

Filter. On a node, kube-proxy uses the hints only when every ready endpoint
has one and at least one is hinted for the node's zone (or node); else every
ready endpoint, as without hints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from labctl.model.slices import ZONE_LABEL

OVERLOAD_THRESHOLD = 0.2
EXCLUDED_NODE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")


def mode(topology_mode: str | None, traffic_distribution: str | None) -> str | None:
    """ "Auto", "PreferSameZone", "PreferSameNode" or None (no hints)."""
    if topology_mode in ("Auto", "auto"):
        return "Auto"
    if traffic_distribution in ("PreferClose", "PreferSameZone"):
        return "PreferSameZone"
    if traffic_distribution == "PreferSameNode":
        return "PreferSameNode"
    return None


@dataclass(frozen=True)
class Candidate:
    """An endpoint as the controller sees it."""

    key: str  # what the hints are returned by (an address)
    ready: bool
    zone: str | None
    node: str | None


@dataclass(frozen=True)
class Hints:
    zones: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()


def zone_ratios(nodes) -> tuple[dict[str, float] | None, str]:
    """Each zone's share of the (counted) nodes, or None and why not."""
    counts: dict[str, int] = {}
    for n in nodes:
        if any(k in n.labels for k in EXCLUDED_NODE_LABELS):
            continue
        zone = n.labels.get(ZONE_LABEL)
        if not zone:
            return None, f"insufficient node information: node {n.name} has no {ZONE_LABEL} label"
        counts[zone] = counts.get(zone, 0) + 1
    if len(counts) < 2:
        return None, "nodes ready in one zone only"
    total = sum(counts.values())
    return {z: c / total for z, c in sorted(counts.items())}, ""


def _allocations(ratios: dict[str, float], n: int) -> tuple[dict[str, tuple[int, float]] | None, str]:
    """zone -> (minimum, desired) for n ready endpoints, or None and why."""
    if len(ratios) > n:
        return None, f"insufficient number of endpoints ({n} endpoints, {len(ratios)} zones)"
    out = {}
    remaining = n
    for zone, ratio in ratios.items():
        desired = ratio * n
        minimum = math.ceil(desired * (1 / (1 + OVERLOAD_THRESHOLD)))
        out[zone] = (minimum, max(desired, float(minimum)))
        remaining -= minimum
        if remaining < 0:
            return None, f"minimum allocation exceeds the overload threshold ({n} endpoints, {len(ratios)} zones)"
    return out, ""


def _most(values: dict[str, float]) -> tuple[str, float]:
    zone, most = "", 0.0
    for z, v in sorted(values.items()):
        if v > most:
            zone, most = z, v
    return zone, most


def _giving_and_receiving(allocations: dict[str, tuple[int, float]], allocated: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    giving_wanted: dict[str, float] = {}
    receiving_wanted: dict[str, float] = {}
    for zone, (_, desired) in allocations.items():
        have = allocated.get(zone, 0)
        if have > desired:
            giving_wanted[zone] = have - desired
        elif have < desired:
            receiving_wanted[zone] = desired - have
    giving: dict[str, int] = {}
    receiving: dict[str, int] = {}
    while True:
        gz, give = _most(giving_wanted)
        rz, receive = _most(receiving_wanted)
        if not gz or not rz or (give < 1.0 and receive < 1.0) or give < 0.5 or receive < 0.5:
            break
        giving[gz] = giving.get(gz, 0) + 1
        giving_wanted[gz] -= 1
        receiving[rz] = receiving.get(rz, 0) + 1
        receiving_wanted[rz] -= 1
    return giving, receiving


def auto(candidates: list[Candidate], nodes) -> tuple[dict[str, Hints], str]:
    """The topology cache's hints (key -> Hints), or none and why."""
    ratios, why = zone_ratios(nodes)
    if ratios is None:
        return {}, why
    ready = [c for c in candidates if c.ready]
    allocations, why = _allocations(ratios, len(ready))
    if allocations is None:
        return {}, why
    zone_of: dict[str, str] = {}
    allocated: dict[str, int] = {}
    for c in ready:
        if not c.zone:
            return {}, f"endpoint {c.key} has no zone"
        zone_of[c.key] = c.zone
        allocated[c.zone] = allocated.get(c.zone, 0) + 1
    giving, receiving = _giving_and_receiving(allocations, allocated)
    for c in ready:
        if not giving or not receiving:
            break
        if giving.get(c.zone or "", 0) > 0:
            to = next(z for z in sorted(receiving) if receiving[z] > 0)
            zone_of[c.key] = to
            for counts, z in ((giving, c.zone or ""), (receiving, to)):
                counts[z] -= 1
                if not counts[z]:
                    del counts[z]
    if not zone_of:
        return {}, "no hints allocated for zones"
    return {k: Hints(zones=(z,)) for k, z in zone_of.items()}, ""


def hints(how: str | None, candidates: list[Candidate], nodes) -> tuple[dict[str, Hints], str]:
    """The hints of a Service's ready endpoints under mode `how` (see mode())."""
    if how is None:
        return {}, ""
    if how == "Auto":
        return auto(candidates, nodes)
    out = {}
    for c in candidates:
        if c.ready and c.zone:
            out[c.key] = Hints(zones=(c.zone,), nodes=(c.node,) if how == "PreferSameNode" and c.node else ())
        elif c.ready and how == "PreferSameNode" and c.node:
            out[c.key] = Hints(nodes=(c.node,))
    return out, ""


def usable(endpoints, node: str, zone: str):
    """kube-proxy's choice among ready endpoints (each with .zones and .hint_nodes) on a
    node: those hinted for it when every one has a hint and one is for it, else all."""
    if not endpoints:
        return endpoints
    if all(e.hint_nodes for e in endpoints) and any(node in e.hint_nodes for e in endpoints):
        return tuple(e for e in endpoints if node in e.hint_nodes)
    if all(e.zones for e in endpoints) and zone and any(zone in e.zones for e in endpoints):
        return tuple(e for e in endpoints if zone in e.zones)
    return endpoints
