"""kube-proxy's iptables mode, rendered as iptables-restore text. Pure.

Each service port renders to a Piece: its own chains (KUBE-SVC-, KUBE-SVL-,
KUBE-EXT-, KUBE-SEP-) and the rules it adds to the shared top-level chains
(KUBE-SERVICES, KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES), laid out as
kube-proxy lays them out: chain names, comments, statistic load balancing,
masquerade marks, traffic policies, affinity with `-m recent`, REJECT/DROP in
the filter table. Past 1,000 endpoints in all, kube-proxy's "large cluster
mode" drops the comments of the endpoint jumps and the KUBE-SEP- rules, as it
does to keep big tables small; so does this renderer.

Two kinds of transaction:
- full: the node's whole nat and filter tables (flannel's chains too) in one
  `iptables-restore` without --noflush. iptables-nft 1.8.9 handles chain
  declarations under --noflush in quadratic time; a flushing restore does not.
- partial (`--noflush`): only the services whose inputs changed; their own
  chains are declared (flushed) and rewritten, stale chains flushed and
  deleted, and their rules in the top-level chains deleted and inserted one by
  one, so a 10,000-rule KUBE-SERVICES is not rewritten for one change. Every
  other chain stays byte-identical.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from labctl.model.objects import LabSpec, Topology
from labctl.plan.diff import keyed, members
from labctl.plumbing.node import Chains, masquerade_chains
from labctl.proxy import names
from labctl.proxy.endpoints import Endpoint, ServicePortInfo, service_ports
from labctl.proxy.mode import NodeSync, RestoreMode
from labctl.proxy.policy import decide

MASQ_MARK = "0x4000"
LARGE_CLUSTER_ENDPOINTS = 1000  # kube-proxy's largeClusterEndpointsThreshold
TABLES = ("filter", "nat")
TOP = {
    "nat": ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"),
    "filter": ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL"),
}
# kube-proxy's nfacct counters (when the kernel has nfnetlink_acct): INVALID packets
# dropped in KUBE-FORWARD, and NodePort connections accepted on 127.0.0.0/8.
INVALID_COUNTER = "ct_state_invalid_dropped_pkts"
LOCALHOST_COUNTER = "localhost_nps_accepted_pkts"
COUNTERS = (INVALID_COUNTER, LOCALHOST_COUNTER)
# Localhost NodePorts (kube-proxy's default --iptables-localhost-nodeports): DNAT from
# 127.0.0.1 needs route_localnet, and KUBE-FIREWALL closes the hole it opens (#90259).
SYSCTLS = {"net.ipv4.conf.all.route_localnet": "1"}
BUILTIN = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
NODEPORTS_LAST = '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
# Jumps from the built-in chains, in the order they end up (ahead of any other rule, as kube-proxy inserts them).
JUMPS = {
    "nat": [
        ("PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        ("OUTPUT", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        ("POSTROUTING", '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'),
    ],
    "filter": [
        ("INPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
        ("INPUT", '-m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS'),
        ("INPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
        ("INPUT", "-j KUBE-FIREWALL"),  # kubelet's chain, made before kube-proxy's jumps on a real node
        ("FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
        ("FORWARD", '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
        ("FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        ("FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
        ("OUTPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
        ("OUTPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        ("OUTPUT", "-j KUBE-FIREWALL"),
    ],
}


def _digest(lines: list[str]) -> str:
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]


@dataclass
class Piece:
    """What one service port puts in a node: its own nat chains and its rules in the top-level chains."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    top: dict[str, list[str]] = field(default_factory=dict)  # "table/CHAIN" -> rules

    def add(self, chain: str, rule: str) -> None:
        self.chains.setdefault(chain, []).append(f"-A {chain} {rule}")

    def add_top(self, table: str, chain: str, rule: str) -> None:
        self.top.setdefault(f"{table}/{chain}", []).append(f"-A {chain} {rule}")

    def record(self, fp: str) -> dict:
        return {"fp": fp, "chains": {c: _digest(r) for c, r in self.chains.items()}, "top": self.top}


def _host(ip: str) -> str:
    """One address as a match: /32, or /128 for IPv6 (ip6tables-save prints it so)."""
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def _mask(ip: str) -> str:
    """`-m recent --mask` of a whole address of the family."""
    return "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if ":" in ip else "255.255.255.255"


def _c(text: str) -> str:
    return f'-m comment --comment "{text}"'


def _match(info: ServicePortInfo, comment: str, dport: int, extra: str = "") -> str:
    """Protocol, comment and destination port, in the order iptables-save prints them."""
    return f"-p {info.proto} {_c(comment)}{extra} -m {info.proto} --dport {dport}"


def large_cluster(infos: list[ServicePortInfo]) -> bool:
    """kube-proxy's large cluster mode: more than 1,000 endpoints over all service ports."""
    return sum(len(i.endpoints) for i in infos) > LARGE_CLUSTER_ENDPOINTS


def _endpoint_jumps(piece: Piece, chain: str, info: ServicePortInfo, eps: tuple[Endpoint, ...], large: bool) -> None:
    spn = info.spn
    if info.service.session_affinity == "ClientIP":
        for ep in eps:
            sep = names.ipt_sep(spn, info.proto, ep.addr)
            t = info.service.affinity_timeout
            comment = "" if large else f"{_c(f'{spn} -> {ep.addr}')} "
            piece.add(chain, f"{comment}-m recent --name {sep} --mask {_mask(ep.ip)} --rcheck --seconds {t} --reap -j {sep}")
    n = len(eps)
    for i, ep in enumerate(eps):
        sep = names.ipt_sep(spn, info.proto, ep.addr)
        stat = f"-m statistic --mode random --probability {1.0 / (n - i):0.10f} " if i < n - 1 else ""
        comment = "" if large else f"{_c(f'{spn} -> {ep.addr}')} "
        piece.add(chain, f"{comment}{stat}-j {sep}")


def _endpoint_chain(piece: Piece, info: ServicePortInfo, ep: Endpoint, large: bool) -> None:
    spn = info.spn
    sep = names.ipt_sep(spn, info.proto, ep.addr)
    comment = "" if large else f" {_c(spn)}"
    piece.add(sep, f"-s {_host(ep.ip)}{comment} -j KUBE-MARK-MASQ")
    recent = f" -m recent --set --name {sep} --mask {_mask(ep.ip)} --rsource" if info.service.session_affinity == "ClientIP" else ""
    piece.add(sep, f"-p {info.proto}{comment}{recent} -m {info.proto} -j DNAT --to-destination {ep.addr}")


def render_service(info: ServicePortInfo, node: str, cluster_cidr: str, large: bool = False, node_ip: str | None = None, nfacct: bool = True) -> Piece:
    """The chains and top-level rules of one service port, on one node (`large`:
    kube-proxy's large cluster mode, see large_cluster; `node_ip`: the node's
    address, which loadBalancerSourceRanges may cover; `nfacct`: the kernel has
    kube-proxy's counters, which count NodePort connections to 127.0.0.0/8)."""
    piece = Piece()
    s, p, spn, proto = info.service, info.port, info.spn, info.proto
    six = ":" in cluster_cidr  # the IPv6 family's rules (ip6tables)
    pol = decide(info, node)
    svc = names.ipt_chain("KUBE-SVC-", spn, proto)
    svl = names.ipt_chain("KUBE-SVL-", spn, proto)
    ext = names.ipt_chain("KUBE-EXT-", spn, proto)
    fw = names.ipt_chain("KUBE-FW-", spn, proto)
    internal_chain = svl if pol.internal_local else svc

    # Dispatch: the nat table's KUBE-SERVICES and KUBE-NODEPORTS.
    if pol.has_internal:
        piece.add_top("nat", "KUBE-SERVICES", f"-d {_host(s.cluster_ip)} {_match(info, f'{spn} cluster IP', p.port)} -j {internal_chain}")
    if pol.has_endpoints:
        for what, ip in pol.externals:
            target = fw if pol.firewalled and what == "loadbalancer IP" else ext
            piece.add_top("nat", "KUBE-SERVICES", f"-d {_host(ip)} {_match(info, f'{spn} {what}', p.port)} -j {target}")
        if pol.node_port:
            if nfacct and not six:  # counted apart: the next rule would take them too (IPv4 only: IPv6 has no localhost NodePorts)
                counted = f" -m nfacct --nfacct-name {LOCALHOST_COUNTER}"
                piece.add_top("nat", "KUBE-NODEPORTS", f"-d 127.0.0.0/8 {_match(info, spn, pol.node_port)}{counted} -j {ext}")
            piece.add_top("nat", "KUBE-NODEPORTS", f"{_match(info, spn, pol.node_port)} -j {ext}")
    if s.needs_health_check and s.health_check_node_port:  # open whether or not this node has endpoints
        hc = f"-p tcp {_c(f'{spn} health check node port')} -m tcp --dport {s.health_check_node_port} -j ACCEPT"
        piece.add_top("filter", "KUBE-NODEPORTS", hc)

    # loadBalancerSourceRanges: what KUBE-FW- did not send on keeps the LoadBalancer IP, and is dropped.
    if pol.firewalled:
        for ip in pol.load_balancer_ips:
            piece.add_top("filter", "KUBE-PROXY-FIREWALL", f"-d {_host(ip)} {_match(info, f'{spn} traffic not accepted by {fw}', p.port)} -j DROP")
    # Refusals in the filter table: no endpoints -> REJECT, no local ones -> DROP.
    reject = "icmp6-port-unreachable" if six else "icmp-port-unreachable"
    target = f"REJECT --reject-with {reject}" if pol.refusal == "reject" else "DROP"
    why = "has no endpoints" if pol.refusal == "reject" else "has no local endpoints"
    if not pol.has_internal:
        piece.add_top("filter", "KUBE-SERVICES", f"-d {_host(s.cluster_ip)} {_match(info, f'{spn} {why}', p.port)} -j {target}")
    if not pol.has_external and pol.externally:
        for _, ip in pol.externals:
            piece.add_top("filter", "KUBE-EXTERNAL-SERVICES", f"-d {_host(ip)} {_match(info, f'{spn} {why}', p.port)} -j {target}")
        if pol.node_port:
            piece.add_top("filter", "KUBE-EXTERNAL-SERVICES", f"{_match(info, f'{spn} {why}', pol.node_port, ' -m addrtype --dst-type LOCAL')} -j {target}")
    if not pol.has_endpoints:
        return piece

    # The service's own chains.
    if pol.has_internal:
        piece.add(internal_chain, f"! -s {cluster_cidr} -d {_host(s.cluster_ip)} {_match(info, f'{spn} cluster IP', p.port)} -j KUBE-MARK-MASQ")
    if pol.firewalled:
        for src in pol.allowed_sources(node_ip):
            cidr = src if "/" in src else _host(src)
            piece.add(fw, f"-s {cidr} {_c(f'{spn} loadbalancer IP')} -j {ext}")
        piece.add(fw, _c(f"other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"))
    if pol.externally:
        if not pol.external_local:
            piece.add(ext, f"{_c(f'masquerade traffic for {spn} external destinations')} -j KUBE-MARK-MASQ")
            piece.add(ext, f"-j {svc}")
        else:
            piece.add(ext, f"-s {cluster_cidr} {_c(f'pod traffic for {spn} external destinations')} -j {svc}")
            piece.add(ext, f"{_c(f'masquerade LOCAL traffic for {spn} external destinations')} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ")
            piece.add(ext, f"{_c(f'route LOCAL traffic for {spn} external destinations')} -m addrtype --src-type LOCAL -j {svc}")
            if pol.has_external:
                piece.add(ext, f"-j {svl}")
    if pol.uses_cluster:
        _endpoint_jumps(piece, svc, info, pol.endpoints, large)
    if pol.uses_local:
        _endpoint_jumps(piece, svl, info, pol.local, large)
    for ep in pol.reached():
        _endpoint_chain(piece, info, ep, large)
    return piece


def static_chains(nfacct: bool = True, six: bool = False) -> dict[str, dict[str, list[str]]]:
    """The top-level chains' fixed rules (KUBE-SERVICES gets the NodePort rule last);
    `six`: ip6tables' (no 127.0.0.0/8 to guard)."""
    counted = f" -m nfacct --nfacct-name {INVALID_COUNTER}" if nfacct else ""
    localnet = f"-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 {_c('block incoming localnet connections')} -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
    return {
        "nat": {
            "KUBE-SERVICES": [],
            "KUBE-NODEPORTS": [],
            "KUBE-POSTROUTING": [
                f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
                f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
                f"-A KUBE-POSTROUTING {_c('kubernetes service traffic requiring SNAT')} -j MASQUERADE --random-fully",
            ],
            "KUBE-MARK-MASQ": [f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"],
        },
        "filter": {
            "KUBE-SERVICES": [],
            "KUBE-EXTERNAL-SERVICES": [],
            "KUBE-NODEPORTS": [],
            "KUBE-FIREWALL": [] if six else [localnet],
            "KUBE-FORWARD": [
                f"-A KUBE-FORWARD -m conntrack --ctstate INVALID{counted} -j DROP",
                f"-A KUBE-FORWARD {_c('kubernetes forwarding rules')} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
                f"-A KUBE-FORWARD {_c('kubernetes forwarding conntrack rule')} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            ],
            "KUBE-PROXY-FIREWALL": [],
        },
    }


@dataclass
class Ruleset:
    """All of a node's KUBE-* chains: table -> chain -> rule lines (what `render` returns)."""

    tables: dict[str, dict[str, list[str]]]

    def rules(self) -> int:
        return sum(len(lines) for chains in self.tables.values() for lines in chains.values())


def assemble(pieces: list[Piece], nfacct: bool = True, six: bool = False) -> Ruleset:
    tables = static_chains(nfacct, six)
    for piece in pieces:
        for tc, rules in piece.top.items():
            table, chain = tc.split("/", 1)
            tables[table][chain] += rules
        tables["nat"].update(piece.chains)
    tables["nat"]["KUBE-SERVICES"].append(NODEPORTS_LAST)
    return Ruleset(tables)


def render(topo: Topology, node: str, infos: list[ServicePortInfo] | None = None, nfacct: bool = True) -> Ruleset:
    """The KUBE-* chains of one node, assembled in kube-proxy's order."""
    infos = infos if infos is not None else service_ports(topo)
    large = large_cluster(infos)
    node_ip = topo.lab.node(node).ip
    return assemble([render_service(i, node, topo.lab.pod_network, large, node_ip, nfacct) for i in infos], nfacct, ":" in topo.lab.pod_network)


# -- transactions ---------------------------------------------------------------------


def full(ruleset: Ruleset | None, flannel: Chains) -> str:
    """The node's nat and filter tables, whole: built-in chains, kube-proxy's jumps
    first, then flannel's, kube-proxy's chains and flannel's. For `iptables-restore`
    without --noflush. With no ruleset: flannel's alone (leaving iptables mode)."""
    if ruleset is None:
        return tables_text(Chains({}, []), flannel)
    jumps = [(t, c, r) for t in TABLES for c, r in JUMPS[t]]
    return tables_text(Chains(ruleset.tables, jumps), flannel)


def tables_text(ours: Chains, flannel: Chains) -> str:
    """The nat and filter tables whole, for `iptables-restore` without --noflush:
    built-in chains, our jumps first (as kube-proxy inserts them), then flannel's,
    our chains, then flannel's. The IPVS mode writes its few chains with it too."""
    out: list[str] = []
    for table in TABLES:
        mine, theirs = ours.chains.get(table, {}), flannel.chains.get(table, {})
        out.append(f"*{table}")
        out += [f":{c} ACCEPT [0:0]" for c in BUILTIN[table]]
        out += [f":{c} - [0:0]" for c in list(mine) + list(theirs)]
        out += [f"-A {c} {r}" for t, c, r in ours.jumps + flannel.jumps if t == table]
        for lines in list(mine.values()) + list(theirs.values()):
            out += lines
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _delete(rule: str) -> str:
    return "-D " + rule[3:]


def _insert(rule: str, table: str) -> str:
    chain = rule.split(" ", 2)[1]
    if table == "nat" and chain == "KUBE-SERVICES":
        return f"-I KUBE-SERVICES 1 {rule.split(' ', 2)[2]}"  # the NodePort rule stays last
    return rule


def partial(changed: dict[str, Piece | None], old: dict[str, dict], fps: dict[str, str]) -> str:
    """`iptables-restore --noflush` input for the services in `changed`
    (None: the service is gone), from their old records. Empty: nothing to do."""
    decl: set[str] = set()
    rules: list[str] = []
    dels: dict[str, list[str]] = {t: [] for t in TABLES}
    adds: dict[str, list[str]] = {t: [] for t in TABLES}
    stale: list[str] = []
    for k, piece in changed.items():
        before = old.get(k, {"chains": {}, "top": {}})
        now = piece.record(fps[k]) if piece else {"chains": {}, "top": {}}
        d = keyed(before["chains"], now["chains"])
        for c in (*d.added, *d.changed):
            decl.add(c)
            rules += piece.chains[c]
        stale += d.removed
        for tc in dict.fromkeys([*before["top"], *now["top"]]):
            table = tc.split("/", 1)[0]
            added, removed = members(before["top"].get(tc, []), now["top"].get(tc, []))
            dels[table] += [_delete(r) for r in removed]
            adds[table] += [_insert(r, table) for r in added]
    if not (decl or stale or any(dels.values()) or any(adds.values())):
        return ""
    out = []
    for table in TABLES:
        out.append(f"*{table}")
        if table == "nat":
            out += [f":{c} - [0:0]" for c in sorted(decl | set(stale))]
        out += dels[table]
        if table == "nat":
            out += rules
        out += adds[table]
        if table == "nat":
            out += [f"-X {c}" for c in stale]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def chains_in(text: str) -> list[str]:
    """Chains declared in a restore input (for tests and messages)."""
    return re.findall(r"^:(\S+)", text, flags=re.M)


# -- the mode ---------------------------------------------------------------------------


def explain_chains(info: ServicePortInfo) -> list[str]:
    """The nat chains a connection to this service port walks, in order."""
    svc = names.ipt_chain("KUBE-SVC-", info.spn, info.proto)
    seps = " | ".join(names.ipt_sep(info.spn, info.proto, e.addr) for e in info.endpoints) or "no endpoint: filter KUBE-SERVICES rejects"
    return [f"nat KUBE-SERVICES -> {svc} ({info.spn}) -> {seps}"]


class Iptables(RestoreMode):
    """kube-proxy's iptables mode: nat and filter tables written with iptables-restore."""

    name = "iptables"
    replaces_filter = True  # a full sync restores the filter table whole
    tracer = "xtables"

    def require(self, spec: LabSpec) -> None:
        from labctl.kernel import run

        run.require("iptables-restore", "iptables")

    @staticmethod
    def nfacct() -> bool:
        from labctl.kernel import nfacct

        return nfacct.supported()

    def render_service(self, info: ServicePortInfo, node: str, topo: Topology, large: bool) -> Piece:
        return render_service(info, node, topo.lab.pod_network, large, topo.lab.node(node).ip, self.nfacct())

    def partial(self, changed: dict, old: dict[str, dict], fps: dict[str, str]) -> str:
        return partial(changed, old, fps)

    def full(self, topo: Topology, node: str, pieces: list) -> str:
        return full(assemble(pieces, self.nfacct(), ":" in topo.lab.pod_network), masquerade_chains(topo.lab, topo.lab.node(node)))

    def apply(self, topo: Topology, syncs: list[NodeSync]) -> None:
        """Before a full sync: the counters its rules count in, and route_localnet, as kube-proxy sets them."""
        from labctl.kernel import netns, nfacct
        from labctl.model import names as lab_names

        for s in syncs:
            if s.full:
                ns = lab_names.node_netns(topo.lab.name, s.node)
                if self.nfacct():
                    nfacct.ensure(ns, list(COUNTERS))
                if ":" not in topo.lab.pod_network:
                    netns.write_sysctls(ns, SYSCTLS)
        super().apply(topo, syncs)

    def argv(self, full: bool, six: bool = False) -> list[str]:
        cmd = "ip6tables-restore" if six else "iptables-restore"
        return [cmd] if full else [cmd, "--noflush"]

    def large(self, endpoints: int) -> bool:
        return endpoints > LARGE_CLUSTER_ENDPOINTS

    def leave(self, topo: Topology, node: str) -> None:
        """Back to flannel's chains alone, and no route_localnet."""
        from labctl.kernel import netns, run
        from labctl.model.names import node_netns

        flannel = full(None, masquerade_chains(topo.lab, topo.lab.node(node)))
        run.apply_all([run.Transaction(node_netns(topo.lab.name, node), self.argv(True, ":" in topo.lab.pod_network), flannel)])
        if ":" not in topo.lab.pod_network:
            netns.write_sysctls(node_netns(topo.lab.name, node), {k: "0" for k in SYSCTLS})

    def explain(self, info: ServicePortInfo, node: str) -> list[str]:
        return explain_chains(info)


MODE = Iptables()
