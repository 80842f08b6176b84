"""kube-proxy's iptables mode, rendered as iptables-restore text. Pure.

`render` lays out the KUBE-* chains of one node as kube-proxy does (chain
names, comments, statistic load balancing, masquerade marks, traffic
policies, affinity with `-m recent`, REJECT/DROP in the filter table);
`transaction` turns desired chains plus what the node already has into one
`iptables-restore --noflush` input: a partial sync rewrites only the service
chains that changed (and the top-level chains whole), flushes and deletes
stale chains in the same transaction, and leaves every other chain
byte-identical.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from labctl.model.objects import Topology
from labctl.proxy import names
from labctl.proxy.endpoints import Endpoint, ServicePortInfo, service_ports

MASQ_MARK = "0x4000"
TABLES = ("filter", "nat")
TOP = {
    "nat": ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"),
    "filter": ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL"),
}
# Jumps from the built-in chains, in the order they end up (inserted at the top, as kube-proxy does).
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
        ("FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
        ("FORWARD", '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
        ("FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        ("FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
        ("OUTPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
        ("OUTPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ],
}


@dataclass
class Ruleset:
    """Desired KUBE-* chains: table -> chain -> rule lines ("-A CHAIN ...")."""

    tables: dict[str, dict[str, list[str]]] = field(default_factory=lambda: {t: {c: [] for c in TOP[t]} for t in TABLES})

    def chain(self, table: str, name: str) -> list[str]:
        return self.tables[table].setdefault(name, [])

    def add(self, table: str, chain: str, rule: str) -> None:
        self.chain(table, chain).append(f"-A {chain} {rule}")

    def hashes(self) -> dict[str, str]:
        return {f"{t}/{c}": hashlib.sha1("\n".join(lines).encode()).hexdigest() for t, chains in self.tables.items() for c, lines in chains.items()}

    def rules(self) -> int:
        return sum(len(lines) for chains in self.tables.values() for lines in chains.values())


@dataclass
class Context:
    node: str
    cluster_cidr: str


def _match(info: ServicePortInfo, comment: str, dport: int, extra: str = "") -> str:
    """Protocol, comment and destination port, in the order iptables-save prints them."""
    return f"-p {info.proto} {_c(comment)}{extra} -m {info.proto} --dport {dport}"


def _c(text: str) -> str:
    return f'-m comment --comment "{text}"'


def _endpoint_jumps(rs: Ruleset, chain: str, info: ServicePortInfo, eps: tuple[Endpoint, ...]) -> None:
    spn = info.spn
    affinity = info.service.session_affinity == "ClientIP"
    if affinity:
        for ep in eps:
            sep = names.ipt_sep(spn, info.proto, ep.addr)
            rs.add(
                "nat",
                chain,
                f'{_c(f"{spn} -> {ep.addr}")} -m recent --name {sep} --mask 255.255.255.255 --rcheck --seconds {info.service.affinity_timeout} --reap -j {sep}',
            )
    n = len(eps)
    for i, ep in enumerate(eps):
        sep = names.ipt_sep(spn, info.proto, ep.addr)
        stat = f" -m statistic --mode random --probability {1.0 / (n - i):0.10f}" if i < n - 1 else ""
        rs.add("nat", chain, f'{_c(f"{spn} -> {ep.addr}")}{stat} -j {sep}')


def _endpoint_chain(rs: Ruleset, info: ServicePortInfo, ep: Endpoint) -> None:
    spn = info.spn
    sep = names.ipt_sep(spn, info.proto, ep.addr)
    rs.chain("nat", sep)
    rs.add("nat", sep, f"-s {ep.ip}/32 {_c(spn)} -j KUBE-MARK-MASQ")
    recent = f" -m recent --set --name {sep} --mask 255.255.255.255 --rsource" if info.service.session_affinity == "ClientIP" else ""
    rs.add("nat", sep, f"-p {info.proto} {_c(spn)}{recent} -m {info.proto} -j DNAT --to-destination {ep.addr}")


def _service(rs: Ruleset, info: ServicePortInfo, ctx: Context) -> None:
    s, p, spn, proto = info.service, info.port, info.spn, info.proto
    svc = names.ipt_chain("KUBE-SVC-", spn, proto)
    svl = names.ipt_chain("KUBE-SVL-", spn, proto)
    ext = names.ipt_chain("KUBE-EXT-", spn, proto)
    all_eps = info.endpoints
    local_eps = info.local(ctx.node)
    has_eps = bool(all_eps)
    itp_local = s.internal_traffic_policy == "Local"
    etp_local = s.external_traffic_policy == "Local"
    externals = [("external IP", ip) for ip in s.external_ips]
    if s.type == "LoadBalancer" and s.load_balancer_ip:
        externals.append(("loadbalancer IP", s.load_balancer_ip))
    node_port = p.node_port if s.wants_node_ports else None
    externally = bool(externals or node_port)
    internal_chain = svl if itp_local else svc
    has_internal = has_eps and (not itp_local or bool(local_eps))
    has_external = has_eps and (not etp_local or bool(local_eps))

    # Dispatch: the nat table's KUBE-SERVICES and KUBE-NODEPORTS.
    if has_internal:
        rs.add("nat", "KUBE-SERVICES", f"-d {s.cluster_ip}/32 {_match(info, f'{spn} cluster IP', p.port)} -j {internal_chain}")
    if has_eps:
        for what, ip in externals:
            rs.add("nat", "KUBE-SERVICES", f"-d {ip}/32 {_match(info, f'{spn} {what}', p.port)} -j {ext}")
        if node_port:
            rs.add("nat", "KUBE-NODEPORTS", f"{_match(info, spn, node_port)} -j {ext}")

    # Refusals in the filter table: no endpoints -> REJECT, no local ones -> DROP.
    if not has_internal:
        target = "REJECT --reject-with icmp-port-unreachable" if not has_eps else "DROP"
        why = "has no endpoints" if not has_eps else "has no local endpoints"
        rs.add("filter", "KUBE-SERVICES", f"-d {s.cluster_ip}/32 {_match(info, f'{spn} {why}', p.port)} -j {target}")
    if not has_external and externally:
        target = "REJECT --reject-with icmp-port-unreachable" if not has_eps else "DROP"
        why = "has no endpoints" if not has_eps else "has no local endpoints"
        for _, ip in externals:
            rs.add("filter", "KUBE-EXTERNAL-SERVICES", f"-d {ip}/32 {_match(info, f'{spn} {why}', p.port)} -j {target}")
        if node_port:
            rs.add("filter", "KUBE-EXTERNAL-SERVICES", f"{_match(info, f'{spn} {why}', node_port, ' -m addrtype --dst-type LOCAL')} -j {target}")
    if not has_eps:
        return

    # The service's own chains.
    uses_svc = not itp_local or (externally and not etp_local) or (externally and etp_local)
    uses_svl = (itp_local or (externally and etp_local)) and bool(local_eps)
    if uses_svc:
        rs.chain("nat", svc)
    if uses_svl:
        rs.chain("nat", svl)
    if has_internal:
        rs.add("nat", internal_chain, f"! -s {ctx.cluster_cidr} -d {s.cluster_ip}/32 {_match(info, f'{spn} cluster IP', p.port)} -j KUBE-MARK-MASQ")
    if externally:
        rs.chain("nat", ext)
        if not etp_local:
            rs.add("nat", ext, f'{_c(f"masquerade traffic for {spn} external destinations")} -j KUBE-MARK-MASQ')
            rs.add("nat", ext, f"-j {svc}")
        else:
            rs.add("nat", ext, f'-s {ctx.cluster_cidr} {_c(f"pod traffic for {spn} external destinations")} -j {svc}')
            rs.add("nat", ext, f'{_c(f"masquerade LOCAL traffic for {spn} external destinations")} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ')
            rs.add("nat", ext, f'{_c(f"route LOCAL traffic for {spn} external destinations")} -m addrtype --src-type LOCAL -j {svc}')
            if has_external:
                rs.add("nat", ext, f"-j {svl}")
    reached: dict[str, Endpoint] = {}
    if uses_svc:
        _endpoint_jumps(rs, svc, info, all_eps)
        reached.update((e.addr, e) for e in all_eps)
    if uses_svl:
        _endpoint_jumps(rs, svl, info, local_eps)
        reached.update((e.addr, e) for e in local_eps)
    for ep in reached.values():
        _endpoint_chain(rs, info, ep)


def render(topo: Topology, node: str, infos: list[ServicePortInfo] | None = None) -> Ruleset:
    """The KUBE-* chains of one node."""
    ctx = Context(node=node, cluster_cidr=topo.lab.pod_network)
    rs = Ruleset()
    rs.add("nat", "KUBE-MARK-MASQ", f"-j MARK --or-mark {MASQ_MARK}")
    rs.add("nat", "KUBE-POSTROUTING", f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN")
    rs.add("nat", "KUBE-POSTROUTING", f"-j MARK --xor-mark {MASQ_MARK}")
    rs.add("nat", "KUBE-POSTROUTING", f'{_c("kubernetes service traffic requiring SNAT")} -j MASQUERADE --random-fully')
    rs.add("filter", "KUBE-FORWARD", "-m conntrack --ctstate INVALID -j DROP")
    rs.add("filter", "KUBE-FORWARD", f'{_c("kubernetes forwarding rules")} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT')
    rs.add("filter", "KUBE-FORWARD", f'{_c("kubernetes forwarding conntrack rule")} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT')
    for info in infos if infos is not None else service_ports(topo):
        _service(rs, info, ctx)
    rs.add(
        "nat",
        "KUBE-SERVICES",
        f'{_c("kubernetes service nodeports; NOTE: this must be the last rule in this chain")} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
    )
    return rs


# -- transactions ---------------------------------------------------------------------


@dataclass
class Existing:
    """What a node's iptables already hold of kube-proxy's (from iptables-save)."""

    chains: set[str] = field(default_factory=set)  # "table/chain" of KUBE-* chains
    jumps: set[str] = field(default_factory=set)  # "table/CHAIN rule" of jumps into them


def parse_save(text: str) -> Existing:
    ex = Existing()
    table = None
    jump_rules = {f"{t}/{c} {r}" for t, js in JUMPS.items() for c, r in js}
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":KUBE-") and table:
            ex.chains.add(f"{table}/{line[1:].split()[0]}")
        elif line.startswith("-A ") and table:
            _, chain, rest = line.split(" ", 2)
            key = f"{table}/{chain} {rest}"
            if key in jump_rules:
                ex.jumps.add(key)
    return ex


def transaction(desired: Ruleset, record: dict[str, str] | None, existing: Existing | None = None) -> tuple[str, dict[str, str]]:
    """iptables-restore --noflush input taking the node from `record` (or, for a
    full sync, from `existing`) to `desired`; and the new record. Empty text:
    nothing to do."""
    new = desired.hashes()
    full = record is None
    before = set((existing or Existing()).chains) if full else set(record)
    out: list[str] = []
    changed = False
    for table in TABLES:
        chains = desired.tables[table]
        write = [c for c in chains if full or c in TOP[table] or record.get(f"{table}/{c}") != new[f"{table}/{c}"]]
        stale = sorted(k.split("/", 1)[1] for k in before if k.startswith(f"{table}/") and k.split("/", 1)[1] not in chains)
        jumps = [(c, r) for c, r in JUMPS[table] if full and f"{table}/{c} {r}" not in (existing or Existing()).jumps]
        if full or stale or any(not c in TOP[table] for c in write) or any(record.get(f"{table}/{c}") != new[f"{table}/{c}"] for c in TOP[table]):
            changed = True
        out.append(f"*{table}")
        out += [f":{c} - [0:0]" for c in write + stale]
        for c, r in reversed(jumps):
            out.append(f"-I {c} 1 {r}")
        for c in write:
            out += chains[c]
        out += [f"-X {c}" for c in stale]
        out.append("COMMIT")
    if not changed:
        return "", new
    return "\n".join(out) + "\n", new


def chains_in(text: str) -> list[str]:
    """Chains declared in a restore input (for tests and messages)."""
    return re.findall(r"^:(\S+)", text, flags=re.M)
