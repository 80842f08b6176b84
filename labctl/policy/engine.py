"""Which connections NetworkPolicy allows, from Kubernetes semantics alone. Pure.

No kernel code: this is the reference `labctl verify` compares the kernel
against, so it is written from the specification, not from the enforcer.

    - A pod is isolated for a direction when a policy of its namespace selects
      it and lists that direction in its (defaulted) policyTypes.
    - An isolated pod allows what the union of the rules of those policies
      allows: a rule matches when one of its peers does (none: every peer) and
      one of its ports does (none: every port).
    - A pod-to-pod connection needs the source's egress and the destination's
      ingress. Traffic from the destination's own node, and a pod to itself,
      are always allowed. Replies of allowed connections are (stateful).
    - Selector peers match pods only; ipBlock matches any address, pods' too.
    - A named port is looked up on the destination pod; a name it does not
      serve, or a destination that is not a pod, matches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labctl.model.objects import Pod, Topology
from labctl.model.policy import NetworkPolicy, Peer, Port, Rule


@dataclass(frozen=True)
class Party:
    """One end of a connection: a pod, or an address outside the pod network (a node, an external)."""

    ip: str
    pod: Pod | None = None
    node: str | None = None  # for a node: its name

    @property
    def label(self) -> str:
        if self.pod:
            return self.pod.key
        return f"node/{self.node}" if self.node else self.ip


@dataclass
class Side:
    """One direction's verdict: egress of the source, or ingress of the destination."""

    direction: str  # "egress" | "ingress"
    isolated_by: list[str] = field(default_factory=list)  # policies that isolate the pod
    allowed_by: list[str] = field(default_factory=list)  # "ns/policy rule N" that allow
    note: str | None = None  # why policies do not apply (not a pod, own node, itself)

    @property
    def allowed(self) -> bool:
        return self.note is not None or not self.isolated_by or bool(self.allowed_by)

    def explain(self) -> str:
        if self.note:
            return self.note
        if not self.isolated_by:
            return "not isolated: no policy selects it for " + self.direction
        if self.allowed_by:
            return "allowed by " + ", ".join(self.allowed_by)
        return f"denied: isolated by {', '.join(self.isolated_by)}, and no rule allows it"


@dataclass
class Decision:
    src: Party
    dst: Party
    port: int | None
    protocol: str
    egress: Side
    ingress: Side

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed


class Engine:
    def __init__(self, topo: Topology):
        self.topo = topo
        self.ns_labels = topo.namespaces
        self.by_namespace: dict[str, list[NetworkPolicy]] = {}
        for p in topo.policies:
            self.by_namespace.setdefault(p.namespace, []).append(p)
        self.pod_by_ip = {p.ip: p for p in topo.pods if p.ip}
        self.pods_by_namespace: dict[str, list[Pod]] = {}
        for p in topo.pods:
            self.pods_by_namespace.setdefault(p.namespace, []).append(p)

    def peer_pods(self, peer: Peer, policy: NetworkPolicy) -> list[Pod]:
        """The pods a selector peer of `policy` matches (ipBlock peers match addresses, not pods)."""
        if peer.namespaces is None:
            spaces = [policy.namespace]
        else:
            spaces = [ns for ns in self.pods_by_namespace if peer.namespaces.matches(self.ns_labels.get(ns, {}))]
        return [p for ns in spaces for p in self.pods_by_namespace.get(ns, []) if peer.pods is None or peer.pods.matches(p.labels)]

    def party(self, ip: str) -> Party:
        pod = self.pod_by_ip.get(ip)
        if pod:
            return Party(ip, pod)
        for n in self.topo.lab.nodes:
            if n.ip == ip:
                return Party(ip, node=n.name)
        return Party(ip)

    # -- matching --------------------------------------------------------------

    def selecting(self, pod: Pod, direction: str) -> list[NetworkPolicy]:
        kind = "Ingress" if direction == "ingress" else "Egress"
        return [p for p in self.by_namespace.get(pod.namespace, []) if kind in p.types and p.pod_selector.matches(pod.labels)]

    def peer_matches(self, peer: Peer, policy: NetworkPolicy, other: Party) -> bool:
        if peer.ip_block is not None:
            return peer.ip_block.contains(other.ip)
        if other.pod is None:
            return False  # selectors match pods only
        return self.pod_matches(peer, policy, other.pod)

    def pod_matches(self, peer: Peer, policy: NetworkPolicy, pod: Pod) -> bool:
        """A selector peer against a pod (ipBlock peers are matched by address)."""
        if peer.ip_block is not None:
            return bool(pod.ip) and peer.ip_block.contains(pod.ip)
        if peer.namespaces is None:
            in_scope = pod.namespace == policy.namespace
        else:
            in_scope = peer.namespaces.matches(self.ns_labels.get(pod.namespace, {}))
        return in_scope and (peer.pods is None or peer.pods.matches(pod.labels))

    @staticmethod
    def port_matches(spec: Port, dst: Party, port: int | None, protocol: str) -> bool:
        if spec.protocol != protocol:
            return False
        if spec.port is None:
            return True
        if port is None:
            return False
        if isinstance(spec.port, str):
            if dst.pod is None:
                return False
            return any(cp.name == spec.port and cp.protocol == protocol and cp.port == port for cp in dst.pod.ports())
        return spec.port <= port <= (spec.end_port or spec.port)

    def rule_matches(self, rule: Rule, policy: NetworkPolicy, other: Party, dst: Party, port: int | None, protocol: str) -> bool:
        peers_ok = not rule.peers or any(self.peer_matches(p, policy, other) for p in rule.peers)
        ports_ok = not rule.ports or any(self.port_matches(p, dst, port, protocol) for p in rule.ports)
        return peers_ok and ports_ok

    def _side(self, pod: Pod, direction: str, other: Party, dst: Party, port: int | None, protocol: str) -> Side:
        side = Side(direction)
        for pol in self.selecting(pod, direction):
            side.isolated_by.append(pol.key)
            rules = pol.ingress if direction == "ingress" else pol.egress
            for i, rule in enumerate(rules):
                if self.rule_matches(rule, pol, other, dst, port, protocol):
                    side.allowed_by.append(f"{pol.key} {direction} rule {i}")
        return side

    # -- the question ------------------------------------------------------------

    def check(self, src: Party, dst: Party, port: int | None, protocol: str = "TCP") -> Decision:
        protocol = protocol.upper()
        if src.pod is not None and dst.pod is not None and src.pod.key == dst.pod.key:
            same = "a pod reaching itself is never blocked"
            return Decision(src, dst, port, protocol, Side("egress", note=same), Side("ingress", note=same))
        if src.pod is None:
            egress = Side("egress", note=f"{src.label} is not a pod: no egress policy applies")
        else:
            egress = self._side(src.pod, "egress", dst, dst, port, protocol)
        if dst.pod is None:
            ingress = Side("ingress", note=f"{dst.label} is not a pod: no ingress policy applies")
        elif src.node is not None and src.node == dst.pod.node:
            ingress = Side("ingress", note=f"traffic from the pod's own node ({src.node}) is always allowed")
        else:
            ingress = self._side(dst.pod, "ingress", src, dst, port, protocol)
        return Decision(src, dst, port, protocol, egress, ingress)

    def pods(self, src: Pod, dst: Pod, port: int | None, protocol: str = "TCP") -> Decision:
        return self.check(Party(src.ip, src), Party(dst.ip, dst), port, protocol)
