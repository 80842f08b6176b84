"""Service ports and their endpoints, from the topology alone. Pure.

An endpoint is a ready pod of the service's namespace whose labels match the
selector, at the container port the targetPort names (looked up per pod, with
the service port's protocol; a pod without that named port is not an
endpoint of it). Endpoints are listed in kube-proxy's order (its
EndpointSliceCache sorts them by "ip:port" as text), so the statistic rules and
the numgen maps list them as a real node does.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from labctl.model.objects import Pod, Service, ServicePort, Topology
from labctl.proxy import names


class Endpoint(NamedTuple):
    ip: str
    port: int
    node: str | None
    pod: str | None  # ns/name; None for the kubernetes service's API server
    zones: tuple[str, ...] = ()  # topology hints (forZones) its EndpointSlice carries
    hint_nodes: tuple[str, ...] = ()  # forNodes (PreferSameNode)

    @property
    def addr(self) -> str:
        """ "ip:port" ("[ip]:port" for IPv6), as kube-proxy names endpoints (net.JoinHostPort)."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePortInfo:
    """One port of one service, as kube-proxy sees it."""

    service: Service
    port: ServicePort
    endpoints: tuple[Endpoint, ...]
    node_zones: dict[str, str] = field(default_factory=dict, hash=False, compare=False)  # node -> its zone label
    terminating: tuple[Endpoint, ...] = ()  # serving but terminating (a pod deleted with a grace period)

    def cluster(self, node: str) -> tuple[Endpoint, ...]:
        """The endpoints cluster-wide traffic may use from `node`: topology hints applied
        as kube-proxy applies them (all of them when hints do not apply); with no ready
        endpoint anywhere, the serving terminating ones (kube-proxy's fallback)."""
        from labctl.proxy.topology import usable

        if not self.endpoints:
            return self.terminating
        return usable(self.endpoints, node, self.node_zones.get(node, ""))

    @cached_property
    def spn(self) -> str:
        return names.port_name_string(self.service.namespace, self.service.name, self.port.name)

    @cached_property
    def proto(self) -> str:
        return self.port.protocol.lower()

    def local(self, node: str) -> tuple[Endpoint, ...]:
        """The ready endpoints on `node`, else its serving terminating ones."""
        return tuple(e for e in self.endpoints if e.node == node) or tuple(e for e in self.terminating if e.node == node)

    @cached_property
    def key(self) -> str:
        return f"{self.spn}/{self.proto}"

    def fingerprint(self, node: str) -> str:
        """Everything this port's rules on `node` depend on, as a short digest."""
        s, p = self.service, self.port
        facts = (
            s.namespace,
            s.name,
            s.type,
            s.cluster_ip,
            s.external_ips,
            s.load_balancer_ip,
            s.external_traffic_policy,
            s.internal_traffic_policy,
            s.session_affinity,
            s.affinity_timeout,
            s.allocate_lb_node_ports,
            s.load_balancer_source_ranges,
            s.health_check_node_port,
            s.traffic_distribution,
            s.topology_mode,
            p.port,
            p.protocol,
            p.name,
            p.node_port,
            p is s.ports[0],
            node,
        )
        eps = ",".join([f"{e.ip}:{e.port}@{e.node}{e.zones}{e.hint_nodes}" if e.zones or e.hint_nodes else f"{e.ip}:{e.port}@{e.node}" for e in self.endpoints])
        if self.terminating:
            eps += "|terminating:" + ",".join(f"{e.ip}:{e.port}@{e.node}" for e in self.terminating)
        return hashlib.sha1(f"{facts!r}{eps}".encode()).hexdigest()[:16]


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


class PodIndex:
    """Pods by namespace and label, so selecting endpoints for many services is cheap."""

    def __init__(self, pods):
        self.by_label: dict[tuple[str, str, str], list[Pod]] = {}
        for pod in pods:
            for k, v in pod.labels.items():
                self.by_label.setdefault((pod.namespace, k, v), []).append(pod)

    def select(self, service: Service) -> list[Pod]:
        if not service.selector:
            return []
        groups = [self.by_label.get((service.namespace, k, v), []) for k, v in service.selector.items()]
        smallest = min(groups, key=len)
        return [p for p in smallest if selects(service, p)]


def ready_pods(topo: Topology, service: Service, index: PodIndex | None = None) -> list[Pod]:
    """The pods behind a service whatever its ports (a headless service's DNS
    addresses): selected, with an address, ready or published when not ready."""
    pods = (index or PodIndex(topo.pods)).select(service)
    return sorted((p for p in pods if p.ip and _ready(service, p)), key=lambda p: ipaddress.ip_address(p.ip))


def target_port(pod: Pod, port: ServicePort) -> int | None:
    """The pod's port a service port's targetPort names (None: the pod lacks it)."""
    return _target(pod, port)


def from_slices(topo: Topology, service: Service, port: ServicePort) -> list[Endpoint]:
    """Endpoints of the user's EndpointSlices naming this Service (and those mirrored
    from its Endpoints): kube-proxy takes a slice port of the same name and protocol,
    and the endpoints that are ready; nodeName makes one local to that node."""
    from labctl.model.slices import SERVICE_NAME, ready

    out = []
    for s in topo.user_slices:
        meta = s["metadata"]
        if meta["namespace"] != service.namespace or meta["labels"].get(SERVICE_NAME) != service.name:
            continue
        for p in s["ports"] or []:
            if (p["name"] or None) != port.name or p["protocol"] != port.protocol:
                continue
            for e in s["endpoints"]:
                if ready(e):
                    h = e.get("hints") or {}
                    zones = tuple(z["name"] for z in h.get("forZones") or [])
                    nodes = tuple(n["name"] for n in h.get("forNodes") or [])
                    out += [Endpoint(a, p["port"], e.get("nodeName"), None, zones, nodes) for a in e.get("addresses") or []]
    return out


def _ready(service: Service, pod: Pod) -> bool:
    """The EndpointSlice's `ready`: the pod's readiness, never while terminating, unless
    the Service publishes not-ready addresses."""
    return (pod.ready and not pod.terminating) or service.publish_not_ready


def terminating_endpoints(topo: Topology, service: Service, port: ServicePort, index: PodIndex | None = None) -> tuple[Endpoint, ...]:
    """Serving and terminating: kube-proxy's fallback when no ready endpoint is left."""
    out = []
    for pod in (index or PodIndex(topo.pods)).select(service):
        if pod.ip and pod.terminating and pod.ready and not _ready(service, pod):
            target = _target(pod, port)
            if target is not None:
                out.append(Endpoint(pod.ip, target, pod.node, pod.key))
    return tuple(sorted(out, key=lambda e: e.addr))


def endpoints(topo: Topology, service: Service, port: ServicePort, index: PodIndex | None = None) -> tuple[Endpoint, ...]:
    if service.static_endpoints:
        # the API server's endpoints carry no nodeName (its reconciler writes none): local to no node
        from labctl.model.family import split_hostport

        return tuple(Endpoint(ip, p, None, None) for ip, p in map(split_hostport, service.static_endpoints))
    out = from_slices(topo, service, port) if topo.user_slices else []
    for pod in (index or PodIndex(topo.pods)).select(service):
        if pod.ip is None or not _ready(service, pod):
            continue
        target = _target(pod, port)
        if target is not None:
            out.append(Endpoint(pod.ip, target, pod.node, pod.key))
    if service.traffic_distribution or service.topology_mode:
        from labctl.proxy.endpointslices import service_hints

        given = service_hints(topo, service, index)
        out = [e._replace(zones=given[e.ip].zones, hint_nodes=given[e.ip].nodes) if e.ip in given else e for e in out]
    return tuple(sorted(set(out), key=lambda e: e.addr))  # deduplicated across slices; kube-proxy's order: "ip:port" as text (10.0.0.10 before 10.0.0.9)


def service_ports(topo: Topology, proxied_only: bool = True, only: set[str] | None = None) -> list[ServicePortInfo]:
    """Every port of every (proxied) service with its endpoints; `only`: of those services alone."""
    index = PodIndex(topo.pods)
    terminating = any(p.terminating for p in topo.pods)
    return [
        ServicePortInfo(s, p, endpoints(topo, s, p, index), topo.zones, terminating_endpoints(topo, s, p, index) if terminating else ())
        for s in topo.services
        if (s.proxied or not proxied_only) and (only is None or s.key in only)
        for p in s.ports
    ]


def affected_services(old: Topology | None, new: Topology) -> set[str] | None:
    """Keys of the services whose ports' rules may differ between two topologies:
    those whose own spec differs, and those selecting (before or after) a pod that
    differs. None when that cannot be told (no old topology, or the Lab changed):
    every service then. What kube-proxy's change tracker does with API events."""
    if old is None or old.lab != new.lab:
        return None
    was = {s.key: s for s in old.services}
    now = {s.key: s for s in new.services}
    out = {k for k in was.keys() | now.keys() if was.get(k) != now.get(k)}
    if old.user_slices != new.user_slices:  # a user's EndpointSlice (or Endpoints) changed: its Service's rules
        from labctl.model.slices import SERVICE_NAME

        out |= {f"{s['metadata']['namespace']}/{s['metadata']['labels'].get(SERVICE_NAME)}" for s in (*old.user_slices, *new.user_slices)}
    pods_was = {p.key: p for p in old.pods}
    pods_now = {p.key: p for p in new.pods}
    moved = [p for k in pods_was.keys() | pods_now.keys() if pods_was.get(k) != pods_now.get(k) for p in (pods_was.get(k), pods_now.get(k)) if p is not None]
    if moved:
        by_ns: dict[str, list[Service]] = {}
        for s in (*was.values(), *now.values()):
            by_ns.setdefault(s.namespace, []).append(s)
        out |= {s.key for p in moved for s in by_ns.get(p.namespace, ()) if selects(s, p)}
    return out
