"""What kube-proxy decides for one service port on one node, whatever the
backend writes: which endpoints are reachable from here, through which
policy, and what happens when there are none. Pure; both renderers use it.

    internal traffic (the ClusterIP) uses the local endpoints when
    internalTrafficPolicy is Local, else all of them;
    external traffic (NodePort, LoadBalancer IP, externalIPs) likewise with
    externalTrafficPolicy; pod and node traffic to an external destination
    is short-circuited to the cluster endpoints. With loadBalancerSourceRanges,
    only those sources reach the LoadBalancer IP (others are dropped).
    No endpoints at all: reject. Endpoints, but none local for a Local
    policy: drop.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from labctl.proxy.endpoints import Endpoint, ServicePortInfo


@dataclass(frozen=True)
class PortPolicy:
    endpoints: tuple[Endpoint, ...]  # the ready endpoints cluster-wide traffic uses from here (topology hints applied)
    local: tuple[Endpoint, ...]  # those on this node
    externals: tuple[tuple[str, str], ...]  # ("external IP" | "loadbalancer IP", address)
    node_port: int | None
    internal_local: bool
    external_local: bool
    source_ranges: tuple[str, ...] = ()  # loadBalancerSourceRanges (only on LoadBalancer services)

    @property
    def load_balancer_ips(self) -> list[str]:
        return [ip for what, ip in self.externals if what == "loadbalancer IP"]

    @property
    def firewalled(self) -> bool:
        """Traffic to the LoadBalancer IP is filtered by source (KUBE-FW- / firewall- chains)."""
        return bool(self.source_ranges and self.load_balancer_ips)

    def covers(self, ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        return any(a.version == n.version and a in n for n in map(ipaddress.ip_network, self.source_ranges))

    def allowed_sources(self, node_ip: str | None) -> list[str]:
        """Who may reach the LoadBalancer IP: the ranges, plus the IP itself when the
        node is in a range (a node's own traffic to an IP it holds comes from it)."""
        own = self.load_balancer_ips if node_ip is not None and self.covers(node_ip) else []
        return list(self.source_ranges) + own

    @property
    def has_endpoints(self) -> bool:
        return bool(self.endpoints)

    @property
    def externally(self) -> bool:
        """Reached from outside: a NodePort, a LoadBalancer IP or external IPs."""
        return bool(self.externals or self.node_port)

    @property
    def has_internal(self) -> bool:
        return self.has_endpoints and (not self.internal_local or bool(self.local))

    @property
    def has_external(self) -> bool:
        return self.has_endpoints and (not self.external_local or bool(self.local))

    @property
    def uses_cluster(self) -> bool:
        """The all-endpoints chain is used (by internal traffic, or external short-circuits)."""
        return not self.internal_local or self.externally

    @property
    def uses_local(self) -> bool:
        return (self.internal_local or (self.externally and self.external_local)) and bool(self.local)

    @property
    def refusal(self) -> str:
        """What happens to traffic that finds no endpoint: reject (none at all) or drop (none local)."""
        return "reject" if not self.has_endpoints else "drop"

    def reached(self) -> list[Endpoint]:
        """The endpoints this node's rules can send to (each needs its endpoint chain)."""
        out: dict[str, Endpoint] = {}
        if self.uses_cluster:
            out.update((e.addr, e) for e in self.endpoints)
        if self.uses_local:
            out.update((e.addr, e) for e in self.local)
        return list(out.values())


def decide(info: ServicePortInfo, node: str) -> PortPolicy:
    s, p = info.service, info.port
    externals = [("external IP", ip) for ip in s.external_ips]
    if s.type == "LoadBalancer" and s.load_balancer_ip:
        externals.append(("loadbalancer IP", s.load_balancer_ip))
    return PortPolicy(
        endpoints=info.cluster(node),
        local=info.local(node),
        externals=tuple(externals),
        node_port=p.node_port if s.wants_node_ports else None,
        internal_local=s.internal_traffic_policy == "Local",
        external_local=s.external_traffic_policy == "Local",
        source_ranges=s.load_balancer_source_ranges if s.type == "LoadBalancer" else (),
    )
