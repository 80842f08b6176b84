"""What a proxy mode is: one object behind one interface, chosen by name from
the registry (labctl.model.registry.PROXY_MODES). kube-proxy's shape: one
Proxier per mode, a change tracker shared by all (labctl.proxy.sync) and, per
mode, a sync that renders and applies.

    require(spec)            what the host must have (exit 3), checked before anything is made
    plan(ctx)                render the node's rules and diff them against its record -> a NodeSync
    apply(topo, syncs)       put the planned syncs in the kernel, nodes in parallel
    leave(topo, node)        remove the mode's objects from a node (proxyMode changed)
    node_setup(spec, node)   what a new node needs before its first sync
    policy_entry(spec)       where the NetworkPolicy chain is entered from
    status(spec)             the mode's keys of `labctl status`
    explain(info, node)      where in the node's kernel a service port is decided

RestoreMode is the shared plan of the modes that write one restore-style
transaction per node (iptables, nftables): each service port is a piece
rendered from its inputs, fingerprinted, and only the pieces whose
fingerprint moved are rewritten (a partial sync), unless the node has no
usable record (a full sync, replacing the mode's tables, always safe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from labctl.model.objects import LabSpec, Node, Topology
from labctl.plan.diff import keyed
from labctl.proxy import conntrack
from labctl.proxy.endpoints import ServicePortInfo

RESCAN = object()  # a scoped plan cannot be made: plan again with every service port


@dataclass
class NodeSync:
    node: str
    mode: str
    full: bool
    text: str  # the transaction (restore modes) or the ipset changes (IPVS)
    services: dict[str, dict]  # the node's new record: service port -> what is in the kernel
    touched: frozenset[str]  # keys of the service ports rendered or removed
    udp: dict | None = None  # the touched UDP ports' frontends -> their endpoints now (stale conntrack entries)
    replaced_filter: bool = False  # the node's iptables filter table was rewritten whole (its other chains are gone): set by the tracker
    extra: dict = field(default_factory=dict)  # what the mode's record keeps besides the services
    state: Any = None  # the mode's rendered node, for apply (IPVS: virtual servers, addresses, sets)
    moved: set | None = None  # IPVS, partial sync: virtual servers whose real servers are read back
    entries: int | None = None  # a mode writing map entries, not rules: how many (ebpf)
    family: int = 4  # the IP family whose rules these are (ip6tables for 6)

    @property
    def changed(self) -> int:
        return len(self.touched)

    @property
    def rules(self) -> int:
        if self.entries is not None:
            return self.entries
        return sum(1 for line in self.text.splitlines() if line.startswith(("-A ", "-I ", "add rule", "add element", "map update")))


@dataclass
class NodeContext:
    """What a mode plans a node's sync from."""

    topo: Topology
    node: str
    record: dict | None  # the node's record of this mode (None: a full sync)
    scope: set[str] | None  # services that may have changed (None: every one)
    scoped: Callable[[], list[ServicePortInfo]]  # the ports of the services in scope
    all_ports: Callable[[], list[ServicePortInfo]]  # every port

    @property
    def node_ip(self) -> str:
        ip = self.topo.lab.node(self.node).ip
        assert ip
        return ip


def entry(info: ServicePortInfo, node_ip: str) -> dict:
    """What a node's record keeps of a service port besides its rules: its endpoint
    count (kube-proxy's large-cluster threshold counts them all) and its UDP frontends."""
    return {"eps": len(info.endpoints), "udp": sorted(conntrack.targets([info], node_ip))}


def udp_frontends(infos: dict[str, ServicePortInfo], touched, old: dict, node_ip: str) -> dict:
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


def service_of(key: str) -> str:
    """The service key (ns/name) of a service port key (ns/name[:port]/proto)."""
    return key.rsplit("/", 1)[0].split(":", 1)[0]


class ProxyMode:
    name = ""
    replaces_filter = False  # a full sync rewrites the iptables filter table whole (policy chains go with it)
    record_version = 1
    tracer: str | None = None  # how `labctl trace` follows its rules: "xtables" (xtables-monitor) or "nft" (nft monitor trace)
    traces_ipvs = False  # trace also reads the IPVS connection table (the translation is IPVS's, not a rule's)
    bpf_maps = False  # its services are BPF maps (`labctl bpf lb list` reads them)
    decider = "kube-proxy's {mode} rules"  # what `explain` says decides a Service's traffic

    def require(self, spec: LabSpec) -> None:
        raise NotImplementedError

    def plan(self, ctx: NodeContext) -> NodeSync | None:
        raise NotImplementedError

    def apply(self, topo: Topology, syncs: list[NodeSync]) -> None:
        raise NotImplementedError

    def leave(self, topo: Topology, node: str) -> None:
        raise NotImplementedError

    def pods_wired(self, topo: Topology, pods: list) -> None:
        """New pods' links exist (a mode that attaches to each pod's veth does it now)."""

    def node_setup(self, spec: LabSpec, node: Node) -> list:
        """Transactions (labctl.kernel.run) a new node needs before its first sync."""
        return []

    def policy_entry(self, spec: LabSpec) -> list[tuple[str, str]]:
        """(filter chain, rule) that send traffic into the NetworkPolicy chain."""
        from labctl.policy.rules import JUMPS

        return JUMPS

    def status(self, spec: LabSpec) -> dict[str, Any]:
        return {}

    def explain(self, info: ServicePortInfo, node: str) -> list[str]:
        return []


class RestoreMode(ProxyMode):
    """A mode whose node state is one restore-style transaction of rendered pieces."""

    # -- what each restore mode provides --------------------------------------

    def render_service(self, info: ServicePortInfo, node: str, topo: Topology, large: bool):
        raise NotImplementedError

    def partial(self, changed: dict, old: dict[str, dict], fps: dict[str, str]) -> str:
        raise NotImplementedError

    def full(self, topo: Topology, node: str, pieces: list) -> str:
        raise NotImplementedError

    def argv(self, full: bool, six: bool = False) -> list[str]:
        """The restore command (`six`: the IPv6 family's, where the mode has one)."""
        raise NotImplementedError

    def large(self, endpoints: int) -> bool:
        """Whether kube-proxy's large-cluster layout applies (iptables mode only)."""
        return False

    # -- the shared plan ------------------------------------------------------

    def plan(self, ctx: NodeContext) -> NodeSync | None:
        """From the ports of the services in scope when that is enough, else from every port."""
        s = self._plan(ctx, ctx.scoped(), ctx.scope) if ctx.scope is not None else RESCAN
        return self._plan(ctx, ctx.all_ports(), None) if s is RESCAN else s

    def _plan(self, ctx: NodeContext, infos: list[ServicePortInfo], scope: set[str] | None):
        rec, node, node_ip = ctx.record, ctx.node, ctx.node_ip
        usable = rec is not None and rec.get("mode") == self.name
        old = rec["services"] if usable else {}
        kept = {k: v for k, v in old.items() if service_of(k) not in scope} if scope is not None else {}
        if scope is not None and (not usable or any("eps" not in v for v in kept.values())):
            return RESCAN
        total = sum(v["eps"] for v in kept.values()) + sum(len(i.endpoints) for i in infos)
        large = self.large(total)
        if any(v["fp"].endswith("+large") != large for v in kept.values()):
            return RESCAN  # crossing kube-proxy's large-cluster threshold changes every service's rules
        fps = {i.key: i.fingerprint(node) + ("+large" if large else "") for i in infos}
        by_key = {i.key: i for i in infos}
        if usable:
            d = keyed({k: v["fp"] for k, v in old.items() if k not in kept}, fps)
            changed = {k: self.render_service(by_key[k], node, ctx.topo, large) for k in (*d.added, *d.changed)}
            changed.update({k: None for k in d.removed})
            text = self.partial(changed, old, fps)
            services = dict(kept)
            services.update({k: {**old[k], **entry(by_key[k], node_ip)} for k in d.kept})
            services.update({k: {**piece.record(fps[k]), **entry(by_key[k], node_ip)} for k, piece in changed.items() if piece is not None})
            udp = udp_frontends(by_key, changed, old, node_ip)
            return NodeSync(node, self.name, False, text, services, frozenset(changed), udp) if text else None
        pieces = {i.key: self.render_service(i, node, ctx.topo, large) for i in infos}
        text = self.full(ctx.topo, node, list(pieces.values()))
        services = {k: {**p.record(fps[k]), **entry(by_key[k], node_ip)} for k, p in pieces.items()}
        udp = udp_frontends(by_key, pieces, {}, node_ip)
        return NodeSync(node, self.name, True, text, services, frozenset(pieces), udp)

    def apply(self, topo: Topology, syncs: list[NodeSync]) -> None:
        from labctl.kernel import run
        from labctl.model import names

        six = ":" in topo.lab.pod_network  # the IPv6 family's view: ip6tables-restore
        run.apply_all([run.Transaction(names.node_netns(topo.lab.name, s.node), self.argv(s.full, six), s.text) for s in syncs])
