"""kube-proxy's IPVS mode, rendered as data. Pure.

What a node holds, as kube-proxy's IPVS proxier lays it out:

- the dummy device kube-ipvs0 (left down) with every ClusterIP, external IP
  and LoadBalancer IP as a /32, so the kernel takes them as local and IPVS
  sees the packets in LOCAL_IN;
- one virtual server per (IP, protocol, port): the ClusterIP, each external
  IP, the LoadBalancer IP and, for a NodePort, each address of the node but
  kube-ipvs0's and loopback (eth0's, cni0's, flannel.1's); real servers are
  the endpoints, masquerade (NAT) forwarding, weight 1; the Lab's scheduler
  (rr by default); ClientIP affinity is the persistent flag with its timeout;
- ipsets that the remaining iptables rules match on (KUBE-CLUSTER-IP,
  KUBE-LOOP-BACK, KUBE-NODE-PORT-TCP, ...);
- those few rules: the masquerade mark for service traffic from outside the
  pod network, the hairpin masquerade, NodePort and LoadBalancer marks,
  KUBE-IPVS-FILTER (a service IP on a port that is no service: rejected),
  KUBE-SOURCE-RANGES-FIREWALL (loadBalancerSourceRanges: a LoadBalancer IP
  in KUBE-LOAD-BALANCER-FW is let in only from KUBE-LOAD-BALANCER-SOURCE-CIDR),
  KUBE-IPVS-OUT-FILTER (the node itself kept off a LoadBalancer IP whose
  source ranges leave it out), the health check node ports accepted.
  As kube-proxy writes them (pkg/proxy/ipvs/proxier.go writeIptablesRules),
  the rules matching a set are left out while the set is empty; a sync that
  fills or empties one rewrites the mode's chains (and only those).

Traffic policies as kube-proxy's IPVS mode applies them: a Local policy gives
the virtual server only this node's endpoints (none: the kernel answers ICMP
port unreachable, as for a service without endpoints); there is no
short-circuit of pod traffic to external addresses, unlike iptables mode.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from labctl.model.objects import LabSpec, Topology
from labctl.plan.diff import keyed, members
from labctl.plan.ipset import hash_nets
from labctl.plumbing.node import Chains, masquerade_chains
from labctl.proxy.endpoints import ServicePortInfo, service_ports
from labctl.proxy.iptables import MASQ_MARK, tables_text
from labctl.proxy.mode import NodeContext, NodeSync, ProxyMode, entry, udp_frontends
from labctl.proxy.policy import decide

DEVICE = "kube-ipvs0"
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh")
# What kube-proxy's IPVS mode sets in each node (besides forwarding, set for every lab).
SYSCTLS = {
    "net.ipv4.vs.conntrack": "1",  # the masquerade rules need conntrack entries for IPVS connections
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
    # strictARP, as MetalLB requires: service IPs sit on kube-ipvs0 in every node, and
    # only the announcing node may answer ARP for a LoadBalancer IP
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
}
CONN_REUSE_FIXED = (5, 9)  # kube-proxy sets conn_reuse_mode=0 only on kernels older than this (#93297)


def sysctls(kernel_release: str) -> dict[str, str]:
    """SYSCTLS, plus conn_reuse_mode=0 on a kernel older than 5.9, as kube-proxy decides."""
    try:
        version = tuple(int(x) for x in kernel_release.split("-")[0].split(".")[:2])
    except ValueError:
        version = CONN_REUSE_FIXED
    return SYSCTLS if version >= CONN_REUSE_FIXED else {**SYSCTLS, "net.ipv4.vs.conn_reuse_mode": "0"}


# ipset name -> (type, create options)
SETS = {
    "KUBE-CLUSTER-IP": ("hash:ip,port", ""),
    "KUBE-LOOP-BACK": ("hash:ip,port,ip", ""),
    "KUBE-EXTERNAL-IP": ("hash:ip,port", ""),
    "KUBE-EXTERNAL-IP-LOCAL": ("hash:ip,port", ""),
    "KUBE-LOAD-BALANCER": ("hash:ip,port", ""),
    "KUBE-LOAD-BALANCER-LOCAL": ("hash:ip,port", ""),
    "KUBE-LOAD-BALANCER-FW": ("hash:ip,port", ""),
    "KUBE-LOAD-BALANCER-SOURCE-CIDR": ("hash:ip,port,net", ""),
    "KUBE-LOAD-BALANCER-SOURCE-IP": ("hash:ip,port,ip", ""),
    "KUBE-NODE-PORT-TCP": ("bitmap:port", " range 0-65535"),
    "KUBE-NODE-PORT-LOCAL-TCP": ("bitmap:port", " range 0-65535"),
    "KUBE-NODE-PORT-UDP": ("bitmap:port", " range 0-65535"),
    "KUBE-NODE-PORT-LOCAL-UDP": ("bitmap:port", " range 0-65535"),
    "KUBE-NODE-PORT-SCTP-HASH": ("hash:ip,port", ""),
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH": ("hash:ip,port", ""),
    "KUBE-HEALTH-CHECK-NODE-PORT": ("bitmap:port", " range 0-65535"),
    "KUBE-IPVS-IPS": ("hash:ip", ""),
}
COMMENTS = {
    "KUBE-CLUSTER-IP": "Kubernetes service cluster ip + port for masquerade purpose",
    "KUBE-LOOP-BACK": "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
    "KUBE-EXTERNAL-IP": "Kubernetes service external ip + port for masquerade and filter purpose",
    "KUBE-EXTERNAL-IP-LOCAL": "Kubernetes service external ip + port with externalTrafficPolicy=local",
    "KUBE-LOAD-BALANCER": "Kubernetes service lb portal",
    "KUBE-LOAD-BALANCER-LOCAL": "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
    "KUBE-LOAD-BALANCER-FW": "Kubernetes service load balancer ip + port for load balancer with sourceRange",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR": "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
    "KUBE-LOAD-BALANCER-SOURCE-IP": "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
    "KUBE-NODE-PORT-TCP": "Kubernetes nodeport TCP port for masquerade purpose",
    "KUBE-NODE-PORT-LOCAL-TCP": "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
    "KUBE-NODE-PORT-UDP": "Kubernetes nodeport UDP port for masquerade purpose",
    "KUBE-NODE-PORT-LOCAL-UDP": "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
    "KUBE-NODE-PORT-SCTP-HASH": "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH": "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
    "KUBE-HEALTH-CHECK-NODE-PORT": "Kubernetes health check node port",
    "KUBE-IPVS-IPS": "Addresses on the ipvs interface",
}


@dataclass(frozen=True)
class VirtualServer:
    ip: str
    proto: str  # tcp | udp | sctp
    port: int
    scheduler: str
    timeout: int  # persistence (ClientIP affinity) in seconds; 0: none
    dests: tuple[tuple[str, int], ...]  # real servers, masquerade forwarding, weight 1
    service: str = field(default="", compare=False)  # ns/name:port, for messages

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.ip, self.proto, self.port)

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass
class NodeIpvs:
    """Everything the IPVS mode puts in one node."""

    addresses: set[str] = field(default_factory=set)  # on kube-ipvs0, /32 each
    servers: dict[tuple[str, str, int], VirtualServer] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=lambda: {name: set() for name in SETS})
    no_node_access: list[tuple[str, str, int]] = field(default_factory=list)  # LoadBalancer (IP, protocol, port) kept from the node
    rules: str | None = None  # a partial sync: the mode's chains again (`--noflush`), when what they hold changed

    def add(self, vs: VirtualServer) -> None:
        self.servers[vs.key] = vs


def _vs(info: ServicePortInfo, ip: str, port: int, eps, scheduler: str) -> VirtualServer:
    s = info.service
    timeout = s.affinity_timeout if s.session_affinity == "ClientIP" else 0
    dests = tuple(sorted({(e.ip, e.port) for e in eps}))
    return VirtualServer(ip, info.proto, port, scheduler, timeout, dests, info.spn)


def node_addresses(topo: Topology, node: str) -> list[str]:
    """Where kube-proxy puts a NodePort's virtual servers: every address of the node
    but kube-ipvs0's and loopback (eth0's, cni0's, the overlay device's)."""
    from labctl import registry
    from labctl.model import ipam

    n = topo.lab.node(node)
    assert n.ip and n.pod_cidr
    found = [n.ip, ipam.gateway(n.pod_cidr), registry.overlay(topo.lab.overlay).node_source_ip(topo.lab, n)]
    return list(dict.fromkeys(found))


def render(topo: Topology, node: str, infos: list[ServicePortInfo] | None = None) -> NodeIpvs:
    """The kube-ipvs0 addresses, virtual servers and ipset members of one node."""
    infos = infos if infos is not None else service_ports(topo)
    node_ip = topo.lab.node(node).ip
    sched = topo.lab.ipvs_scheduler
    out = NodeIpvs()
    node_ips: list[str] | None = None
    for info in infos:
        s, p, proto = info.service, info.port, info.proto
        pol = decide(info, node)
        internal = pol.local if pol.internal_local else pol.endpoints
        external = pol.local if pol.external_local else pol.endpoints
        entry = f"{s.cluster_ip},{proto}:{p.port}"
        out.addresses.add(s.cluster_ip)
        out.sets["KUBE-CLUSTER-IP"].add(entry)
        out.add(_vs(info, s.cluster_ip, p.port, internal, sched))
        for ep in info.local(node):  # every local endpoint, whatever the policies
            out.sets["KUBE-LOOP-BACK"].add(f"{ep.ip},{proto}:{ep.port},{ep.ip}")
        for what, ip in pol.externals:
            out.addresses.add(ip)
            entry = f"{ip},{proto}:{p.port}"
            if what == "loadbalancer IP":
                out.sets["KUBE-LOAD-BALANCER"].add(entry)
                if pol.external_local:
                    out.sets["KUBE-LOAD-BALANCER-LOCAL"].add(entry)
            else:  # an external IP is in one set or the other
                out.sets["KUBE-EXTERNAL-IP-LOCAL" if pol.external_local else "KUBE-EXTERNAL-IP"].add(entry)
            if what == "loadbalancer IP" and pol.firewalled:
                out.sets["KUBE-LOAD-BALANCER-FW"].add(entry)
                node_allowed = False
                for src in pol.allowed_sources(node_ip):  # ranges (hash:net), the LB IP itself (hash:ip)
                    if "/" in src:
                        out.sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"].update(f"{entry},{net}" for net in hash_nets(src))
                    else:
                        node_allowed = True
                        out.sets["KUBE-LOAD-BALANCER-SOURCE-IP"].add(f"{entry},{src}")
                if not node_allowed:
                    out.no_node_access.append((ip, proto, p.port))
            out.add(_vs(info, ip, p.port, external, sched))
        if pol.node_port:
            np = pol.node_port
            node_ips = node_ips or node_addresses(topo, node)
            if proto == "sctp":
                out.sets["KUBE-NODE-PORT-SCTP-HASH"].update(f"{a},sctp:{np}" for a in node_ips)
                if pol.external_local:
                    out.sets["KUBE-NODE-PORT-LOCAL-SCTP-HASH"].update(f"{a},sctp:{np}" for a in node_ips)
            else:
                out.sets[f"KUBE-NODE-PORT-{proto.upper()}"].add(str(np))
                if pol.external_local:
                    out.sets[f"KUBE-NODE-PORT-LOCAL-{proto.upper()}"].add(str(np))
            for a in node_ips:
                out.add(_vs(info, a, np, external, sched))
        if s.needs_health_check and s.health_check_node_port:
            out.sets["KUBE-HEALTH-CHECK-NODE-PORT"].add(str(s.health_check_node_port))
    out.sets["KUBE-IPVS-IPS"] = set(out.addresses)
    return out


# -- ipsets ---------------------------------------------------------------------------


def set_name(name: str, six: bool = False) -> str:
    """A set's name in the node: the IPv6 proxier's are KUBE-6-..., as kube-proxy names them,
    cut to ipset's 31 characters (KUBE-6-LOAD-BALANCER-SOURCE-CID)."""
    return ("KUBE-6-" + name.removeprefix("KUBE-"))[:31] if six else name


def _create(name: str, kind: str, opts: str, six: bool) -> str:
    family = " family inet6" if six and kind.startswith("hash:") else ""
    return f"create {set_name(name, six)} {kind}{family}{opts} -exist"


def ipset_full(sets: dict[str, set[str]], six: bool = False) -> str:
    """`ipset restore` input that makes every KUBE-* set exactly `sets` (`six`: the IPv6 family's)."""
    out = []
    for name, (kind, opts) in SETS.items():
        out.append(_create(name, kind, opts, six))
        out.append(f"flush {set_name(name, six)}")
        out += [f"add {set_name(name, six)} {m}" for m in sorted(sets.get(name, ()))]
    return "\n".join(out) + "\n"


def ipset_update(sets: dict[str, set[str]], old: dict[str, list[str]], six: bool = False) -> str:
    """`ipset restore` input for the members that changed (empty: nothing to do)."""
    out = []
    for name, (kind, opts) in SETS.items():
        will = sets.get(name, set())
        if name not in old and will:  # a set this node's record does not know (made by an older labctl)
            out.append(_create(name, kind, opts, six))
        added, removed = members(sorted(old.get(name, ())), sorted(will))
        out += [f"del {set_name(name, six)} {m}" for m in removed]
        out += [f"add {set_name(name, six)} {m}" for m in added]
    return "\n".join(out) + "\n" if out else ""


def ipset_destroy(six: bool = False) -> str:
    """`ipset restore` input removing the KUBE-* sets (leaving IPVS mode; after the rules that use them)."""
    return "".join(f"{_create(n, k, o, six)}\ndestroy {set_name(n, six)}\n" for n, (k, o) in SETS.items())


# -- the iptables rules that remain -------------------------------------------------


def _c(text: str) -> str:
    return f'-m comment --comment "{text}"'


def chains(cluster_cidr: str, n: NodeIpvs | None = None) -> Chains:
    """kube-proxy's IPVS-mode chains in the nat and filter tables, and their jumps, in
    the order its writeIptablesRules writes them: a rule matching a set only while the
    set has members (`n`: the node's sets; None: as if every set had some)."""
    nat: dict[str, list[str]] = {c: [] for c in ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ")}
    filt: dict[str, list[str]] = {
        c: [] for c in ("KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER")
    }

    def full_(name: str) -> bool:
        return n is None or bool(n.sets.get(name))

    def nat_(chain: str, rule: str, needs: str | None = None) -> None:
        if needs is None or full_(needs):
            nat[chain].append(f"-A {chain} {rule}")

    def filter_(chain: str, rule: str, needs: str | None = None) -> None:
        if needs is None or full_(needs):
            filt[chain].append(f"-A {chain} {rule}")

    six = ":" in cluster_cidr  # the IPv6 proxier's chains (ip6tables), matching its KUBE-6- sets

    def on(name: str, match: str) -> str:
        return f"{_c(COMMENTS[name])} -m set --match-set {set_name(name, six)} {match}"

    def s_(name: str) -> str:
        return set_name(name, six)

    nat_("KUBE-SERVICES", f"-s {'::1/128' if six else '127.0.0.0/8'} -j RETURN")  # connections to localhost: dismissed early
    # the sets with a chain of their own (kube-proxy's ipsetWithIptablesChain)
    nat_("KUBE-POSTROUTING", f"{on('KUBE-LOOP-BACK', 'dst,dst,src')} -j MASQUERADE", "KUBE-LOOP-BACK")
    nat_("KUBE-SERVICES", f"{on('KUBE-LOAD-BALANCER', 'dst,dst')} -j KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER")
    nat_("KUBE-LOAD-BALANCER", f"{on('KUBE-LOAD-BALANCER-LOCAL', 'dst,dst')} -j RETURN", "KUBE-LOAD-BALANCER-LOCAL")
    for proto, local, masq, match in (
        ("tcp", "KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-TCP", "dst"),
        ("udp", "KUBE-NODE-PORT-LOCAL-UDP", "KUBE-NODE-PORT-UDP", "dst"),
        ("sctp", "KUBE-NODE-PORT-LOCAL-SCTP-HASH", "KUBE-NODE-PORT-SCTP-HASH", "dst,dst"),
    ):
        nat_("KUBE-NODE-PORT", f"-p {proto} {on(local, match)} -j RETURN", local)
        nat_("KUBE-NODE-PORT", f"-p {proto} {on(masq, match)} -j KUBE-MARK-MASQ", masq)
    filter_("KUBE-PROXY-FIREWALL", f"{on('KUBE-LOAD-BALANCER-FW', 'dst,dst')} -j KUBE-SOURCE-RANGES-FIREWALL", "KUBE-LOAD-BALANCER-FW")
    for name in ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "KUBE-LOAD-BALANCER-SOURCE-IP"):
        filter_("KUBE-SOURCE-RANGES-FIREWALL", f"{on(name, 'dst,dst,src')} -j RETURN", name)
    # the others
    nat_("KUBE-SERVICES", f"! -s {cluster_cidr} {on('KUBE-CLUSTER-IP', 'dst,dst')} -j KUBE-MARK-MASQ", "KUBE-CLUSTER-IP")
    ext = on("KUBE-EXTERNAL-IP", "dst,dst")
    nat_("KUBE-SERVICES", f"{ext} -j KUBE-MARK-MASQ", "KUBE-EXTERNAL-IP")
    nat_("KUBE-SERVICES", f"{ext} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT", "KUBE-EXTERNAL-IP")
    nat_("KUBE-SERVICES", f"{ext} -m addrtype --dst-type LOCAL -j ACCEPT", "KUBE-EXTERNAL-IP")
    ext_local = on("KUBE-EXTERNAL-IP-LOCAL", "dst,dst")
    nat_("KUBE-SERVICES", f"{ext_local} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT", "KUBE-EXTERNAL-IP-LOCAL")
    nat_("KUBE-SERVICES", f"{ext_local} -m addrtype --dst-type LOCAL -j ACCEPT", "KUBE-EXTERNAL-IP-LOCAL")
    nat_("KUBE-SERVICES", "-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat_("KUBE-LOAD-BALANCER", "-j KUBE-MARK-MASQ")
    filter_("KUBE-SOURCE-RANGES-FIREWALL", "-j DROP")
    for ip, proto, port in n.no_node_access if n is not None else ():
        host = f"{ip}/128" if six else f"{ip}/32"
        filter_("KUBE-IPVS-OUT-FILTER", f"-s {host} -m ipvs --vaddr {host} --vproto {proto} --vport {port} -j DROP")
    nat_("KUBE-SERVICES", f"-m set --match-set {s_('KUBE-CLUSTER-IP')} dst,dst -j ACCEPT", "KUBE-CLUSTER-IP")
    nat_("KUBE-SERVICES", f"-m set --match-set {s_('KUBE-LOAD-BALANCER')} dst,dst -j ACCEPT", "KUBE-LOAD-BALANCER")
    filter_("KUBE-FORWARD", f"{_c('kubernetes forwarding rules')} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT")
    filter_("KUBE-FORWARD", f"{_c('kubernetes forwarding conntrack rule')} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    filter_("KUBE-NODE-PORT", f"{on('KUBE-HEALTH-CHECK-NODE-PORT', 'dst')} -j ACCEPT")
    for name in ("KUBE-LOAD-BALANCER", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        filter_("KUBE-IPVS-FILTER", f"-m set --match-set {s_(name)} dst,dst -j RETURN")
    filter_("KUBE-IPVS-FILTER", f"-m set --match-set {s_('KUBE-HEALTH-CHECK-NODE-PORT')} dst -j RETURN")
    reject = "icmp6-port-unreachable" if six else "icmp-port-unreachable"
    filter_("KUBE-IPVS-FILTER", f"-m conntrack --ctstate NEW -m set --match-set {s_('KUBE-IPVS-IPS')} dst -j REJECT --reject-with {reject}")
    nat_("KUBE-POSTROUTING", f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN")
    nat_("KUBE-POSTROUTING", f"-j MARK --xor-mark {MASQ_MARK}")
    nat_("KUBE-POSTROUTING", f"{_c('kubernetes service traffic requiring SNAT')} -j MASQUERADE --random-fully")
    nat_("KUBE-MARK-MASQ", f"-j MARK --or-mark {MASQ_MARK}")

    jumps = [
        ("nat", "PREROUTING", f"{_c('kubernetes service portals')} -j KUBE-SERVICES"),
        ("nat", "OUTPUT", f"{_c('kubernetes service portals')} -j KUBE-SERVICES"),
        ("nat", "POSTROUTING", f"{_c('kubernetes postrouting rules')} -j KUBE-POSTROUTING"),
        ("filter", "INPUT", f"{_c('kubernetes ipvs access filter')} -j KUBE-IPVS-FILTER"),
        ("filter", "INPUT", f"{_c('kube-proxy firewall rules')} -j KUBE-PROXY-FIREWALL"),
        ("filter", "INPUT", f"{_c('kubernetes health check rules')} -j KUBE-NODE-PORT"),
        ("filter", "FORWARD", f"{_c('kube-proxy firewall rules')} -j KUBE-PROXY-FIREWALL"),
        ("filter", "FORWARD", f"{_c('kubernetes forwarding rules')} -j KUBE-FORWARD"),
        ("filter", "OUTPUT", f"{_c('kubernetes ipvs access filter')} -j KUBE-IPVS-OUT-FILTER"),
    ]
    return Chains({"nat": nat, "filter": filt}, jumps)


def rules_text(ours: Chains) -> str:
    """The mode's chains alone, for `iptables-restore --noflush`: each is flushed and
    written again, every other chain (flannel's, the policy's) and the jumps stay."""
    return Chains(ours.chains, []).text()


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def full(ours: Chains, flannel: Chains) -> str:
    """The node's nat and filter tables whole (kube-proxy's jumps first, then flannel's)."""
    return tables_text(ours, flannel)


# -- reconciling virtual servers -----------------------------------------------------


@dataclass
class Changes:
    """What to do to a node's IPVS table to reach the rendered one (only what differs)."""

    add: list[VirtualServer] = field(default_factory=list)  # new virtual servers, with their real servers
    set: list[VirtualServer] = field(default_factory=list)  # scheduler or persistence changed
    remove: list[VirtualServer] = field(default_factory=list)
    add_dests: list[tuple[VirtualServer, tuple[str, int]]] = field(default_factory=list)
    remove_dests: list[tuple[VirtualServer, tuple[str, int]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.add) + len(self.set) + len(self.remove) + len(self.add_dests) + len(self.remove_dests)

    @property
    def requests(self) -> int:
        """Netlink requests these changes take (a new virtual server: one, plus one per real server)."""
        return len(self) + sum(len(vs.dests) for vs in self.add)


def diff(current: dict[tuple[str, str, int], VirtualServer], desired: dict[tuple[str, str, int], VirtualServer]) -> Changes:
    d = keyed(current, desired)
    ch = Changes(add=[desired[k] for k in d.added], remove=[current[k] for k in d.removed])
    for key in d.changed:
        have, want = current[key], desired[key]
        if (have.scheduler, have.timeout) != (want.scheduler, want.timeout):
            ch.set.append(want)
        added, removed = members(have.dests, want.dests)
        ch.add_dests += [(want, x) for x in added]
        ch.remove_dests += [(want, x) for x in removed]
    return ch


# -- the mode ---------------------------------------------------------------------------


class Ipvs(ProxyMode):
    """kube-proxy's IPVS mode: virtual servers in the kernel's IPVS table, ipsets,
    a few iptables rules, service addresses on kube-ipvs0 (labctl.proxy.ipvs_kernel)."""

    name = "ipvs"
    tracer = "xtables"
    traces_ipvs = True
    replaces_filter = True  # a full sync restores the filter table whole

    def require(self, spec: LabSpec) -> None:
        from labctl.kernel import run
        from labctl.proxy import ipvs_kernel

        run.require("iptables-restore", "iptables")
        run.require("ipset", "ipset")
        ipvs_kernel.require(spec.ipvs_scheduler)

    def plan(self, ctx: NodeContext) -> NodeSync | None:
        """The node's IPVS state. With a record of this mode: nothing when no service
        port's fingerprint moved, else the set members that changed, and the moved ports'
        virtual servers to read back (the others are as the last sync left them)."""
        topo, node, node_ip, rec = ctx.topo, ctx.node, ctx.node_ip, ctx.record
        infos = ctx.all_ports()
        want = render(topo, node, infos)
        by_key = {i.key: i for i in infos}
        fps = {i.key: f"{i.fingerprint(node)}/{topo.lab.ipvs_scheduler}" for i in infos}
        services = {k: {"fp": fp, **entry(by_key[k], node_ip)} for k, fp in fps.items()}
        ours = chains(topo.lab.pod_network, want)
        rules = rules_text(ours)
        extra = {"sets": {k: sorted(v) for k, v in want.sets.items()}, "rules": _digest(rules)}
        if rec is not None and rec.get("mode") == self.name:
            old = rec["services"]
            d = keyed({k: v.get("fp") for k, v in old.items()}, fps)
            moved, removed = {*d.added, *d.changed}, set(d.removed)
            if not moved and not removed:
                return None
            if rec.get("rules") != extra["rules"]:  # a set filled or emptied: its rules come or go
                want.rules = rules
            text = ipset_update(want.sets, rec.get("sets", {}), ":" in topo.lab.pod_network)
            reread = {vs.key for vs in want.servers.values() if f"{vs.service}/{vs.proto}" in moved}
            udp = udp_frontends(by_key, moved | removed, old, node_ip)
            return NodeSync(node, self.name, False, text, services, frozenset(moved | removed), udp, extra=extra, state=want, moved=reread)
        text = full(ours, masquerade_chains(topo.lab, topo.lab.node(node)))
        udp = udp_frontends(by_key, fps, {}, node_ip)
        return NodeSync(node, self.name, True, text, services, frozenset(fps), udp, extra=extra, state=want)

    def apply(self, topo: Topology, syncs: list[NodeSync]) -> None:
        """Every node's IPVS sync, nodes in parallel."""
        from labctl.proxy.sync import each_node

        each_node(topo, syncs, apply_node)

    def leave(self, topo: Topology, node: str) -> None:
        """Back to flannel's chains alone, no virtual server, no kube-ipvs0, no set."""
        from labctl.kernel import run
        from labctl.model.names import node_netns
        from labctl.proxy import ipvs_kernel
        from labctl.proxy.iptables import full as iptables_full

        ns = node_netns(topo.lab.name, node)
        six = ":" in topo.lab.pod_network  # (called once per family's view)
        restore = "ip6tables-restore" if six else "iptables-restore"
        run.apply_all([run.Transaction(ns, [restore], iptables_full(None, masquerade_chains(topo.lab, topo.lab.node(node))))])
        ipvs_kernel.flush(ns)
        ipvs_kernel.remove_device(ns)
        run.apply_all([run.Transaction(ns, ["ipset", "restore"], ipset_destroy(six))])

    def policy_entry(self, spec: LabSpec) -> list[tuple[str, str]]:
        from labctl.policy.rules import ipvs_jumps

        return ipvs_jumps(spec.pod_network)

    def status(self, spec: LabSpec) -> dict:
        return {"ipvsScheduler": spec.ipvs_scheduler}

    def explain(self, info: ServicePortInfo, node: str) -> list[str]:
        s = info.service
        dests = ", ".join(e.addr for e in info.endpoints) or "none: the kernel answers port unreachable"
        return [
            f"IPVS virtual server {info.proto.upper()} {s.cluster_ip}:{info.port.port} ({s.session_affinity == 'ClientIP' and 'persistent, ' or ''}Masq) -> {dests}"
        ]


def apply_node(ns: str, s: NodeSync, full_read: bool = False) -> int:
    """One node's IPVS sync: sets first (the rules match on them), the rules (full
    syncs), sysctls, new addresses, the IPVS table, stale addresses last. Returns
    the netlink requests sent to the IPVS table."""
    from labctl.kernel import netns, run
    from labctl.proxy import ipvs_kernel

    want = s.state
    assert want is not None
    six = s.family == 6  # the IPv6 proxier's: its sets, ip6tables, its virtual servers and addresses
    restore = "ip6tables-restore" if six else "iptables-restore"
    sets = ipset_full(want.sets, six) if s.full else s.text
    run.apply_all([run.Transaction(ns, ["ipset", "restore"], sets)] if sets else [])
    if s.full:
        run.apply_all([run.Transaction(ns, [restore], s.text)])
        netns.write_sysctls(ns, sysctls(os.uname().release))
    elif want.rules:
        run.apply_all([run.Transaction(ns, [restore, "--noflush"], want.rules)])
    have = ipvs_kernel.addresses(ns, six)
    ipvs_kernel.set_addresses(ns, sorted(want.addresses - (have or set())), [], create=have is None)
    # a full sync reads every real server back; a partial one those of the service ports that moved
    current = ipvs_kernel.read(ns, None if s.full or full_read else s.moved, want.servers, six)
    changes = diff(current, want.servers)
    ipvs_kernel.apply(ns, changes)
    ipvs_kernel.set_addresses(ns, [], sorted((have or set()) - want.addresses))
    return changes.requests


MODE = Ipvs()
