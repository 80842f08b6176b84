"""Service ports and their endpoints, from the topology alone. Pure.

An endpoint is a ready pod of the service's namespace whose labels match the
selector, at the container port the targetPort names (looked up per pod, with
the service port's protocol; a pod without that named port is not an
endpoint of it). Endpoints are listed in address order.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from labctl.model.objects import Pod, Service, ServicePort, Topology
from labctl.proxy import names


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    node: str | None
    pod: str | None  # ns/name; None for the kubernetes service's API server

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePortInfo:
    """One port of one service, as kube-proxy sees it."""

    service: Service
    port: ServicePort
    endpoints: tuple[Endpoint, ...]

    @property
    def spn(self) -> str:
        return names.port_name_string(self.service.namespace, self.service.name, self.port.name)

    @property
    def proto(self) -> str:
        return self.port.protocol.lower()

    def local(self, node: str) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.node == node)


def _target(pod: Pod, port: ServicePort) -> int | None:
    t = port.target()
    if isinstance(t, int):
        return t
    for cp in pod.ports():
        if cp.name == t and cp.protocol == port.protocol:
            return cp.port
    return None


def selects(service: Service, pod: Pod) -> bool:
    return bool(service.selector) and pod.namespace == service.namespace and all(pod.labels.get(k) == v for k, v in service.selector.items())


def endpoints(topo: Topology, service: Service, port: ServicePort) -> tuple[Endpoint, ...]:
    if service.static_endpoints:
        by_ip = {n.ip: n.name for n in topo.lab.nodes}
        out = []
        for addr in service.static_endpoints:
            ip, _, p = addr.rpartition(":")
            out.append(Endpoint(ip, int(p), by_ip.get(ip), None))
        return tuple(out)
    out = []
    for pod in topo.pods:
        if not selects(service, pod) or pod.ip is None or not (pod.ready or service.publish_not_ready):
            continue
        target = _target(pod, port)
        if target is not None:
            out.append(Endpoint(pod.ip, target, pod.node, pod.key))
    return tuple(sorted(out, key=lambda e: (ipaddress.IPv4Address(e.ip), e.port)))


def service_ports(topo: Topology, proxied_only: bool = True) -> list[ServicePortInfo]:
    return [
        ServicePortInfo(s, p, endpoints(topo, s, p))
        for s in topo.services
        if s.proxied or not proxied_only
        for p in s.ports
    ]
