"""Programming service rules into the nodes: one transaction per node, all
nodes in parallel.

Each node has a record (<statedir>/proxy/<node>.json): the mode, and per
service port a fingerprint of everything its rules depend on plus what its
rules put in the kernel. With a record, a sync is partial: only service ports
whose fingerprint changed are rendered and written. Without one (a new node,
a record left pending by a sync that never finished, a changed proxyMode) the
sync is full and replaces the node's tables, so it is always safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from labctl import failpoints, names
from labctl.kernel import run
from labctl.model.objects import Topology
from labctl.plumbing.node import masquerade_chains
from labctl.proxy import conntrack, iptables, ipvs, nftables
from labctl.proxy.endpoints import ServicePortInfo, service_ports
from labctl.state.store import LabDir

MODES = ("iptables", "nftables", "ipvs")
RECORD_VERSION = 2


@dataclass
class NodeSync:
    node: str
    mode: str
    full: bool
    text: str
    services: dict[str, dict]  # the node's new record: service port -> what is in the kernel
    touched: frozenset[str]  # keys of the service ports rendered or removed
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


def _record_path(labdir: LabDir, node: str) -> Path:
    return labdir.path / "proxy" / f"{node}.json"


def _pending_path(labdir: LabDir, node: str) -> Path:
    return labdir.path / "proxy" / f"{node}.pending"


def read_record(labdir: LabDir, node: str) -> dict | None:
    """The node's record; None when there is none or a sync of it never finished."""
    if _pending_path(labdir, node).exists():
        return None
    try:
        rec = json.loads(_record_path(labdir, node).read_text())
    except FileNotFoundError:
        return None
    return rec if rec.get("version") == RECORD_VERSION else None


def _write_record(labdir: LabDir, node: str, data: dict) -> None:
    p = _record_path(labdir, node)
    p.parent.mkdir(exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(data, version=RECORD_VERSION), separators=(",", ":")))
    tmp.replace(p)


def forget(labdir: LabDir, node: str) -> None:
    _record_path(labdir, node).unlink(missing_ok=True)
    _pending_path(labdir, node).unlink(missing_ok=True)


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


def _plan_node(topo: Topology, node: str, infos: list[ServicePortInfo], rec: dict | None) -> NodeSync | None:
    mode = topo.lab.proxy_mode
    cidr = topo.lab.pod_network
    large = mode == "iptables" and iptables.large_cluster(infos)  # crossing it changes every service's rules
    fps = {i.key: i.fingerprint(node) + ("+large" if large else "") for i in infos}

    node_ip = topo.lab.node(node).ip

    def _render(i: ServicePortInfo):
        if mode == "iptables":
            return iptables.render_service(i, node, cidr, large, node_ip)
        return nftables.render_service(i, node, cidr, node_ip)

    usable = rec is not None and rec.get("mode") == mode
    if usable:
        old = rec["services"]
        changed = {i.key: _render(i) for i in infos if old.get(i.key, {}).get("fp") != fps[i.key]}
        changed.update({k: None for k in old if k not in fps})
        module = iptables if mode == "iptables" else nftables
        text = module.partial(changed, old, fps)
        services = {k: v for k, v in old.items() if k in fps}
        services.update({k: piece.record(fps[k]) for k, piece in changed.items() if piece is not None})
        return NodeSync(node, mode, False, text, services, frozenset(changed)) if text else None
    pieces = {i.key: _render(i) for i in infos}
    if mode == "iptables":
        text = iptables.full(iptables.assemble(list(pieces.values())), masquerade_chains(topo.lab, topo.lab.node(node)))
    else:
        text = nftables.full(nftables.assemble(list(pieces.values())), topo.lab.service_network)
    return NodeSync(node, mode, True, text, {k: p.record(fps[k]) for k, p in pieces.items()}, frozenset(pieces))


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


def sync(labdir: LabDir, topo: Topology, nodes: list[str] | None = None) -> list[NodeSync]:
    """Bring every node's service rules to what `topo` says; returns the transactions run."""
    infos = service_ports(topo)
    lab = topo.lab.name
    syncs, leaving, udp_before = [], [], {}
    for node in nodes or [n.name for n in topo.lab.nodes]:
        rec = read_record(labdir, node)
        if rec is not None or _pending_path(labdir, node).exists():  # a new node has no conntrack entries yet
            udp_before[node] = [tuple(f) for f in (rec or {}).get("udp", [])]
        left = False
        if rec is not None and rec.get("mode") not in (None, topo.lab.proxy_mode):
            leaving += _leave(topo, node, rec["mode"])
            left = rec["mode"] in ("iptables", "ipvs")
            rec = None
        s = (_plan_ipvs if topo.lab.proxy_mode == "ipvs" else _plan_node)(topo, node, infos, rec)
        if s is not None:
            s.left_iptables = left
            syncs.append(s)
    run.apply_all(leaving)
    if not syncs:
        return []
    for s in syncs:  # pending until its transaction is in: a crash in between means a full sync next time
        _pending_path(labdir, s.node).parent.mkdir(exist_ok=True)
        _pending_path(labdir, s.node).touch()
    if topo.lab.proxy_mode == "ipvs":
        _apply_ipvs(topo, syncs)
    else:
        run.apply_all([run.Transaction(names.node_netns(lab, s.node), s.argv, s.text) for s in syncs])
    failpoints.hit("rules")
    fronts = {s.node: conntrack.targets(infos, topo.lab.node(s.node).ip) for s in syncs}
    for s in syncs:
        udp = sorted(fronts[s.node])
        _write_record(labdir, s.node, {"mode": s.mode, "services": s.services, **(s.extra or {}), "udp": udp})
        _pending_path(labdir, s.node).unlink()
    _clean_udp(topo, syncs, fronts, udp_before)
    return syncs


def _clean_udp(topo: Topology, syncs: list[NodeSync], fronts: dict, before: dict) -> None:
    """After a sync that changed a UDP service port (or removed one), delete the node's
    conntrack entries that still translate to an address that is no endpoint of it;
    nodes in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    work = []
    for s in syncs:
        if s.node not in before or not any(k.endswith("/udp") for k in s.touched):
            continue
        frontends = dict(fronts[s.node])
        frontends.update({(ip, port): frozenset() for ip, port in before[s.node] if (ip, port) not in frontends})
        work.append((names.node_netns(topo.lab.name, s.node), frontends))
    if work:
        with ThreadPoolExecutor(max_workers=min(8, len(work))) as pool:
            list(pool.map(lambda w: conntrack.clean(*w), work))


# -- IPVS mode -------------------------------------------------------------------------


def _plan_ipvs(topo: Topology, node: str, infos: list[ServicePortInfo], rec: dict | None) -> NodeSync | None:
    """The node's IPVS state. With a record of the same mode: nothing when no service
    port's fingerprint moved, else the set members that changed, and the moved ports'
    virtual servers to read back (the others are as the last sync left them)."""
    want = ipvs.render(topo, node, infos)
    fps = {i.key: {"fp": f"{i.fingerprint(node)}/{topo.lab.ipvs_scheduler}"} for i in infos}
    extra = {"sets": {k: sorted(v) for k, v in want.sets.items()}}
    if rec is not None and rec.get("mode") == "ipvs":
        moved = {k for k, v in fps.items() if rec["services"].get(k) != v}
        removed = {k for k in rec["services"] if k not in fps}
        if not moved and not removed:
            return None
        text = ipvs.ipset_update(want.sets, rec.get("sets", {}))
        reread = {vs.key for vs in want.servers.values() if f"{vs.service}/{vs.proto}" in moved}
        return NodeSync(node, "ipvs", False, text, fps, frozenset(moved | removed), extra=extra, ipvs_state=want, moved=reread)
    text = ipvs.full(ipvs.chains(topo.lab.pod_network), masquerade_chains(topo.lab, topo.lab.node(node)))
    return NodeSync(node, "ipvs", True, text, fps, frozenset(fps), extra=extra, ipvs_state=want)


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
    from concurrent.futures import ThreadPoolExecutor

    lab = topo.lab.name
    with ThreadPoolExecutor(max_workers=min(8, len(syncs))) as pool:
        for f in [pool.submit(apply_ipvs_node, names.node_netns(lab, s.node), s) for s in syncs]:
            f.result()
