"""kube-proxy's IPVS mode, rendered as data. Pure.

What a node holds, as kube-proxy's IPVS proxier lays it out:

- the dummy device kube-ipvs0 (left down) with every ClusterIP, external IP
  and LoadBalancer IP as a /32, so the kernel takes them as local and IPVS
  sees the packets in LOCAL_IN;
- one virtual server per (IP, protocol, port): the ClusterIP, each external
  IP, the LoadBalancer IP and, for a NodePort, the node's IP; real servers are
  the endpoints, masquerade (NAT) forwarding, weight 1; the Lab's scheduler
  (rr by default); ClientIP affinity is the persistent flag with its timeout;
- ipsets that the remaining iptables rules match on (KUBE-CLUSTER-IP,
  KUBE-LOOP-BACK, KUBE-NODE-PORT-TCP, ...);
- those few rules: the masquerade mark for service traffic from outside the
  pod network, the hairpin masquerade, NodePort and LoadBalancer marks,
  KUBE-IPVS-FILTER (a service IP on a port that is no service: rejected),
  KUBE-SOURCE-RANGES-FIREWALL (loadBalancerSourceRanges: a LoadBalancer IP
  in KUBE-LOAD-BALANCER-FW is let in only from KUBE-LOAD-BALANCER-SOURCE-CIDR).
  Rules on sets are always written (kube-proxy leaves out those of empty
  sets): an empty set matches nothing, so the datapath is the same.

Traffic policies as kube-proxy's IPVS mode applies them: a Local policy gives
the virtual server only this node's endpoints (none: the kernel answers ICMP
port unreachable, as for a service without endpoints); there is no
short-circuit of pod traffic to external addresses, unlike iptables mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labctl.model.objects import Topology
from labctl.plumbing.node import Chains
from labctl.proxy.endpoints import ServicePortInfo, service_ports
from labctl.proxy.iptables import MASQ_MARK, tables_text
from labctl.proxy.policy import decide

DEVICE = "kube-ipvs0"
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh")
# What kube-proxy's IPVS mode sets in each node (besides forwarding, set for every lab).
SYSCTLS = {
    "net.ipv4.vs.conntrack": "1",  # the masquerade rules need conntrack entries for IPVS connections
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
    "net.ipv4.vs.conn_reuse_mode": "0",
    # strictARP, as MetalLB requires: service IPs sit on kube-ipvs0 in every node, and
    # only the announcing node may answer ARP for a LoadBalancer IP
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
}
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
    "KUBE-NODE-PORT-SCTP-HASH": "Kubernetes nodeport SCTP port for masquerade purpose",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH": "Kubernetes nodeport SCTP port with externalTrafficPolicy=local",
    "KUBE-IPVS-IPS": "IPVS service IP addresses",
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
        return f"{self.ip}:{self.port}"


@dataclass
class NodeIpvs:
    """Everything the IPVS mode puts in one node."""

    addresses: set[str] = field(default_factory=set)  # on kube-ipvs0, /32 each
    servers: dict[tuple[str, str, int], VirtualServer] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=lambda: {name: set() for name in SETS})

    def add(self, vs: VirtualServer) -> None:
        self.servers[vs.key] = vs


def _vs(info: ServicePortInfo, ip: str, port: int, eps, scheduler: str) -> VirtualServer:
    s = info.service
    timeout = s.affinity_timeout if s.session_affinity == "ClientIP" else 0
    dests = tuple(sorted({(e.ip, e.port) for e in eps}))
    return VirtualServer(ip, info.proto, port, scheduler, timeout, dests, info.spn)


def render(topo: Topology, node: str, infos: list[ServicePortInfo] | None = None) -> NodeIpvs:
    """The kube-ipvs0 addresses, virtual servers and ipset members of one node."""
    infos = infos if infos is not None else service_ports(topo)
    node_ip = topo.lab.node(node).ip
    sched = topo.lab.ipvs_scheduler
    out = NodeIpvs()
    for info in infos:
        s, p, proto = info.service, info.port, info.proto
        pol = decide(info, node)
        internal = pol.local if pol.internal_local else pol.endpoints
        external = pol.local if pol.external_local else pol.endpoints
        entry = f"{s.cluster_ip},{proto}:{p.port}"
        out.addresses.add(s.cluster_ip)
        out.sets["KUBE-CLUSTER-IP"].add(entry)
        out.add(_vs(info, s.cluster_ip, p.port, internal, sched))
        for ep in pol.reached() if pol.has_endpoints else ():
            out.sets["KUBE-LOOP-BACK"].add(f"{ep.ip},{proto}:{ep.port},{ep.ip}")
        for what, ip in pol.externals:
            out.addresses.add(ip)
            entry = f"{ip},{proto}:{p.port}"
            kind = "LOAD-BALANCER" if what == "loadbalancer IP" else "EXTERNAL-IP"
            out.sets[f"KUBE-{kind}"].add(entry)
            if pol.external_local:
                out.sets[f"KUBE-{kind}-LOCAL"].add(entry)
            if kind == "LOAD-BALANCER" and pol.firewalled:
                out.sets["KUBE-LOAD-BALANCER-FW"].add(entry)
                for src in pol.allowed_sources(node_ip):  # ranges (hash:net), the LB IP itself (hash:ip)
                    if "/" in src:
                        out.sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"].update(f"{entry},{net}" for net in _hash_nets(src))
                    else:
                        out.sets["KUBE-LOAD-BALANCER-SOURCE-IP"].add(f"{entry},{src}")
            out.add(_vs(info, ip, p.port, external, sched))
        if pol.node_port:
            np = pol.node_port
            if proto == "sctp":
                out.sets["KUBE-NODE-PORT-SCTP-HASH"].add(f"{node_ip},sctp:{np}")
                if pol.external_local:
                    out.sets["KUBE-NODE-PORT-LOCAL-SCTP-HASH"].add(f"{node_ip},sctp:{np}")
            else:
                out.sets[f"KUBE-NODE-PORT-{proto.upper()}"].add(str(np))
                if pol.external_local:
                    out.sets[f"KUBE-NODE-PORT-LOCAL-{proto.upper()}"].add(str(np))
            out.add(_vs(info, node_ip, np, external, sched))
    out.sets["KUBE-IPVS-IPS"] = set(out.addresses)
    return out


def _hash_nets(cidr: str) -> list[str]:
    """A source range as hash:net members: they cannot hold a /0 (kube-proxy's own
    add then fails and the range lets nothing in), so 0.0.0.0/0 is its two halves."""
    return ["0.0.0.0/1", "128.0.0.0/1"] if cidr.endswith("/0") else [cidr]


# -- ipsets ---------------------------------------------------------------------------


def ipset_full(sets: dict[str, set[str]]) -> str:
    """`ipset restore` input that makes every KUBE-* set exactly `sets`."""
    out = []
    for name, (kind, opts) in SETS.items():
        out.append(f"create {name} {kind}{opts} -exist")
        out.append(f"flush {name}")
        out += [f"add {name} {m}" for m in sorted(sets.get(name, ()))]
    return "\n".join(out) + "\n"


def ipset_update(sets: dict[str, set[str]], old: dict[str, list[str]]) -> str:
    """`ipset restore` input for the members that changed (empty: nothing to do)."""
    out = []
    for name, (kind, opts) in SETS.items():
        was, will = set(old.get(name, ())), sets.get(name, set())
        if name not in old and will:  # a set this node's record does not know (made by an older labctl)
            out.append(f"create {name} {kind}{opts} -exist")
        out += [f"del {name} {m}" for m in sorted(was - will)]
        out += [f"add {name} {m}" for m in sorted(will - was)]
    return "\n".join(out) + "\n" if out else ""


def ipset_destroy() -> str:
    """`ipset restore` input removing the KUBE-* sets (leaving IPVS mode; after the rules that use them)."""
    return "".join(f"create {n} {k}{o} -exist\ndestroy {n}\n" for n, (k, o) in SETS.items())


# -- the iptables rules that remain -------------------------------------------------


def _c(text: str) -> str:
    return f'-m comment --comment "{text}"'


def chains(cluster_cidr: str) -> Chains:
    """kube-proxy's IPVS-mode chains in the nat and filter tables, and their jumps."""
    nat: dict[str, list[str]] = {c: [] for c in ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ")}
    filt: dict[str, list[str]] = {c: [] for c in ("KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER")}

    def n(chain: str, rule: str) -> None:
        nat[chain].append(f"-A {chain} {rule}")

    def f(chain: str, rule: str) -> None:
        filt[chain].append(f"-A {chain} {rule}")

    ext = _c(COMMENTS["KUBE-EXTERNAL-IP"])
    n("KUBE-SERVICES", f'{_c(COMMENTS["KUBE-LOAD-BALANCER"])} -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER')
    n("KUBE-SERVICES", f'! -s {cluster_cidr} {_c(COMMENTS["KUBE-CLUSTER-IP"])} -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ')
    n("KUBE-SERVICES", f"{ext} -m set --match-set KUBE-EXTERNAL-IP dst,dst -j KUBE-MARK-MASQ")
    n("KUBE-SERVICES", f"{ext} -m set --match-set KUBE-EXTERNAL-IP dst,dst -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
    n("KUBE-SERVICES", f"{ext} -m set --match-set KUBE-EXTERNAL-IP dst,dst -m addrtype --dst-type LOCAL -j ACCEPT")
    n("KUBE-SERVICES", "-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    n("KUBE-SERVICES", "-m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT")
    n("KUBE-SERVICES", "-m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT")
    n("KUBE-LOAD-BALANCER", f'{_c(COMMENTS["KUBE-LOAD-BALANCER-LOCAL"])} -m set --match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN')
    n("KUBE-LOAD-BALANCER", "-j KUBE-MARK-MASQ")
    for proto in ("tcp", "udp"):
        P = proto.upper()
        n("KUBE-NODE-PORT", f'-p {proto} {_c(COMMENTS[f"KUBE-NODE-PORT-LOCAL-{P}"])} -m set --match-set KUBE-NODE-PORT-LOCAL-{P} dst -j RETURN')
        n("KUBE-NODE-PORT", f'-p {proto} {_c(COMMENTS[f"KUBE-NODE-PORT-{P}"])} -m set --match-set KUBE-NODE-PORT-{P} dst -j KUBE-MARK-MASQ')
    n("KUBE-NODE-PORT", f'-p sctp {_c(COMMENTS["KUBE-NODE-PORT-LOCAL-SCTP-HASH"])} -m set --match-set KUBE-NODE-PORT-LOCAL-SCTP-HASH dst,dst -j RETURN')
    n("KUBE-NODE-PORT", f'-p sctp {_c(COMMENTS["KUBE-NODE-PORT-SCTP-HASH"])} -m set --match-set KUBE-NODE-PORT-SCTP-HASH dst,dst -j KUBE-MARK-MASQ')
    n("KUBE-MARK-MASQ", f"-j MARK --or-mark {MASQ_MARK}")
    n("KUBE-POSTROUTING", f'{_c(COMMENTS["KUBE-LOOP-BACK"])} -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE')
    n("KUBE-POSTROUTING", f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN")
    n("KUBE-POSTROUTING", f"-j MARK --xor-mark {MASQ_MARK}")
    n("KUBE-POSTROUTING", f'{_c("kubernetes service traffic requiring SNAT")} -j MASQUERADE --random-fully')

    f("KUBE-PROXY-FIREWALL", f'{_c(COMMENTS["KUBE-LOAD-BALANCER-FW"])} -m set --match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL')
    for s in ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "KUBE-LOAD-BALANCER-SOURCE-IP"):
        f("KUBE-SOURCE-RANGES-FIREWALL", f"{_c(COMMENTS[s])} -m set --match-set {s} dst,dst,src -j RETURN")
    f("KUBE-SOURCE-RANGES-FIREWALL", "-j DROP")
    f("KUBE-FORWARD", "-m conntrack --ctstate INVALID -j DROP")
    f("KUBE-FORWARD", f'{_c("kubernetes forwarding rules")} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT')
    f("KUBE-FORWARD", f'{_c("kubernetes forwarding conntrack rule")} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT')
    for s in ("KUBE-LOAD-BALANCER", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        f("KUBE-IPVS-FILTER", f"-m set --match-set {s} dst,dst -j RETURN")
    f("KUBE-IPVS-FILTER", "-m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable")

    jumps = [
        ("nat", "PREROUTING", f'{_c("kubernetes service portals")} -j KUBE-SERVICES'),
        ("nat", "OUTPUT", f'{_c("kubernetes service portals")} -j KUBE-SERVICES'),
        ("nat", "POSTROUTING", f'{_c("kubernetes postrouting rules")} -j KUBE-POSTROUTING'),
        ("filter", "INPUT", f'{_c("kubernetes ipvs access filter")} -j KUBE-IPVS-FILTER'),
        ("filter", "INPUT", f'{_c("kube-proxy firewall rules")} -j KUBE-PROXY-FIREWALL'),
        ("filter", "INPUT", f'{_c("kubernetes health check rules")} -j KUBE-NODE-PORT'),
        ("filter", "FORWARD", f'{_c("kube-proxy firewall rules")} -j KUBE-PROXY-FIREWALL'),
        ("filter", "FORWARD", f'{_c("kubernetes forwarding rules")} -j KUBE-FORWARD'),
    ]
    return Chains({"nat": nat, "filter": filt}, jumps)


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
    ch = Changes()
    for key, want in desired.items():
        have = current.get(key)
        if have is None:
            ch.add.append(want)
            continue
        if (have.scheduler, have.timeout) != (want.scheduler, want.timeout):
            ch.set.append(want)
        ch.add_dests += [(want, d) for d in want.dests if d not in have.dests]
        ch.remove_dests += [(want, d) for d in have.dests if d not in want.dests]
    ch.remove = [have for key, have in current.items() if key not in desired]
    return ch
