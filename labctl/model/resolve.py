"""Defaults: node addresses, pod CIDRs, pod placement and pod addresses. Pure.

Resolution is stable: given the previously applied topology of a running lab,
objects that still exist keep their addresses and nodes, so re-running `up`
or `apply` leaves them alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from labctl.model import family, ipam
from labctl.model.errors import Problem
from labctl.model.fields import lb_pool_range
from labctl.model.objects import LabSpec, Pod, Topology


def _inside(ip: str, net) -> bool:
    a = ipaddress.ip_address(ip)
    return a.version == net.version and a in net


def _subnet(cidr: str, net) -> bool:
    n = ipaddress.ip_network(cidr)
    return n.version == net.version and n.subnet_of(net)


def _assign_host_ips(spec: LabSpec, previous: Topology | None, where: str, problems: list[Problem]) -> LabSpec:
    prev_nodes = {n.name: n for n in previous.lab.nodes} if previous else {}
    prev_exts = {e.name: e for e in previous.lab.externals} if previous else {}
    node_net = ipaddress.ip_network(spec.node_network)

    def keep(h, prev):
        # a previous address stays only while it is still on the node network
        if h.ip or prev is None or not prev.ip or not _inside(prev.ip, node_net):
            return h.ip
        return prev.ip

    nodes = [replace(n, ip=keep(n, prev_nodes.get(n.name))) for n in spec.nodes]
    exts = [replace(e, ip=keep(e, prev_exts.get(e.name))) for e in spec.externals]
    used = [h.ip for h in nodes + exts if h.ip]
    lb = [lb_pool_range(spec.load_balancer_pool)] if spec.load_balancer_pool else []
    npool = ipam.node_pool(str(node_net), used, exclude=lb)
    for i, n in enumerate(nodes):
        if n.ip is None:
            try:
                nodes[i] = replace(n, ip=str(npool.allocate()))
            except ipam.PoolExhausted:
                problems.append(Problem(where, f"spec.nodes[{i}].ip", f"nodeNetwork {node_net} has no address left for node {n.name!r}"))
    epool = ipam.external_pool(str(node_net), used + [n.ip for n in nodes if n.ip], exclude=lb)
    for i, e in enumerate(exts):
        if e.ip is None:
            try:
                exts[i] = replace(e, ip=str(epool.allocate()))
            except ipam.PoolExhausted:
                problems.append(Problem(where, f"spec.externals[{i}].ip", f"nodeNetwork {node_net} has no address left for external {e.name!r}"))
    return replace(spec, nodes=tuple(nodes), externals=tuple(exts))


def _assign_pod_cidrs(spec: LabSpec, previous: Topology | None, where: str, problems: list[Problem]) -> LabSpec:
    pod_net = ipaddress.ip_network(spec.pod_network)
    prev = {n.name: n.pod_cidr for n in previous.lab.nodes if n.pod_cidr} if previous else {}
    prev = {k: v for k, v in prev.items() if _subnet(v, pod_net) and ipaddress.ip_network(v).prefixlen == spec.node_cidr_mask}
    nodes = [replace(n, pod_cidr=n.pod_cidr or prev.get(n.name)) for n in spec.nodes]
    pool = ipam.SubnetPool(spec.pod_network, spec.node_cidr_mask, [n.pod_cidr for n in nodes if n.pod_cidr])
    for i, n in enumerate(nodes):
        if n.pod_cidr is None:
            try:
                nodes[i] = replace(n, pod_cidr=str(pool.allocate(i)))
            except ipam.PoolExhausted:
                problems.append(
                    Problem(
                        where,
                        f"spec.nodes[{i}]",
                        f"podNetwork {spec.pod_network} has no /{spec.node_cidr_mask} left for node {n.name!r} ({pool.count()} in all)",
                    )
                )
    return replace(spec, nodes=tuple(nodes))


def _owner(pod: Pod) -> str | None:
    return f"{pod.namespace}/{pod.owner}" if pod.owner else None


class _Spread:
    """Scheduling: fewest pods of the same owner, then fewest pods, then node order."""

    def __init__(self, nodes: list[str]):
        self.nodes = nodes
        self.load = {n: 0 for n in nodes}
        self.owned: dict[tuple[str | None, str], int] = {}

    def add(self, pod: Pod, node: str) -> None:
        self.load[node] += 1
        key = (_owner(pod), node)
        self.owned[key] = self.owned.get(key, 0) + 1

    def choose(self, pod: Pod) -> str:
        return min(self.nodes, key=lambda n: (self.owned.get((_owner(pod), n), 0) if pod.owner else 0, self.load[n], self.nodes.index(n)))


def _place_pods(spec: LabSpec, pods: list[Pod], previous: Topology | None, where_of, problems: list[Problem]) -> tuple[list[Pod], dict[str, str]]:
    node_names = [n.name for n in spec.nodes]
    cidr_of = {n.name: n.pod_cidr for n in spec.nodes}
    prev_pods = {p.key: p for p in previous.pods} if previous else {}
    cursors = dict(previous.ipam) if previous else {}

    # Pass 1: pods that exist already keep their node and address.
    placed: dict[str, Pod] = {}
    for pod in pods:
        old = prev_pods.get(pod.key)
        if old is None or old.node not in cidr_of or old.ip is None:
            continue
        if pod.node is not None and pod.node != old.node:
            continue  # moved: recreated on its new node
        if not cidr_of[old.node] or not _inside(old.ip, ipaddress.ip_network(cidr_of[old.node])):
            continue
        placed[pod.key] = replace(pod, node=old.node, ip=old.ip)

    spread = _Spread(node_names)
    pools = {}
    for n in node_names:
        if cidr_of[n]:
            pools[n] = ipam.pod_pool(cidr_of[n], cursor=cursors.get(n))
    for p in placed.values():
        spread.add(p, p.node)
        pools[p.node].reserve(p.ip)

    # Pass 2: new pods, in file order.
    out: list[Pod] = []
    for pod in pods:
        if pod.key in placed:
            out.append(placed[pod.key])
            continue
        if not node_names or (pod.node is not None and pod.node not in pools):
            out.append(pod)  # reported by validation (unknown node)
            continue
        node = pod.node or spread.choose(pod)
        if node not in pools:
            out.append(pod)
            continue
        try:
            ip = str(pools[node].allocate())
        except ipam.PoolExhausted:
            problems.append(Problem(where_of(pod.doc), "metadata.name", f"node {node}'s pod CIDR {cidr_of[node]} has no address left for pod {pod.key}"))
            out.append(pod)
            continue
        spread.add(pod, node)
        out.append(replace(pod, node=node, ip=ip))
    new_cursors = {n: str(pool.cursor) for n, pool in pools.items() if pool.cursor is not None}
    return out, new_cursors


def _previous_view(previous: Topology | None, fam: int) -> Topology | None:
    if previous is None or fam not in family.lab_families(previous.lab):
        return None
    return family.view(previous, fam)


def _merge_hosts(spec: LabSpec, views: list[LabSpec]) -> LabSpec:
    """Each node's and external's addresses (and pod CIDRs) of every family, from the views."""

    def merged(items, groups):
        out = []
        for j, h in enumerate(items):
            ips = tuple(g[j].ip for g in groups)
            extra = {"pod_cidr": groups[0][j].pod_cidr, "pod_cidrs": tuple(g[j].pod_cidr for g in groups)} if hasattr(h, "pod_cidrs") else {}
            out.append(replace(h, ip=ips[0], ips=ips, **extra))
        return tuple(out)

    return replace(spec, nodes=merged(spec.nodes, [v.nodes for v in views]), externals=merged(spec.externals, [v.externals for v in views]))


def resolve(
    spec: LabSpec,
    namespaces: dict[str, dict[str, str]],
    pods: list[Pod],
    deployments,
    documents,
    previous: Topology | None,
    where: str,
    where_of,
) -> tuple[Topology, list[Problem]]:
    from labctl.model.validate import indexed  # a family's problems, their paths naming its slot

    problems: list[Problem] = []
    fams = family.lab_families(spec)
    dual = len(fams) > 1
    before = [_previous_view(previous, f) for f in fams]
    views = []
    for i, fam in enumerate(fams):
        found: list[Problem] = []
        sv = _assign_host_ips(family.spec_view(spec, fam), before[i], where, found)
        views.append(_assign_pod_cidrs(sv, before[i], where, found))
        problems += indexed(found, i, dual)
    spec = _merge_hosts(spec, views) if dual else views[0]
    # Pods deleted with a grace period (their manifest gone, or their Deployment scaled
    # down) stay as they were, terminating, until the reaper removes them; a pod the
    # manifests make again under the same name is a new one.
    made = {p.key for p in pods}
    terminating = {k: t for k, t in (previous.terminating if previous else {}).items() if k not in made}
    nodes = {n.name for n in spec.nodes}
    leaving = [replace(p, terminating=True) for p in (previous.pods if previous else ()) if p.key in terminating and p.node in nodes]
    terminating = {k: t for k, t in terminating.items() if k in {p.key for p in leaving}}
    placed, cursors = _place_pods(views[0], [*pods, *leaving], before[0], where_of, problems)
    if dual:
        # the other family's addresses on the nodes the first family placed the pods on
        on_node = [replace(p, ip=None, ips=()) for p in placed if p.node is not None]
        more, more_cursors = _place_pods(views[1], on_node, before[1], where_of, problems)
        second = {p.key: p.ip for p in more}
        placed = [replace(p, ips=(p.ip, second.get(p.key))) if p.ip and second.get(p.key) else p for p in placed]
        cursors.update({f"{n}@{family.name(fams[1])}": c for n, c in more_cursors.items()})
    elif fams != (4,):
        placed = [replace(p, ips=(p.ip,)) if p.ip else p for p in placed]
    # `labctl ready` overrides the manifests' readiness, for pods that still exist
    keys = {p.key for p in placed}
    readiness = {k: r for k, r in (previous.readiness if previous else {}).items() if k in keys}
    placed = [replace(p, ready=readiness[p.key]) if p.key in readiness else p for p in placed]
    topo = Topology(
        lab=spec,
        namespaces=namespaces,
        pods=tuple(placed),
        deployments=tuple(deployments),
        documents=tuple(documents),
        ipam=cursors,
        readiness=readiness,
        terminating=terminating,
    )
    return topo, problems
