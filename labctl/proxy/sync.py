"""Programming service rules into the nodes: one transaction per node, all
nodes in parallel.

Each node has a record (labctl.state.records, kind "proxy"): the mode, and per
service port a fingerprint of everything its rules depend on plus what its
rules put in the kernel. With a record, a sync is partial: only service ports
whose fingerprint changed are rendered and written; and with the lab's state
(the topology the records were synced from) only the services that differ
from it, or select a pod that differs, are fingerprinted at all. Without a
record (a new node, a record left pending by a sync that never finished, a
changed proxyMode) the sync is full and replaces the node's tables, so it is
always safe.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl import failpoints
from labctl.model import names
from labctl.kernel import run
from labctl.model.objects import Topology
from labctl.plumbing.node import masquerade_chains
from labctl.proxy import conntrack, iptables, ipvs, nftables
from labctl.proxy.endpoints import ServicePortInfo, affected_services, service_ports
from labctl.state.records import RecordKind
from labctl.state.store import LabDir

MODES = ("iptables", "nftables", "ipvs")
RECORD_VERSION = 3  # 3: per service port, its endpoint count and UDP frontends


@dataclass
class NodeSync:
    node: str
    mode: str
    full: bool
    text: str
    services: dict[str, dict]  # the node's new record: service port -> what is in the kernel
    touched: frozenset[str]  # keys of the service ports rendered or removed
    udp: dict | None = None  # the touched UDP ports' frontends -> their endpoints now (stale conntrack entries)
    left_iptables: bool = False  # the node's iptables tables were reset on leaving iptables mode

    extra: dict | None = None  # IPVS mode: what the record keeps besides the services (the sets' members)
    ipvs_state: "ipvs.NodeIpvs | None" = None  # IPVS mode: the rendered node
    moved: set | None = None  # IPVS mode, partial sync: virtual servers whose real servers are read back

    @property
    def changed(self) -> int:
        return len(self.touched)

    @property
    def replaced_filter(self) -> bool:
        """Whether the node's iptables filter table was rewritten whole (other chains in it are gone)."""
        return self.left_iptables or (self.full and self.mode in ("iptables", "ipvs"))

    @property
    def argv(self) -> list[str]:
        return _argv(self.mode, self.full)

    @property
    def rules(self) -> int:
        return sum(1 for line in self.text.splitlines() if line.startswith(("-A ", "-I ", "add rule", "add element")))


def _argv(mode: str, full: bool) -> list[str]:
    if mode == "iptables":
        return ["iptables-restore"] if full else ["iptables-restore", "--noflush"]
    return ["nft", "-f", "-"]


def _records(labdir: LabDir) -> RecordKind:
    return RecordKind(labdir, "proxy", RECORD_VERSION)


def read_record(labdir: LabDir, node: str) -> dict | None:
    """The node's record; None when there is none or a sync of it never finished."""
    return _records(labdir).read(node)


def require_mode(mode: str, scheduler: str = "rr") -> None:
    run.require("conntrack", "conntrack")  # stale UDP entries are deleted after syncs, in every mode
    if mode == "ipvs":
        from labctl.proxy import ipvs_kernel

        run.require("iptables-restore", "iptables")
        run.require("ipset", "ipset")
        ipvs_kernel.require(scheduler)
    elif mode == "nftables":
        run.require("nft", "nftables")
    else:
        run.require("iptables-restore", "iptables")


RESCAN = object()  # a scoped plan cannot be made: plan again with every service port


def _service_of(key: str) -> str:
    """The service key (ns/name) of a service port key (ns/name[:port]/proto)."""
    return key.rsplit("/", 1)[0].split(":", 1)[0]


def _entry(info: ServicePortInfo, node_ip: str) -> dict:
    """What a node's record keeps of a service port besides its rules: its endpoint
    count (kube-proxy's large-cluster threshold counts them all) and its UDP frontends."""
    return {"eps": len(info.endpoints), "udp": sorted(conntrack.targets([info], node_ip))}


def _udp_frontends(infos: dict[str, ServicePortInfo], touched, old: dict, node_ip: str) -> dict:
    """The frontends of the touched UDP service ports -> the endpoints now (none for a
    frontend that went away): where stale conntrack entries may point."""
    out: dict = {}
    for k in touched:
        if k.endswith("/udp"):
            out.update({tuple(fe): frozenset() for fe in old.get(k, {}).get("udp", [])})
    for k in touched:
        if k.endswith("/udp") and k in infos:
            out.update(conntrack.targets([infos[k]], node_ip))
    return out


def _plan_node(topo: Topology, node: str, infos: list[ServicePortInfo], rec: dict | None, scope: set[str] | None = None):
    """The node's iptables or nftables sync; None when nothing changed. `scope`: `infos`
    holds only these services' ports (the others are as the record says), or RESCAN
    when that is not enough to plan."""
    mode = topo.lab.proxy_mode
    cidr = topo.lab.pod_network
    node_ip = topo.lab.node(node).ip
    usable = rec is not None and rec.get("mode") == mode
    old = rec["services"] if usable else {}
    kept = {k: v for k, v in old.items() if _service_of(k) not in scope} if scope is not None else {}
    if scope is not None and (not usable or any("eps" not in v for v in kept.values())):
        return RESCAN
    total = sum(v["eps"] for v in kept.values()) + sum(len(i.endpoints) for i in infos)
    large = mode == "iptables" and total > iptables.LARGE_CLUSTER_ENDPOINTS
    if any(v["fp"].endswith("+large") != large for v in kept.values()):
        return RESCAN  # crossing kube-proxy's large-cluster threshold changes every service's rules
    fps = {i.key: i.fingerprint(node) + ("+large" if large else "") for i in infos}
    by_key = {i.key: i for i in infos}

    def _render(i: ServicePortInfo):
        if mode == "iptables":
            return iptables.render_service(i, node, cidr, large, node_ip)
        return nftables.render_service(i, node, cidr, node_ip)

    if usable:
        changed = {i.key: _render(i) for i in infos if old.get(i.key, {}).get("fp") != fps[i.key]}
        changed.update({k: None for k in old if k not in fps and k not in kept})
        module = iptables if mode == "iptables" else nftables
        text = module.partial(changed, old, fps)
        services = dict(kept)
        services.update({k: {**old[k], **_entry(i, node_ip)} for k, i in by_key.items() if k in old and k not in changed})
        services.update({k: {**piece.record(fps[k]), **_entry(by_key[k], node_ip)} for k, piece in changed.items() if piece is not None})
        udp = _udp_frontends(by_key, changed, old, node_ip)
        return NodeSync(node, mode, False, text, services, frozenset(changed), udp) if text else None
    pieces = {i.key: _render(i) for i in infos}
    if mode == "iptables":
        text = iptables.full(iptables.assemble(list(pieces.values())), masquerade_chains(topo.lab, topo.lab.node(node)))
    else:
        text = nftables.full(nftables.assemble(list(pieces.values())), topo.lab.service_network)
    services = {k: {**p.record(fps[k]), **_entry(by_key[k], node_ip)} for k, p in pieces.items()}
    return NodeSync(node, mode, True, text, services, frozenset(pieces), _udp_frontends(by_key, pieces, {}, node_ip))


def plan_node(topo: Topology, node: str, rec: dict | None, scope: set[str] | None, scoped: list[ServicePortInfo] | None, all_ports) -> NodeSync | None:
    """The node's iptables or nftables sync: from the ports of the services in `scope`
    (`scoped`) when that is enough, else from every port (`all_ports()`)."""
    s = _plan_node(topo, node, scoped, rec, scope) if scoped is not None else RESCAN
    return _plan_node(topo, node, all_ports(), rec) if s is RESCAN else s


def _leave(topo: Topology, node: str, old_mode: str) -> list[run.Transaction]:
    """Remove a node's rules of the mode it is leaving (when proxyMode changed)."""
    ns = names.node_netns(topo.lab.name, node)
    if old_mode in ("iptables", "ipvs"):  # back to flannel's chains alone
        flannel = run.Transaction(ns, ["iptables-restore"], iptables.full(None, masquerade_chains(topo.lab, topo.lab.node(node))))
        if old_mode == "iptables":
            return [flannel]
        from labctl.proxy import ipvs_kernel

        run.apply_all([flannel])
        ipvs_kernel.flush(ns)
        ipvs_kernel.remove_device(ns)
        return [run.Transaction(ns, ["ipset", "restore"], ipvs.ipset_destroy())]
    return [run.Transaction(ns, ["nft", "-f", "-"], f"add table {nftables.TABLE}\ndelete table {nftables.TABLE}\n")]


def confirm(labdir: LabDir) -> None:
    """The lab's state now says what the last sync was made from: the next sync may
    plan from the difference between that state and its topology."""
    _records(labdir).clear("unconfirmed")


def sync(labdir: LabDir, topo: Topology, nodes: list[str] | None = None, previous: Topology | None = None) -> list[NodeSync]:
    """Bring every node's service rules to what `topo` says; returns the transactions run.
    `previous`: the topology the records were synced from (the lab's state), so that only
    the services it differs in are looked at; without it, every service port is."""
    lab = topo.lab.name
    mode = topo.lab.proxy_mode
    # a sync whose state was never written (a crash in between) leaves records the state does not describe
    store = _records(labdir)
    scope = affected_services(previous, topo) if previous is not None and not store.marked("unconfirmed") else None
    store.mark("unconfirmed")
    everything: list[ServicePortInfo] | None = None

    def all_ports() -> list[ServicePortInfo]:
        nonlocal everything
        if everything is None:
            everything = service_ports(topo)
        return everything

    scoped = service_ports(topo, only=scope) if scope is not None and mode != "ipvs" else None
    syncs, leaving, known = [], [], set()
    for node in nodes or [n.name for n in topo.lab.nodes]:
        rec = store.read(node)
        if rec is not None or store.pending(node):  # a new node has no conntrack entries yet
            known.add(node)
        left = False
        if rec is not None and rec.get("mode") not in (None, mode):
            leaving += _leave(topo, node, rec["mode"])
            left = rec["mode"] in ("iptables", "ipvs")
            rec = None
        if mode == "ipvs":
            s = _plan_ipvs(topo, node, all_ports(), rec)
        else:
            s = plan_node(topo, node, rec, scope, scoped, all_ports)
        if s is not None:
            s.left_iptables = left
            syncs.append(s)
    run.apply_all(leaving)
    if not syncs:
        return []
    store.begin([s.node for s in syncs])  # pending until the transactions are in: a crash in between means a full sync next time
    if mode == "ipvs":
        _apply_ipvs(topo, syncs)
    else:
        run.apply_all([run.Transaction(names.node_netns(lab, s.node), s.argv, s.text) for s in syncs])
    failpoints.hit("rules")
    for s in syncs:
        store.write(s.node, {"mode": s.mode, "services": s.services, **(s.extra or {})})
    _clean_udp(topo, [s for s in syncs if s.node in known and s.udp])
    return syncs


def _each_node(topo: Topology, syncs: list[NodeSync], work) -> None:
    """work(node namespace, sync) for every node's sync, nodes in parallel; the first error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    if not syncs:
        return
    lab = topo.lab.name
    with ThreadPoolExecutor(max_workers=min(8, len(syncs))) as pool:
        for f in [pool.submit(work, names.node_netns(lab, s.node), s) for s in syncs]:
            f.result()


def _clean_udp(topo: Topology, syncs: list[NodeSync]) -> None:
    """After a sync that changed a UDP service port (or removed one), delete the node's
    conntrack entries that still translate to an address that is no endpoint of it."""
    _each_node(topo, syncs, lambda ns, s: conntrack.clean(ns, s.udp))


# -- IPVS mode -------------------------------------------------------------------------


def _plan_ipvs(topo: Topology, node: str, infos: list[ServicePortInfo], rec: dict | None) -> NodeSync | None:
    """The node's IPVS state. With a record of the same mode: nothing when no service
    port's fingerprint moved, else the set members that changed, and the moved ports'
    virtual servers to read back (the others are as the last sync left them)."""
    want = ipvs.render(topo, node, infos)
    node_ip = topo.lab.node(node).ip
    by_key = {i.key: i for i in infos}
    fps = {i.key: f"{i.fingerprint(node)}/{topo.lab.ipvs_scheduler}" for i in infos}
    services = {k: {"fp": fp, **_entry(by_key[k], node_ip)} for k, fp in fps.items()}
    extra = {"sets": {k: sorted(v) for k, v in want.sets.items()}}
    if rec is not None and rec.get("mode") == "ipvs":
        old = rec["services"]
        moved = {k for k, fp in fps.items() if old.get(k, {}).get("fp") != fp}
        removed = {k for k in old if k not in fps}
        if not moved and not removed:
            return None
        text = ipvs.ipset_update(want.sets, rec.get("sets", {}))
        reread = {vs.key for vs in want.servers.values() if f"{vs.service}/{vs.proto}" in moved}
        udp = _udp_frontends(by_key, moved | removed, old, node_ip)
        return NodeSync(node, "ipvs", False, text, services, frozenset(moved | removed), udp, extra=extra, ipvs_state=want, moved=reread)
    text = ipvs.full(ipvs.chains(topo.lab.pod_network), masquerade_chains(topo.lab, topo.lab.node(node)))
    udp = _udp_frontends(by_key, fps, {}, node_ip)
    return NodeSync(node, "ipvs", True, text, services, frozenset(fps), udp, extra=extra, ipvs_state=want)


def apply_ipvs_node(ns: str, s: NodeSync, full_read: bool = False) -> int:
    """One node's IPVS sync: sets first (the rules match on them), the rules (full
    syncs), sysctls, new addresses, the IPVS table, stale addresses last. Returns
    the netlink requests sent to the IPVS table."""
    from labctl.kernel import netns
    from labctl.proxy import ipvs_kernel

    want = s.ipvs_state
    assert want is not None
    sets = ipvs.ipset_full(want.sets) if s.full else s.text
    run.apply_all([run.Transaction(ns, ["ipset", "restore"], sets)] if sets else [])
    if s.full:
        run.apply_all([run.Transaction(ns, ["iptables-restore"], s.text)])
        netns.write_sysctls(ns, ipvs.SYSCTLS)
    have = ipvs_kernel.addresses(ns)
    ipvs_kernel.set_addresses(ns, sorted(want.addresses - (have or set())), [], create=have is None)
    # a full sync reads every real server back; a partial one those of the service ports that moved
    current = ipvs_kernel.read(ns, None if s.full or full_read else s.moved, want.servers)
    changes = ipvs.diff(current, want.servers)
    ipvs_kernel.apply(ns, changes)
    ipvs_kernel.set_addresses(ns, [], sorted((have or set()) - want.addresses))
    return changes.requests


def _apply_ipvs(topo: Topology, syncs: list[NodeSync]) -> None:
    """Every node's IPVS sync, nodes in parallel."""
    _each_node(topo, syncs, apply_ipvs_node)
