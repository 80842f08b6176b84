"""proxyMode ebpf: Services the way Cilium does them, without kube-proxy.

Each node gets the datapath of labctl/proxy/bpf/lb.c, its maps pinned under
/sys/fs/bpf/labctl/<lab>/<node>/ (labctl.kernel.bpf), and every pod's host-side
veth carries `from_container` (tc ingress: service lookup, backend choice kept
by the program's conntrack, sessionAffinity ClientIP, DNAT; a hairpin also
SNATs to 169.254.42.1; no endpoint: a TCP reset) and `to_container` (tc egress:
the reply's source back to the Service). A change of Services is a change of
map entries (labctl.proxy.bpfmaps renders each port's and diffs them; a batch syscall per map writes them),
not of a ruleset: no KUBE-* chain, no kube-proxy table, no IPVS. The node keeps
flannel's iptables chains, and NetworkPolicy its chains, which see the
translated addresses.

The node's own devices carry the rest: eth0 `from_netdev` (NodePort,
LoadBalancer and external IPs from outside, with SNAT to the node under externalTrafficPolicy Cluster and
loadBalancerSourceRanges) and `from_host` (the node's own traffic to a
frontend; a pod's reply to an outside client), cni0 and the overlay device
`to_host` (replies to the node's own connections).
"""

from __future__ import annotations

from labctl.model.objects import LabSpec, Topology
from labctl.proxy.endpoints import ServicePortInfo
from labctl.proxy.mode import NodeContext, NodeSync, ProxyMode, entry, udp_frontends


class Ebpf(ProxyMode):
    name = "ebpf"
    replaces_filter = True  # its first sync writes flannel's nat and filter tables whole
    bpf_maps = True
    decider = "the eBPF datapath's maps (Cilium-style, no kube-proxy)"
    tracer = "xtables"  # the node's netfilter rules (flannel's, NetworkPolicy's) are traced as in iptables mode; the program's translation comes from its ct4

    def require(self, spec: LabSpec) -> None:
        from labctl.kernel import bpf

        bpf.require()

    def plan(self, ctx: NodeContext) -> NodeSync | None:
        """The node's map changes: with a record of this mode, the service ports in
        scope whose fingerprint moved are rendered again and the others kept as
        recorded (their entries are not looked at); without one, all of it (apply
        then starts from empty maps)."""
        from labctl.kernel.bpf import node_dir
        from labctl.proxy import bpfmaps
        from labctl.proxy.mode import service_of

        topo, node, rec = ctx.topo, ctx.node, ctx.record
        usable = rec is not None and rec.get("mode") == self.name and "backendIds" in rec
        old = rec["services"] if usable else {}
        if usable and ctx.scope is not None:
            infos = ctx.scoped()
            candidates = {i.key for i in infos}
            removed = [k for k in old if service_of(k) in ctx.scope and k not in candidates]
        else:
            infos = ctx.all_ports()
            candidates = {i.key for i in infos}
            removed = [k for k in old if k not in candidates]
        fps = {i.key: i.fingerprint(node) for i in infos}
        changed = [i for i in infos if not usable or old.get(i.key, {}).get("fp") != fps[i.key]]
        if usable and not changed and not removed:
            return None
        ch, parts, ids = bpfmaps.diff(changed, removed, old, rec if usable else {}, node, ctx.node_ip)
        if not usable:
            ch.updates["lb4_config"] = bpfmaps.config(ctx.node_ip)
        by_key = {i.key: i for i in infos}
        services = {k: v for k, v in old.items() if k not in parts}
        for k, part in parts.items():
            if part is not None:
                services[k] = {"fp": fps[k], **entry(by_key[k], ctx.node_ip), **part}
        touched = frozenset(parts)
        udp = udp_frontends(by_key, touched, old, ctx.node_ip)
        text = "\n".join(ch.lines(str(node_dir(topo.lab.name, node))))
        return NodeSync(node, self.name, not usable, text, services, touched, udp, extra=ids, state=ch, entries=ch.entries)

    def apply(self, topo: Topology, syncs: list[NodeSync]) -> None:
        from labctl.kernel import bpf, run
        from labctl.model import names
        from labctl.plumbing.node import masquerade_chains
        from labctl.proxy.iptables import full
        from labctl.proxy.sync import each_node

        full_syncs = [s for s in syncs if s.full]
        run.apply_all(
            [
                run.Transaction(names.node_netns(topo.lab.name, s.node), ["iptables-restore"], full(None, masquerade_chains(topo.lab, topo.lab.node(s.node))))
                for s in full_syncs
            ]
        )
        _prepare(topo)

        def one(ns: str, s: NodeSync) -> None:
            made = bpf.load(topo.lab.name, s.node, fresh=s.full)  # a full sync: maps of unknown content (a lost record) start empty
            write(topo.lab.name, s.node, s.state)
            # programs made now go on every device (the pods' veths too: a mode switched on a running lab);
            # otherwise the node's own devices are checked, and new pods' veths are pods_wired's
            bpf.attach(topo.lab.name, s.node, ns, _hooks(topo, s.node) if made else _hooks(topo, s.node, pods=False))

        each_node(topo, syncs, one)

    def pods_wired(self, topo: Topology, pods) -> None:
        """New pods' veths get the programs (their node's are loaded first if needed)."""
        from concurrent.futures import ThreadPoolExecutor

        from labctl.kernel import bpf
        from labctl.model import names

        if not pods:
            return
        _prepare(topo)

        def one(node: str) -> None:
            made = bpf.load(topo.lab.name, node)
            veths = [names.pod_veth(topo.lab.name, p.namespace, p.name) for p in pods if p.node == node]
            hooks = _hooks(topo, node) if made else [(v, hook, prog) for v in veths for prog, hook in bpf.POD]
            bpf.attach(topo.lab.name, node, names.node_netns(topo.lab.name, node), hooks)

        nodes = sorted({p.node for p in pods})
        with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
            for f in [pool.submit(one, n) for n in nodes]:
                f.result()

    def leave(self, topo: Topology, node: str) -> None:
        """No program on the pods' veths, no pinned map of this node."""
        from labctl.kernel import bpf
        from labctl.model import names

        bpf.detach(names.node_netns(topo.lab.name, node), list(dict.fromkeys(dev for dev, _, _ in _hooks(topo, node))))
        bpf.unpin_node(topo.lab.name, node)

    def status(self, spec: LabSpec) -> dict:
        from labctl.kernel.bpf import lab_dir

        return {"bpfPins": str(lab_dir(spec.name))}

    def explain(self, info: ServicePortInfo, node: str) -> list[str]:
        from labctl.kernel.bpf import node_dir
        from labctl.proxy.policy import decide

        s, pol = info.service, decide(info, node)
        eps = pol.local if pol.internal_local else pol.endpoints
        where = node_dir("LAB", node)
        backends = ", ".join(e.addr for e in eps) or ("none here: dropped" if pol.has_endpoints else "none: the program answers a TCP reset")
        return [
            f"tc ingress of the client pod's veth, program from_container: lb4_services[{s.cluster_ip}:{info.port.port}/{info.proto.upper()} slot 0] "
            f"-> {len(eps)} slot(s) -> lb4_backends: {backends}" + (" (sessionAffinity: lb4_affinity)" if s.session_affinity == "ClientIP" else ""),
            f"maps pinned under {str(where).replace('/LAB/', '/<lab>/')} (bpftool map dump pinned ...); replies: to_container on the client's veth, lb4_revnat",
        ]


def write(lab: str, node: str, ch) -> None:
    """A sync's map changes, a batch syscall per map: backends and rev-NAT entries
    before the slots that name them, slots deleted before the backends they named."""
    from labctl.kernel import bpf

    d = bpf.node_dir(lab, node)
    for m in ("lb4_config", "lb4_backends", "lb4_revnat", "lb4_src_range", "lb4_services"):
        bpf.update(d / m, ch.updates.get(m, {}))
    for m in ("lb4_services", "lb4_src_range", "lb4_revnat", "lb4_backends"):
        if ch.deletes.get(m):
            bpf.delete(d / m, ch.deletes[m])


def _hooks(topo: Topology, node: str, pods: bool = True) -> list[tuple[str, str, str]]:
    """Every program of a node: its own devices', each of its pods' veths' (`pods`)."""
    from labctl import registry
    from labctl.kernel import bpf
    from labctl.model import names

    veths = [names.pod_veth(topo.lab.name, p.namespace, p.name) for p in topo.pods if p.node == node] if pods else []
    return bpf.node_hooks(list(registry.overlay(topo.lab.overlay).devices)) + [(v, hook, prog) for v in veths for prog, hook in bpf.POD]


def _prepare(topo: Topology) -> None:
    """The bpffs mounted and the lab's pin directory journaled before anything is
    pinned in it (so that `down` removes it even after a crash in between)."""
    from labctl.kernel import bpf
    from labctl.lab import LabHandle

    bpf.mount()
    path = bpf.lab_dir(topo.lab.name)
    if path.exists():  # made only after it was journaled
        return
    journal = LabHandle(topo.lab.name).journal
    if str(path) not in journal.replay().files:
        journal.file(str(path))


MODE = Ebpf()
