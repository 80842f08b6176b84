"""NetworkPolicy enforcement in a node, rendered as iptables chains and ipsets. Pure.

Layout (filter table, in the style of kube-router and Calico's iptables mode):

    FORWARD, INPUT -> LABCTL-NETPOL            (first: before kube-proxy's and flannel's accepts)
      replies of allowed connections            RETURN (stateful)
      source in LABCTL-ISO-EGRESS               -> LABCTL-NETPOL-EGRESS
      destination in LABCTL-ISO-INGRESS         -> LABCTL-NETPOL-INGRESS
    LABCTL-NETPOL-EGRESS / -INGRESS
      source (destination) in a policy's target set -> that policy's chain NP-<hash>
      not marked 0x10000                        REJECT --reject-with icmp-admin-prohibited
      clear the mark
    NP-<hash> (one per policy and direction)
      one rule per (peer, port) of each policy rule: match -> MARK 0x10000

Every selector is an ipset, so a new pod, a label change or a namespace
relabel changes set members and never a chain: pods isolated here, each
policy's targets here, each selector peer's pods (hash:ip), each ipBlock
(hash:net, its excepts as `nomatch`), and each named port resolved on the
destination pods (hash:ip,port). Chains are the same on every node; sets of
targets hold this node's pods (each connection is checked once: egress at the
source's node, ingress at the destination's, after service DNAT).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass, field

from labctl.model.objects import Pod, Topology
from labctl.model.policy import NetworkPolicy, Peer, Port
from labctl.plan.diff import keyed, members
from labctl.plan.ipset import hash_nets
from labctl.policy.engine import Engine

MARK = "0x10000"
MAIN = "LABCTL-NETPOL"
CHAIN = {"egress": "LABCTL-NETPOL-EGRESS", "ingress": "LABCTL-NETPOL-INGRESS"}
ISOLATED = {"egress": "LABCTL-ISO-EGRESS", "ingress": "LABCTL-ISO-INGRESS"}
_JUMP = f'-m comment --comment "labctl network policies" -j {MAIN}'
JUMPS = [("FORWARD", _JUMP), ("INPUT", _JUMP)]


def ipvs_jumps(pod_network: str) -> list[tuple[str, str]]:
    """Where the policy chain is entered in IPVS mode (labctl.proxy.ipvs). A pod's
    connection to a service is not forwarded there: it enters INPUT addressed to
    the service IP (skipped: not yet translated) and leaves through OUTPUT once
    IPVS has chosen the endpoint, where it is checked like forwarded traffic."""
    return [
        ("FORWARD", _JUMP),
        ("INPUT", f"-m set ! --match-set {'KUBE-6-IPVS-IPS' if ':' in pod_network else 'KUBE-IPVS-IPS'} dst {_JUMP}"),
        ("OUTPUT", f"-s {pod_network} -m ipvs --ipvs {_JUMP}"),
    ]


REJECT = "REJECT --reject-with icmp-admin-prohibited"
REJECT6 = "REJECT --reject-with icmp6-adm-prohibited"
NDP = (133, 134, 135, 136)  # router solicitation and advertisement, neighbour solicitation and advertisement


@functools.lru_cache(maxsize=65536)
def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def _h(*parts: object) -> str:
    return _hash("/".join(map(str, parts)))


def policy_chain(p: NetworkPolicy, direction: str) -> str:
    return f"NP-{_h(p.key, direction)}"


@dataclass
class IPSet:
    type: str  # hash:ip | hash:net | hash:ip,port
    members: set[str] = field(default_factory=set)
    comment: str = ""
    family: str = "inet"  # inet6: the IPv6 family's sets (named NP6-..., LABCTL-ISO6-...)


@dataclass
class PolicyRules:
    """A node's policy chains (filter table) and ipsets."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    sets: dict[str, IPSet] = field(default_factory=dict)

    def add(self, chain: str, rule: str) -> None:
        self.chains.setdefault(chain, []).append(f"-A {chain} {rule}")

    digest_cache: str | None = None

    def digest(self) -> str:
        """A digest of the chains (shared by every node of one render: computed once)."""
        if self.digest_cache is None:
            self.digest_cache = hashlib.sha1(repr(sorted(self.chains.items())).encode()).hexdigest()[:16]
        return self.digest_cache


def _c(text: str) -> str:
    return f'-m comment --comment "{text}"'


# Sets are named after what they select, not after the policy that uses them:
# policies with the same selector share one set (the type is part of the name,
# so a peer that turns from a selector into an ipBlock gets a new set, and the
# old one goes once no chain refers to it).


def _peer_set(rules: PolicyRules, engine: Engine, p: NetworkPolicy, peer: Peer) -> str:
    if peer.ip_block is not None:
        b = peer.ip_block
        name = f"NP-{_h('ipblock', b.cidr, *sorted(b.excepts))}"
        if name not in rules.sets:
            members = set(hash_nets(b.cidr)) | {f"{e} nomatch" for e in b.excepts}
            rules.sets[name] = IPSet("hash:net", members, f"ipBlock {b.cidr}" + (f" except {','.join(b.excepts)}" if b.excepts else ""))
        return name
    scope = p.namespace if peer.namespaces is None else f"namespaces {peer.namespaces}"
    name = f"NP-{_h('pods', scope, peer.pods)}"
    if name not in rules.sets:
        members = {pod.ip for pod in engine.peer_pods(peer, p) if pod.ip}
        rules.sets[name] = IPSet("hash:ip", members, f"pods {peer.pods or '{}'} in {scope}")
    return name


def _named_port_set(rules: PolicyRules, name: str, pods: list[Pod], port: Port, what: str) -> str:
    if name not in rules.sets:
        members = {
            f"{pod.ip},{port.protocol.lower()}:{cp.port}"
            for pod in pods
            if pod.ip
            for cp in pod.ports()
            if cp.name == port.port and cp.protocol == port.protocol
        }
        rules.sets[name] = IPSet("hash:ip,port", members, what)
    return name


def _ingress_port_set_name(p: NetworkPolicy, port: Port) -> str:
    """Ingress named ports resolve on the policy's own pods: one set per (selection, name)."""
    return f"NP-{_h('ingress-port', p.namespace, p.pod_selector, port.port, port.protocol)}"


def _target_set(p: NetworkPolicy) -> str:
    return f"NP-{_h('targets', p.namespace, p.pod_selector)}"


def _port_match(rules: PolicyRules, p: NetworkPolicy, direction: str, port: Port, all_pods: list[Pod]) -> str:
    proto = port.protocol.lower()
    if port.port is None:
        return f"-p {proto}"
    if isinstance(port.port, str):
        if direction == "ingress":  # filled per node, from the node's own target pods
            name = _ingress_port_set_name(p, port)
        else:  # looked up on the destination: any pod of the cluster serving that name
            name = _named_port_set(rules, f"NP-{_h('egress-port', port.port, port.protocol)}", all_pods, port, f"pods serving {port.port}/{port.protocol}")
        return f"-p {proto} -m set --match-set {name} dst,dst"
    span = f"{port.port}:{port.end_port}" if port.end_port else f"{port.port}"
    return f"-p {proto} -m {proto} --dport {span}"


def _cluster_wide(topo: Topology, engine: Engine) -> PolicyRules:
    """What is the same on every node: the chains, and the sets of peers
    (selectors, ipBlocks) and of egress named ports, which hold pods cluster-wide."""
    shared = PolicyRules()
    shared.add(MAIN, f"-m conntrack --ctstate RELATED,ESTABLISHED {_c('replies of allowed connections')} -j RETURN")
    shared.add(MAIN, f"-m set --match-set {ISOLATED['egress']} src {_c('pods isolated for egress')} -j {CHAIN['egress']}")
    shared.add(MAIN, f"-m set --match-set {ISOLATED['ingress']} dst {_c('pods isolated for ingress')} -j {CHAIN['ingress']}")
    for direction, flag, peer_flag in (("egress", "src", "dst"), ("ingress", "dst", "src")):
        chain = CHAIN[direction]
        shared.chains.setdefault(chain, [])
        for p in sorted(topo.policies, key=lambda x: x.key):
            if direction.capitalize() not in p.types:
                continue
            pchain = policy_chain(p, direction)
            shared.add(chain, f"-m set --match-set {_target_set(p)} {flag} {_c(p.key)} -j {pchain}")
            shared.chains.setdefault(pchain, [])
            for ri, rule in enumerate(p.ingress if direction == "ingress" else p.egress):
                peers = [f"-m set --match-set {_peer_set(shared, engine, p, peer)} {peer_flag} " for peer in rule.peers] or [""]
                ports = [_port_match(shared, p, direction, port, topo.pods) + " " for port in rule.ports]
                for peer in peers:
                    for port in ports or [""]:
                        shared.add(pchain, f"{peer}{port}{_c(f'{p.key} {direction} rule {ri}')} -j MARK --set-xmark {MARK}/{MARK}")
        shared.add(chain, f"-m mark ! --mark {MARK}/{MARK} {_c(f'{direction} allowed by no policy')} -j {REJECT}")
        shared.add(chain, f"-j MARK --set-xmark 0x0/{MARK}")
    return shared


@dataclass
class _Selection:
    """One target set: the pods (cluster-wide) a policy selector picks, and what
    the node sets built from it need."""

    name: str
    what: str
    pods: list[Pod]
    isolates: set[str] = field(default_factory=set)  # directions
    named_ports: dict[str, Port] = field(default_factory=dict)  # ingress named-port set -> port


def _selections(topo: Topology, engine: Engine) -> list[_Selection]:
    """Each distinct (namespace, podSelector) of the policies, matched once for all nodes."""
    out: dict[str, _Selection] = {}
    for p in topo.policies:
        tset = _target_set(p)
        sel = out.get(tset)
        if sel is None:
            pods = [pod for pod in engine.pods_by_namespace.get(p.namespace, []) if pod.ip and p.pod_selector.matches(pod.labels)]
            sel = out[tset] = _Selection(tset, f"pods of this node: {p.pod_selector} in {p.namespace}", pods)
        sel.isolates.update(d.lower() for d in p.types)
        if "Ingress" in p.types:
            for rule in p.ingress:
                for port in rule.ports:
                    if isinstance(port.port, str):
                        sel.named_ports[_ingress_port_set_name(p, port)] = port
    return list(out.values())


def _for_node(shared: PolicyRules, selections: list[_Selection], node: str) -> PolicyRules:
    """The node's own sets: its pods isolated, each policy's targets among them, and
    ingress named ports resolved on them; the rest is shared."""
    rules = PolicyRules(chains=shared.chains, sets=dict(shared.sets))
    rules.digest_cache = shared.digest()
    for direction in ("egress", "ingress"):
        rules.sets[ISOLATED[direction]] = IPSet("hash:ip", set(), f"pods of this node isolated for {direction}")
    for sel in selections:
        local = [pod for pod in sel.pods if pod.node == node]
        members = {pod.ip for pod in local}
        rules.sets[sel.name] = IPSet("hash:ip", members, sel.what)
        for direction in sel.isolates:
            rules.sets[ISOLATED[direction]].members |= members
        for name, port in sel.named_ports.items():
            _named_port_set(rules, name, local, port, f"pods of this node serving {port.port}/{port.protocol}")
    return rules


def render_all(topo: Topology, nodes: list[str] | None = None) -> dict[str, PolicyRules]:
    """Every node's policy rules, computing what they share once. On the IPv6 family's
    view of a lab: ip6tables' rules, and sets of family inet6 under their own names (a
    node's sets of both families share one name space)."""
    topo = _own_family(topo)
    engine = Engine(topo)
    shared = _cluster_wide(topo, engine)
    selections = _selections(topo, engine)
    out = {n: _for_node(shared, selections, n) for n in (nodes or [x.name for x in topo.lab.nodes])}
    if ":" in topo.lab.pod_network:
        renames: dict[str, str] = {}
        chains = _six_chains(shared, renames, out)
        digest = PolicyRules(chains=chains).digest()
        out = {n: _six(r, renames, chains, digest) for n, r in out.items()}
    return out


def _own_family(topo: Topology) -> Topology:
    """The policies with the ipBlocks of the lab's (view's) family alone: one of the other
    family matches nothing here (an IPv4 lab given an IPv6 ipBlock, or the reverse)."""
    from dataclasses import replace

    from labctl.model.policy import family_view

    fam = 6 if ":" in topo.lab.pod_network else 4
    foreign = any(
        peer.ip_block is not None and (":" in peer.ip_block.cidr) != (fam == 6) for p in topo.policies for r in (*p.ingress, *p.egress) for peer in r.peers
    )
    return replace(topo, policies=tuple(family_view(p, fam) for p in topo.policies)) if foreign else topo


def set_name6(name: str) -> str:
    """The IPv6 family's set of what `name` selects in IPv4."""
    return name.replace("NP-", "NP6-", 1) if name.startswith("NP-") else name.replace("LABCTL-ISO-", "LABCTL-ISO6-", 1)


def _six_chains(shared: PolicyRules, renames: dict[str, str], nodes: dict[str, PolicyRules]) -> dict[str, list[str]]:
    for r in nodes.values():
        renames.update({n: set_name6(n) for n in r.sets})
    pattern = re.compile(r"--match-set (\S+) ")
    out = {}
    for chain, lines in shared.chains.items():
        out[chain] = [pattern.sub(lambda m: f"--match-set {renames.get(m.group(1), m.group(1))} ", line).replace(REJECT, REJECT6) for line in lines]
    # Neighbour discovery is how IPv6 finds a next hop (ARP is no IP, and no rule sees it):
    # it passes whatever the policies say, as Calico and Cilium let it, or an isolated pod
    # could not even resolve its neighbours' addresses.
    out[MAIN][1:1] = [f"-A {MAIN} -p ipv6-icmp -m icmp6 --icmpv6-type {t} {_c('neighbour discovery')} -j RETURN" for t in NDP]
    return out


def _six(rules: PolicyRules, renames: dict[str, str], chains: dict[str, list[str]], digest: str) -> PolicyRules:
    sets = {renames[n]: IPSet(s.type, {_v6_member(m) for m in s.members}, s.comment, "inet6") for n, s in rules.sets.items()}
    out = PolicyRules(chains=chains, sets=sets)
    out.digest_cache = digest
    return out


def _v6_member(m: str) -> str:
    """hash_nets' halves of 0.0.0.0/0 are ::/1 and 8000::/1 in IPv6."""
    return {"0.0.0.0/1": "::/1", "128.0.0.0/1": "8000::/1"}.get(m, m)


def render(topo: Topology, node: str) -> PolicyRules:
    return render_all(topo, [node])[node]


# -- transactions ---------------------------------------------------------------------


def _set_line(name: str, s: IPSet) -> str:
    return f"create {name} {s.type} family {s.family} comment -exist"


def ipset_update(desired: dict[str, IPSet], old: dict[str, list] | None) -> tuple[str, list[str]]:
    """`ipset restore` input creating and filling sets (old None: from scratch), and the sets to destroy afterwards."""
    out = []
    recorded = old or {}
    sets = keyed({n: v[1] for n, v in recorded.items()}, {n: sorted(s.members) for n, s in desired.items()})
    for name in sets.added:  # (a set's name includes its type: the type never changes under one name)
        s = desired[name]
        out += [_set_line(name, s), f"flush {name}"]
        out += [f'add {name} {m} comment "{s.comment}"' if " nomatch" not in m else f"add {name} {m}" for m in sorted(s.members)]
    for name in sets.changed:
        s = desired[name]
        added, removed = members(sorted(recorded[name][1]), sorted(s.members))
        out += [f"del {name} {m.split(' ')[0]} -exist" for m in removed]
        out += [f'add {name} {m} comment "{s.comment}" -exist' if " nomatch" not in m else f"add {name} {m} -exist" for m in added]
    return ("\n".join(out) + "\n" if out else ""), list(sets.removed)


def chains_text(rules: PolicyRules, install_jumps: bool, entry: list[tuple[str, str]] = JUMPS) -> str:
    """`iptables-restore --noflush` input rewriting every policy chain (they are few)."""
    out = ["*filter"]
    out += [f":{c} - [0:0]" for c in rules.chains]
    if install_jumps:
        out += [f"-I {chain} 1 {rule}" for chain, rule in reversed(entry)]
    for lines in rules.chains.values():
        out += lines
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def remove_chains_text(chains: list[str]) -> str:
    out = ["*filter"] + [f":{c} - [0:0]" for c in chains] + [f"-X {c}" for c in chains] + ["COMMIT"]
    return "\n".join(out) + "\n"
