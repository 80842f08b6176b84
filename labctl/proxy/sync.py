"""The change tracker every proxy mode shares: which nodes' service rules to
sync, from what, and the records of what they hold.

Each node has a record (labctl.state.records, kind "proxy"): the mode, and
per service port a fingerprint of everything its rules depend on plus what its
rules put in the kernel. With a record, a sync is partial: only service ports
whose fingerprint changed are rendered and written; and with the lab's state
(the topology the records were synced from) only the services that differ
from it, or select a pod that differs, are fingerprinted at all. Without a
record (a new node, a record left pending by a sync that never finished, a
changed proxyMode) the sync is full and replaces the node's tables, so it is
always safe. What is mode-specific (rendering, the kernel side) is the mode's
(labctl.proxy.mode); nothing here asks which mode it is.
"""

from __future__ import annotations

from labctl import failpoints, registry
from labctl.kernel import run
from labctl.model import family, names
from labctl.model.objects import LabSpec, Topology
from labctl.proxy import conntrack
from labctl.proxy.endpoints import ServicePortInfo, affected_services, service_ports
from labctl.proxy.mode import NodeContext, NodeSync
from labctl.state.records import RecordKind
from labctl.state.store import LabDir

RECORD_VERSION = 4  # 3: per service port, its endpoint count and UDP frontends; 4: kube-proxy layouts of upstream 1.35 (a full sync rewrites them)


def _records(labdir: LabDir, fam: int = 4) -> RecordKind:
    """Each family's rules have their own records (kube-proxy runs one proxier per family)."""
    return RecordKind(labdir, "proxy6" if fam == 6 else "proxy", RECORD_VERSION)


def read_record(labdir: LabDir, node: str, fam: int = 4) -> dict | None:
    """The node's record; None when there is none or a sync of it never finished."""
    return _records(labdir, fam).read(node)


def require_mode(spec: LabSpec) -> None:
    """What the lab's proxy mode needs from the host (exit 3)."""
    run.require("conntrack", "conntrack")  # stale UDP entries are deleted after syncs, in every mode
    registry.proxy_mode(spec.proxy_mode).require(spec)


def confirm(labdir: LabDir) -> None:
    """The lab's state now says what the last sync was made from: the next sync may
    plan from the difference between that state and its topology."""
    for fam in (4, 6):
        _records(labdir, fam).clear("unconfirmed")


def plan_node(topo: Topology, node: str, rec: dict | None, scope: set[str] | None, all_ports, scoped=None) -> NodeSync | None:
    """One node's sync in the lab's mode (used by `sync` and the benchmarks)."""
    ctx = NodeContext(topo, node, rec, scope, scoped or (lambda: service_ports(topo, only=scope)), all_ports)
    return registry.proxy_mode(topo.lab.proxy_mode).plan(ctx)


def sync(labdir: LabDir, topo: Topology, nodes: list[str] | None = None, previous: Topology | None = None) -> list[NodeSync]:
    """Bring every node's service rules to what `topo` says, each family's from its view
    of the lab (labctl.model.family); returns the syncs run. `previous`: the topology the
    records were synced from (the lab's state), so that only the services it differs in
    are looked at; without it, every service port is."""
    out = []
    for fam, view in family.views(topo):
        before = family.view(previous, fam) if previous is not None and fam in family.lab_families(previous.lab) else None
        out += _sync(labdir, view, fam, nodes, before)
    return out


def _sync(labdir: LabDir, topo: Topology, fam: int, nodes: list[str] | None, previous: Topology | None) -> list[NodeSync]:
    mode = registry.proxy_mode(topo.lab.proxy_mode)
    store = _records(labdir, fam)
    # a sync whose state was never written (a crash in between) leaves records the state does not describe
    scope = affected_services(previous, topo) if previous is not None and not store.marked("unconfirmed") else None
    store.mark("unconfirmed")
    cache: dict[str, list[ServicePortInfo]] = {}

    def all_ports() -> list[ServicePortInfo]:
        if "all" not in cache:
            cache["all"] = service_ports(topo)
        return cache["all"]

    def scoped() -> list[ServicePortInfo]:
        if "scoped" not in cache:
            cache["scoped"] = service_ports(topo, only=scope)
        return cache["scoped"]

    syncs, known = [], set()
    for node in nodes or [n.name for n in topo.lab.nodes]:
        rec = store.read(node)
        if rec is not None or store.pending(node):  # a new node has no conntrack entries yet
            known.add(node)
        left = False
        was = store.last(node, "mode")  # even from a record of another version, or one left pending
        if was not in (None, mode.name) and any(m.name == was for m in registry.proxy_modes()):
            old = registry.proxy_mode(was)
            old.leave(topo, node)
            left, rec = old.replaces_filter, None
        s = mode.plan(NodeContext(topo, node, rec, scope, scoped, all_ports))
        if s is not None:
            s.replaced_filter = left or (s.full and mode.replaces_filter)
            s.family = fam
            syncs.append(s)
    if not syncs:
        return []
    store.begin([s.node for s in syncs])  # pending until the kernel has them: a crash in between means a full sync next time
    mode.apply(topo, syncs)
    failpoints.hit("rules")
    for s in syncs:
        store.write(s.node, {"mode": s.mode, "services": s.services, **s.extra})
    clean_udp(topo, [s for s in syncs if s.node in known and s.udp])
    return syncs


def each_node(topo: Topology, syncs: list[NodeSync], work) -> None:
    """work(node namespace, sync) for every node's sync, nodes in parallel; the first error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    if not syncs:
        return
    lab = topo.lab.name
    with ThreadPoolExecutor(max_workers=min(8, len(syncs))) as pool:
        for f in [pool.submit(work, names.node_netns(lab, s.node), s) for s in syncs]:
            f.result()


def clean_udp(topo: Topology, syncs: list[NodeSync]) -> None:
    """After a sync that changed a UDP service port (or removed one), delete the node's
    conntrack entries that still translate to an address that is no endpoint of it."""
    each_node(topo, syncs, lambda ns, s: conntrack.clean(ns, s.udp))
