"""What `up`, `apply`, `delete` and `ready` each want of a lab, as a function of
the state it is applied to. Pure (model only).

A change is computed from the applied state read under the lab's lock, so
commands that race each other are serialised and none loses another's work.
Which objects a file owns follows kubectl's apply: `up FILE` prunes only the
objects its previous file had; objects added with `apply` stay until deleted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from labctl import manifests_io
from labctl.model.documents import Document
from labctl.model.errors import InvalidInput
from labctl.model.load import build
from labctl.model.objects import Topology

Key = tuple[str, str | None, str | None]


@dataclass(frozen=True)
class Applied:
    """A running lab's state: its topology, the file `up` took it from, and the
    keys of that file's objects (the ones the next `up` may prune)."""

    topology: Topology
    source: str
    file_keys: frozenset[Key]


@dataclass
class Change:
    topology: Topology
    source: str
    file_keys: frozenset[Key]
    report: dict[str, Any] = field(default_factory=dict)  # what the command adds to its JSON


Desire = Callable[[Applied | None], Change]


def _keys(docs: list[Document]) -> frozenset[Key]:
    return frozenset(d.key for d in docs if d.kind != "Lab")


def up(docs: list[Document], source: str) -> Desire:
    """The lab FILE describes, plus the objects `apply` added that FILE does not name."""

    def desire(applied: Applied | None) -> Change:
        mine = _keys(docs)
        kept: list[Document] = []
        if applied is not None:
            applied = _expired(applied)
            kept = [d for d in manifests_io.stored(applied.topology.documents) if d.key not in mine and d.key not in applied.file_keys]
        topo = build(docs + kept, source, applied.topology if applied else None)
        if applied is not None:
            topo = _graceful(applied.topology, topo, lambda previous: build(docs + kept, source, previous))
        return Change(topo, source, mine)

    return desire


def _running(applied: Applied | None) -> Applied:
    if applied is None:
        raise AssertionError("apply, delete and ready change a running lab")
    return _expired(applied)


def _expired(a: Applied, now: float | None = None) -> Applied:
    """The lab without the terminating pods whose grace period is over (the reaper
    removes them on time; any change does it too, should the reaper have died)."""
    now = time.time() if now is None else now
    left = {k: t for k, t in a.topology.terminating.items() if t > now}
    if left == a.topology.terminating:
        return a
    topo = build(manifests_io.stored(a.topology.documents), a.source, previous=replace(a.topology, terminating=left), lab_spec=a.topology.lab)
    return Applied(topo, a.source, a.file_keys)


def _graceful(before: Topology, topo: Topology, rebuild: Callable[[Topology], Topology], grace: dict[str, float] | None = None) -> Topology:
    """`topo` (which `rebuild(previous)` makes), with the pods that leave it and have a grace period
    (`grace` for pods a command names, else the pod's own terminationGracePeriodSeconds)
    kept, terminating, until it is over, as the API server and kubelet do. A pod
    whose Namespace went leaves at once."""
    now = time.time()
    grace = grace or {}
    staying = {}
    for p in before.pods:
        if p.terminating or p.key in {q.key for q in topo.pods}:
            continue
        seconds = grace.get(p.key, p.grace)
        if seconds and seconds > 0 and p.namespace in topo.namespaces:
            staying[p.key] = now + seconds
    if not staying:
        return topo
    return rebuild(replace(before, terminating={**before.terminating, **staying}))


def expire() -> Desire:
    """What the reaper asks: the terminating pods whose time is up, gone."""

    def desire(applied: Applied | None) -> Change:
        a = _running(applied)
        return Change(a.topology, a.source, a.file_keys, {})

    return desire


def apply(incoming: list[Document], source: str) -> Desire:
    def desire(applied: Applied | None) -> Change:
        a = _running(applied)
        if not incoming:
            raise InvalidInput(f"{source} holds no documents")
        docs = manifests_io.merge(manifests_io.stored(a.topology.documents), incoming)
        topo = build(docs, source, previous=a.topology, lab_spec=a.topology.lab)
        topo = _graceful(a.topology, topo, lambda previous: build(docs, source, previous=previous, lab_spec=a.topology.lab))
        return Change(topo, a.source, a.file_keys, {"applied": [d.ident() for d in incoming]})

    return desire


def delete(targets: list[Document], source: str, ignore_not_found: bool, grace: float | None = None) -> Desire:
    """Remove the targets. A Pod that leaves with a grace period (`grace` for the Pods
    named, else each pod's own spec.terminationGracePeriodSeconds, a Deployment's pods
    too) stays serving and terminating until the period is over; the reaper then
    removes it."""

    def desire(applied: Applied | None) -> Change:
        a = _running(applied)
        kept, removed = manifests_io.remove(manifests_io.stored(a.topology.documents), targets, ignore_not_found)
        topo = build(kept, source, previous=a.topology, lab_spec=a.topology.lab)
        named = {f"{t.key[1]}/{t.name}": grace for t in targets if t.kind == "Pod" and grace is not None}
        topo = _graceful(a.topology, topo, lambda previous: build(kept, source, previous=previous, lab_spec=a.topology.lab), named)
        report: dict[str, Any] = {"deleted": removed}
        now = time.time()
        fresh = {k: t for k, t in topo.terminating.items() if k not in a.topology.terminating}
        if fresh:
            report["terminating"] = {k: round(t - now, 3) for k, t in sorted(fresh.items())}
        return Change(topo, a.source, a.file_keys, report)

    return desire


def ready(pod: str, value: bool) -> Desire:
    """Mark a pod ready or not, as its readiness probe would."""

    def desire(applied: Applied | None) -> Change:
        a = _running(applied)
        if pod not in {p.key for p in a.topology.pods}:
            raise InvalidInput(f"no pod {pod} in lab {a.topology.lab.name}")
        marked = replace(a.topology, readiness={**a.topology.readiness, pod: value})
        topo = build(manifests_io.stored(a.topology.documents), a.source, previous=marked, lab_spec=a.topology.lab)
        return Change(topo, a.source, a.file_keys, {"pod": pod, "ready": value})

    return desire
