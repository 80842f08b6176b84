"""kube-proxy's nftables mode, rendered as `nft -f` input. Pure.

One private table, `ip kube-proxy`: base chains on the filter and nat hooks,
dispatch through verdict maps (`ip daddr . meta l4proto . th dport vmap
@service-ips`, `@service-nodeports` for local addresses), `numgen random mod N
vmap {...}` to pick an endpoint, endpoint chains that mark hairpin traffic for
masquerade and DNAT, dynamic affinity sets with timeouts, and "no endpoint"
maps that reject or drop. A full sync replaces the table in one transaction;
a partial one adds and deletes map elements and rewrites only the service
chains that changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from labctl.model.objects import LabSpec, Node, Topology
from labctl.plan.diff import keyed
from labctl.proxy import names
from labctl.proxy.endpoints import Endpoint, ServicePortInfo, service_ports
from labctl.proxy.mode import NodeSync, RestoreMode
from labctl.proxy.policy import decide

TABLE = "ip kube-proxy"
TABLE6 = "ip6 kube-proxy"  # the IPv6 family's table, as kube-proxy's IPv6 proxier names it
MASQ_MARK = "0x4000"
# Sets, then verdict maps, as kube-proxy declares them: name -> (kind, type, comment).
MAPS = {
    "cluster-ips": ("set", "ipv4_addr", "Active ClusterIPs"),
    "nodeport-ips": ("set", "ipv4_addr", "IPs that accept NodePort traffic"),
    "firewall-ips": ("map", "ipv4_addr . inet_proto . inet_service : verdict", "destinations that are subject to LoadBalancerSourceRanges"),
    "no-endpoint-nodeports": ("map", "inet_proto . inet_service : verdict", "vmap to drop or reject packets to service nodeports with no endpoints"),
    "no-endpoint-services": ("map", "ipv4_addr . inet_proto . inet_service : verdict", "vmap to drop or reject packets to services with no endpoints"),
    "service-ips": ("map", "ipv4_addr . inet_proto . inet_service : verdict", "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    "service-nodeports": ("map", "inet_proto . inet_service : verdict", "NodePort traffic"),
}
# Base chains as current kube-proxy lays them out: the firewall before DNAT (-110),
# the endpoint and ClusterIP checks at filter priority, DNAT at -100, SNAT at 100
# (numbers: nft 1.0.6 accepts the names only on the prerouting and postrouting hooks).
BASE_CHAINS = {
    "filter-prerouting-pre-dnat": ("filter", "prerouting", "-110"),
    "filter-output-pre-dnat": ("filter", "output", "-110"),
    "filter-forward": ("filter", "forward", "0"),
    "filter-input": ("filter", "input", "0"),
    "filter-output": ("filter", "output", "0"),
    "nat-output": ("nat", "output", "-100"),
    "nat-postrouting": ("nat", "postrouting", "100"),
    "nat-prerouting": ("nat", "prerouting", "-100"),
}
# Every fixed chain in kube-proxy's order, base chains among them.
CHAINS = (
    "cluster-ips-check",
    "filter-prerouting-pre-dnat",
    "filter-output-pre-dnat",
    "filter-forward",
    "filter-input",
    "filter-output",
    "firewall-check",
    "mark-for-masquerade",
    "masquerading",
    "nat-output",
    "nat-postrouting",
    "nat-prerouting",
    "nodeport-endpoints-check",
    "reject-chain",
    "services",
    "service-endpoints-check",
)


def fixed_rules(service_cidr: str) -> list[tuple[str, str]]:
    """(chain, rule) of the fixed chains, in kube-proxy's order."""
    return [
        ("cluster-ips-check", 'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"'),
        ("cluster-ips-check", f'ip daddr {{ {service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"'),
        ("filter-prerouting-pre-dnat", "ct state new jump firewall-check"),
        ("filter-forward", "ct state new jump service-endpoints-check"),
        ("filter-forward", "ct state new jump cluster-ips-check"),
        ("filter-input", "ct state new jump nodeport-endpoints-check"),
        ("filter-input", "ct state new jump service-endpoints-check"),
        ("filter-output", "ct state new jump service-endpoints-check"),
        ("filter-output-pre-dnat", "ct state new jump firewall-check"),
        ("filter-output", "ct state new jump cluster-ips-check"),
        ("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips"),
        ("mark-for-masquerade", f"mark set mark or {MASQ_MARK}"),
        ("masquerading", f"mark and {MASQ_MARK} == 0 return"),
        ("masquerading", f"mark set mark xor {MASQ_MARK}"),
        ("masquerading", "masquerade fully-random"),
        ("nat-output", "jump services"),
        ("nat-postrouting", "jump masquerading"),
        ("nat-prerouting", "jump services"),
        ("nodeport-endpoints-check", "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"),
        ("reject-chain", "reject"),
        ("services", "ip daddr . meta l4proto . th dport vmap @service-ips"),
        ("services", "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
        ("service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    ]


def _digest(lines: list[str]) -> str:
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]


@dataclass
class NftPiece:
    """What one service port puts in the table: chains, map elements, affinity sets."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    elements: dict[str, dict[str, str]] = field(default_factory=dict)  # map -> key -> value ("" for sets)
    affinity: dict[str, int] = field(default_factory=dict)  # set name -> timeout seconds

    def add(self, chain: str, rule: str) -> None:
        self.chains.setdefault(chain, []).append(rule)

    def element(self, name: str, key: str, verdict: str = "", comment: str | None = None) -> None:
        """A set member (no verdict) or a map element; `comment` names the service it is for."""
        self.elements.setdefault(name, {})[key] = verdict + (f' comment "{comment}"' if comment else "")

    def record(self, fp: str) -> dict:
        return {"fp": fp, "chains": {c: _digest(r) for c, r in self.chains.items()}, "elements": self.elements, "affinity": self.affinity}


@dataclass
class NftRules:
    """A node's whole service state (what `render` returns)."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    maps: dict[str, dict[str, str]] = field(default_factory=lambda: {m: {} for m in MAPS})
    affinity: dict[str, int] = field(default_factory=dict)

    def rules(self) -> int:
        return sum(len(r) for r in self.chains.values()) + sum(len(e) for e in self.maps.values())


def _endpoint_chain(info: ServicePortInfo, ep: Endpoint) -> str:
    s = info.service
    return "endpoint-" + names.nft_endpoint_base(s.namespace, s.name, info.proto, info.port.name, ep.ip, ep.port)


def _affinity_set(info: ServicePortInfo, ep: Endpoint) -> str:
    s = info.service
    return "affinity-" + names.nft_endpoint_base(s.namespace, s.name, info.proto, info.port.name, ep.ip, ep.port)


def _dispatch(r: NftPiece, chain: str, info: ServicePortInfo, eps: tuple[Endpoint, ...]) -> None:
    if info.service.session_affinity == "ClientIP":
        for ep in eps:
            r.add(chain, f"ip saddr @{_affinity_set(info, ep)} goto {_endpoint_chain(info, ep)}")
    vmap = " , ".join(f"{i} : goto {_endpoint_chain(info, ep)}" for i, ep in enumerate(eps))
    r.add(chain, f"numgen random mod {len(eps)} vmap {{ {vmap} }}")


def render_service(info: ServicePortInfo, node: str, cluster_cidr: str, node_ip: str | None = None) -> NftPiece:
    """The chains, map elements and affinity sets of one service port, on one node
    (`node_ip`: the node's address, which loadBalancerSourceRanges may cover)."""
    r = NftPiece()
    s, p, proto = info.service, info.port, info.proto
    pol = decide(info, node)
    base = names.nft_base(s.namespace, s.name, proto, p.name)
    svc, local, ext = f"service-{base}", f"local-{base}", f"external-{base}"
    internal_chain = local if pol.internal_local else svc
    verdict = "goto reject-chain" if pol.refusal == "reject" else "drop"

    if p is s.ports[0]:  # one element per ClusterIP, owned by the service's first port
        r.element("cluster-ips", s.cluster_ip)
    key = f"{s.cluster_ip} . {proto} . {p.port}"
    if pol.has_internal:
        r.element("service-ips", key, f"goto {internal_chain}")
    else:
        r.element("no-endpoint-services", key, verdict, info.spn)
    for _, ip in pol.externals:
        k = f"{ip} . {proto} . {p.port}"
        if pol.has_endpoints:
            r.element("service-ips", k, f"goto {ext}")
        if not pol.has_external:
            r.element("no-endpoint-services", k, verdict, info.spn)
    if pol.firewalled:  # checked before DNAT (filter-prerouting-pre-dnat): other sources are dropped
        fw = f"firewall-{base}"
        for ip in pol.load_balancer_ips:
            r.element("firewall-ips", f"{ip} . {proto} . {p.port}", f"goto {fw}")
        r.add(fw, f"ip saddr != {{ {', '.join(pol.allowed_sources(node_ip))} }} drop")
    if pol.node_port:
        if pol.has_endpoints:
            r.element("service-nodeports", f"{proto} . {pol.node_port}", f"goto {ext}")
        if not pol.has_external:
            r.element("no-endpoint-nodeports", f"{proto} . {pol.node_port}", verdict, info.spn)
    if not pol.has_endpoints:
        return r

    if pol.has_internal:
        r.add(internal_chain, f"ip daddr {s.cluster_ip} ip saddr != {cluster_cidr} jump mark-for-masquerade")
    if pol.externally:
        if not pol.external_local:
            r.add(ext, "jump mark-for-masquerade")
        else:
            r.add(ext, f'ip saddr {cluster_cidr} goto {svc} comment "short-circuit pod traffic"')
            r.add(ext, 'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"')
            r.add(ext, f'fib saddr type local goto {svc} comment "short-circuit local traffic"')
        if pol.has_external:
            r.add(ext, f"goto {local if pol.external_local else svc}")
    if pol.uses_cluster:
        _dispatch(r, svc, info, pol.endpoints)
    if pol.uses_local:
        _dispatch(r, local, info, pol.local)
    for ep in pol.reached():
        chain = _endpoint_chain(info, ep)
        r.add(chain, f"ip saddr {ep.ip} jump mark-for-masquerade")
        if s.session_affinity == "ClientIP":
            r.affinity[_affinity_set(info, ep)] = s.affinity_timeout
            r.add(chain, f"update @{_affinity_set(info, ep)} {{ ip saddr }}")
        r.add(chain, f"meta l4proto {proto} dnat to {ep.addr}")
    return r


def assemble(pieces: list[NftPiece]) -> NftRules:
    out = NftRules()
    for piece in pieces:
        out.chains.update(piece.chains)
        for name, elements in piece.elements.items():
            out.maps[name].update(elements)
        out.affinity.update(piece.affinity)
    return out


def render(topo: Topology, node: str, infos: list[ServicePortInfo] | None = None) -> NftRules:
    infos = infos if infos is not None else service_ports(topo)
    return assemble([render_service(i, node, topo.lab.pod_network, topo.lab.node(node).ip) for i in infos])


# -- scripts ---------------------------------------------------------------------------


def _setup(service_cidr: str, node_ip: str) -> list[str]:
    """The table, its sets, maps and fixed chains (a full sync replaces the table)."""
    t = TABLE
    out = [
        f'add table {t} {{ comment "rules for kube-proxy" ; }}',
        f"delete table {t}",
        f'add table {t} {{ comment "rules for kube-proxy" ; }}',
    ]
    for name, (kind, typ, comment) in MAPS.items():
        out.append(f'add {kind} {t} {name} {{ type {typ} ; comment "{comment}" ; }}')
    for name in CHAINS:
        if name in BASE_CHAINS:
            ctype, hook, prio = BASE_CHAINS[name]
            out.append(f"add chain {t} {name} {{ type {ctype} hook {hook} priority {prio} ; }}")
        elif name == "reject-chain":
            out.append(f'add chain {t} {name} {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}')
        else:
            out.append(f"add chain {t} {name}")
    out += [f"add rule {t} {chain} {rule}" for chain, rule in fixed_rules(service_cidr)]
    out.append(f"add element {t} nodeport-ips {{ {node_ip} }}")  # kube-proxy's default: the node's primary address
    return out


def _element(name: str, key: str, value: str) -> str:
    """`{ key }` for a set, `{ key [comment "..."] : verdict }` for a map (value: the verdict [and comment])."""
    if MAPS[name][0] == "set":
        return f"{{ {key} }}"
    verdict, _, comment = value.partition(" comment ")
    return f"{{ {key} comment {comment} : {verdict} }}" if comment else f"{{ {key} : {verdict} }}"


def full(rules: NftRules, service_cidr: str, node_ip: str) -> str:
    """The whole table, replaced in one transaction."""
    t = TABLE
    out = _setup(service_cidr, node_ip)
    out += [f"add set {t} {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}" for name, timeout in rules.affinity.items()]
    out += [f"add chain {t} {c}" for c in rules.chains]
    for c, lines in rules.chains.items():
        out += [f"add rule {t} {c} {rule}" for rule in lines]
    for name, elements in rules.maps.items():
        out += [f"add element {t} {name} {_element(name, k, v)}" for k, v in elements.items()]
    return "\n".join(out) + "\n"


def partial(changed: dict[str, NftPiece | None], old: dict[str, dict], fps: dict[str, str]) -> str:
    """`nft -f` input for the services in `changed` (None: gone), from their old records."""
    t = TABLE
    empty = {"chains": {}, "elements": {}, "affinity": {}}
    sets, write, rules, dels, adds, stale, stale_sets = [], [], [], [], [], [], []
    for k, piece in changed.items():
        before = old.get(k, empty)
        now = piece.record(fps[k]) if piece else empty
        affinity = keyed(before["affinity"], now["affinity"])
        sets += [f"add set {t} {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {now['affinity'][name]}s ; }}" for name in affinity.added]
        chains = keyed(before["chains"], now["chains"])
        for c in (*chains.added, *chains.changed):
            write.append(c)
            rules += [f"add rule {t} {c} {rule}" for rule in piece.chains[c]]
        for name in dict.fromkeys([*before["elements"], *now["elements"]]):
            was, will = before["elements"].get(name, {}), now["elements"].get(name, {})
            d = keyed(was, will)
            dels += [f"delete element {t} {name} {{ {key} }}" for key in (*d.changed, *d.removed)]
            adds += [f"add element {t} {name} {_element(name, key, will[key])}" for key in (*d.added, *d.changed)]
        stale += chains.removed
        stale_sets += affinity.removed
    out = sets
    for c in write:
        out += [f"add chain {t} {c}", f"flush chain {t} {c}"]
    out += rules + dels + adds
    out += [f"flush chain {t} {c}" for c in stale]
    out += [f"delete chain {t} {c}" for c in stale]
    out += [f"delete set {t} {s_}" for s_ in stale_sets]
    return "\n".join(out) + "\n" if out else ""


def six(text: str) -> str:
    """A script of the IPv4 table as the IPv6 family's: table `ip6 kube-proxy`, ipv6_addr
    keys, ip6 matches (the same chains, maps and hashes, as kube-proxy's two proxiers)."""
    for a, b in ((TABLE, TABLE6), ("ipv4_addr", "ipv6_addr"), ("ip daddr", "ip6 daddr"), ("ip saddr", "ip6 saddr")):
        text = text.replace(a, b)
    return text


# -- the mode ---------------------------------------------------------------------------


class Nftables(RestoreMode):
    """kube-proxy's nftables mode: one table, `ip kube-proxy`, written with `nft -f`."""

    name = "nftables"
    tracer = "nft"

    def require(self, spec: LabSpec) -> None:
        from labctl.kernel import run

        run.require("nft", "nftables")

    def render_service(self, info: ServicePortInfo, node: str, topo: Topology, large: bool) -> NftPiece:
        return render_service(info, node, topo.lab.pod_network, topo.lab.node(node).ip)

    def partial(self, changed: dict, old: dict[str, dict], fps: dict[str, str]) -> str:
        return partial(changed, old, fps)

    def full(self, topo: Topology, node: str, pieces: list) -> str:
        node_ip = topo.lab.node(node).ip
        assert node_ip
        return full(assemble(pieces), topo.lab.service_network, node_ip)

    def argv(self, full: bool, six: bool = False) -> list[str]:
        return ["nft", "-f", "-"]

    def apply(self, topo: Topology, syncs: list[NodeSync]) -> None:
        """The IPv6 family's view writes its own table (`ip6 kube-proxy`)."""
        if ":" in topo.lab.pod_network:
            for s_ in syncs:
                s_.text = six(s_.text)
        super().apply(topo, syncs)

    def node_setup(self, spec: LabSpec, node: Node) -> list:
        """flannel's chains: in the other modes the proxy's full sync of the iptables tables writes them."""
        from labctl.kernel import run
        from labctl.model.names import node_netns
        from labctl.plumbing.node import masquerade_rules

        restore = "ip6tables-restore" if ":" in spec.pod_network else "iptables-restore"
        return [run.Transaction(node_netns(spec.name, node.name), [restore, "--noflush"], masquerade_rules(spec, node))]

    def leave(self, topo: Topology, node: str) -> None:
        from labctl.kernel import run
        from labctl.model.names import node_netns

        t = TABLE6 if ":" in topo.lab.pod_network else TABLE
        run.apply_all([run.Transaction(node_netns(topo.lab.name, node), ["nft", "-f", "-"], f"add table {t}\ndelete table {t}\n")])

    def explain(self, info: ServicePortInfo, node: str) -> list[str]:
        base = names.nft_base(info.service.namespace, info.service.name, info.proto, info.port.name)
        return [f"table {TABLE}: chain services, map service-ips -> chain service-{base} -> endpoint-... chains ({len(info.endpoints)} endpoints)"]


MODE = Nftables()
