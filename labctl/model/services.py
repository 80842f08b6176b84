"""Services: what the API server would check, and the addresses it would
allocate (ClusterIPs, NodePorts, LoadBalancer IPs). Pure.

Allocation is stable against the running lab: a service keeps its ClusterIP,
its NodePorts and its LoadBalancer IP across `up` and `apply`. ClusterIPs go
in order from .11 (.1 is the kubernetes service, .10 is kube-dns), NodePorts
in order from the start of nodePortRange, LoadBalancer IPs in order from the
pool, each skipping what is taken.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Callable

from labctl.model import fields as v
from labctl.model import ipam
from labctl.model.errors import Problem
from labctl.model.objects import LabSpec, Service, ServicePort, Topology

TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
KUBERNETES = "default/kubernetes"
KUBE_DNS = "kube-system/kube-dns"
APISERVER_PORT = 6443


def kubernetes_service(spec: LabSpec) -> Service:
    """The service every cluster has: default/kubernetes at .1, https -> the first node's :6443."""
    net = ipaddress.ip_network(spec.service_network)
    first = spec.nodes[0].ip if spec.nodes and spec.nodes[0].ip else None
    return Service(
        namespace="default",
        name="kubernetes",
        cluster_ip=str(net.network_address + 1),
        ports=(ServicePort(port=443, protocol="TCP", name="https", target_port=APISERVER_PORT),),
        static_endpoints=(f"{first}:{APISERVER_PORT}",) if first else (),
        doc=0,
    )


def reserved_ips(spec: LabSpec) -> dict[str, str]:
    net = ipaddress.ip_network(spec.service_network)
    return {str(net.network_address + 1): KUBERNETES, str(net.network_address + 10): KUBE_DNS}


def node_port_range(spec: LabSpec) -> tuple[int, int]:
    lo, _, hi = spec.node_port_range.partition("-")
    return int(lo), int(hi)


# -- validation -------------------------------------------------------------------------


def check(services: list[Service], spec: LabSpec | None, namespaces: dict, where: Callable[[int], str]) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, Service] = {}
    for s in services:
        w = where(s.doc)
        if v.dns1035_label(s.name):
            problems.append(Problem(w, "metadata.name", v.dns1035_label(s.name)))
        if s.key in seen:
            problems.append(Problem(w, "metadata.name", f"service {s.key} is already defined by {where(seen[s.key].doc)}"))
        seen[s.key] = s
        if s.key == KUBERNETES:
            problems.append(Problem(w, "metadata.name", "default/kubernetes is the lab's own service (the API server's, at the .1 address)"))
        if s.namespace not in namespaces:
            problems.append(Problem(w, "metadata.namespace", f"namespace {s.namespace!r} is not defined: add a Namespace document for it"))
        problems += _check_spec(s, spec, w)
    return problems


def _check_spec(s: Service, spec: LabSpec | None, w: str) -> list[Problem]:
    problems: list[Problem] = []

    def bad(path: str, msg: str) -> None:
        problems.append(Problem(w, path, msg))

    if s.type not in TYPES:
        bad("spec.type", f"must be one of {', '.join(TYPES)}, not {s.type!r}")
        return problems
    if s.type == "ExternalName":
        if not s.external_name:
            bad("spec.externalName", "is required for type ExternalName")
        elif v.dns1123_subdomain(s.external_name.rstrip(".")):
            bad("spec.externalName", v.dns1123_subdomain(s.external_name.rstrip(".")))
        if s.cluster_ip not in (None, "None"):
            bad("spec.clusterIP", "must be empty for type ExternalName")
    elif not s.ports and not s.headless:
        bad("spec.ports", "a service needs at least one port")
    if s.headless and s.type in ("NodePort", "LoadBalancer"):
        bad("spec.clusterIP", f"may not be None for type {s.type}")
    if s.cluster_ip not in (None, "None") and spec is not None:
        try:
            ip = ipaddress.IPv4Address(s.cluster_ip)
        except ValueError:
            bad("spec.clusterIP", f"{s.cluster_ip!r} is not an IPv4 address")
        else:
            if ip not in ipaddress.ip_network(spec.service_network):
                bad("spec.clusterIP", f"{ip} is not inside serviceNetwork {spec.service_network}")
            owner = reserved_ips(spec).get(str(ip))
            if owner and owner != s.key:
                bad("spec.clusterIP", f"{ip} is reserved for {owner}")
    names: set[str] = set()
    numbers: dict[tuple[int, str], int] = {}
    for i, p in enumerate(s.ports):
        path = f"spec.ports[{i}]"
        if not 1 <= p.port <= 65535:
            bad(f"{path}.port", f"{p.port} is out of range 1-65535")
        if p.protocol not in v.PROTOCOLS:
            bad(f"{path}.protocol", f"must be one of TCP, UDP, SCTP, not {p.protocol!r}")
        if p.name is None and len(s.ports) > 1:
            bad(f"{path}.name", "is required when a service has more than one port")
        if p.name is not None:
            why = v.dns1123_label(p.name)  # a Service port's name is a DNS label (a container port's an IANA service name)
            if why:
                bad(f"{path}.name", why)
            elif p.name in names:
                bad(f"{path}.name", f"duplicate port name {p.name!r}")
            names.add(p.name)
        if (p.port, p.protocol) in numbers:
            bad(f"{path}.port", f"{p.port}/{p.protocol} is already spec.ports[{numbers[(p.port, p.protocol)]}]")
        numbers[(p.port, p.protocol)] = i
        t = p.target_port
        if isinstance(t, int) and not 1 <= t <= 65535:
            bad(f"{path}.targetPort", f"{t} is out of range 1-65535")
        if isinstance(t, str) and v.port_name(t):
            bad(f"{path}.targetPort", v.port_name(t))
        if p.node_port is not None:
            if not s.wants_node_ports:
                bad(f"{path}.nodePort", f"only NodePort and LoadBalancer services have node ports (this one is {s.type})")
            elif spec is not None:
                lo, hi = node_port_range(spec)
                if not lo <= p.node_port <= hi:
                    bad(f"{path}.nodePort", f"{p.node_port} is outside nodePortRange {spec.node_port_range}")
    if s.external_traffic_policy not in ("Cluster", "Local"):
        bad("spec.externalTrafficPolicy", f"must be Cluster or Local, not {s.external_traffic_policy!r}")
    elif s.external_traffic_policy == "Local" and s.type not in ("NodePort", "LoadBalancer") and not s.external_ips:
        bad("spec.externalTrafficPolicy", "Local only applies to NodePort and LoadBalancer services (or with externalIPs)")
    if s.internal_traffic_policy not in ("Cluster", "Local"):
        bad("spec.internalTrafficPolicy", f"must be Cluster or Local, not {s.internal_traffic_policy!r}")
    if s.session_affinity not in ("None", "ClientIP"):
        bad("spec.sessionAffinity", f"must be None or ClientIP, not {s.session_affinity!r}")
    if not 1 <= s.affinity_timeout <= 86400:
        bad("spec.sessionAffinityConfig.clientIP.timeoutSeconds", f"{s.affinity_timeout} is out of range 1-86400")
    for i, eip in enumerate(s.external_ips):
        try:
            ipaddress.IPv4Address(eip)
        except ValueError:
            bad(f"spec.externalIPs[{i}]", f"{eip!r} is not an IPv4 address")
    if s.selector:
        problems += v.label_problems(s.selector, w, "spec.selector")
    if s.type == "LoadBalancer" and spec is not None and not spec.load_balancer_pool:
        bad("spec.type", "LoadBalancer services need spec.loadBalancerPool in the Lab document (first-last on the node network)")
    if s.health_check_node_port is not None:
        if not s.needs_health_check:
            bad("spec.healthCheckNodePort", "may only be set when type is LoadBalancer and externalTrafficPolicy is Local")
        elif spec is not None:
            lo, hi = node_port_range(spec)
            if not lo <= s.health_check_node_port <= hi:
                bad("spec.healthCheckNodePort", f"{s.health_check_node_port} is outside nodePortRange {spec.node_port_range}")
    if s.load_balancer_ip and s.type != "LoadBalancer":
        bad("spec.loadBalancerIP", "only applies to type LoadBalancer")
    if s.load_balancer_source_ranges:
        if s.type != "LoadBalancer":
            bad("spec.loadBalancerSourceRanges", "only applies to type LoadBalancer")
        for i, cidr in enumerate(s.load_balancer_source_ranges):
            v.parse_cidr(cidr, w, f"spec.loadBalancerSourceRanges[{i}]", problems)
    return problems


# -- allocation ---------------------------------------------------------------------


def allocate(services: list[Service], spec: LabSpec, previous: Topology | None, where: Callable[[int], str]) -> tuple[list[Service], list[Problem]]:
    problems: list[Problem] = []
    prev = {s.key: s for s in previous.services} if previous else {}
    net = ipaddress.ip_network(spec.service_network)
    reserved = reserved_ips(spec)

    # ClusterIPs: given ones first, then the ones services already had, then new ones.
    used: dict[str, str] = {reserved_ip: owner for reserved_ip, owner in reserved.items()}
    out = []
    for s in services:
        if s.type == "ExternalName" or s.headless:
            out.append(s)
            continue
        if s.cluster_ip:
            if used.get(s.cluster_ip) not in (None, s.key):
                problems.append(Problem(where(s.doc), "spec.clusterIP", f"{s.cluster_ip} is already the ClusterIP of {used[s.cluster_ip]}"))
            used[s.cluster_ip] = s.key
        out.append(s)
    pool = ipam.AddressPool(net.network_address + 2, net.broadcast_address - 1, used, cursor=str(net.network_address + 10))
    for i, s in enumerate(out):
        if s.type == "ExternalName" or s.headless or s.cluster_ip:
            continue
        old = prev.get(s.key)
        if old and old.cluster_ip and old.cluster_ip not in ("None",) and old.cluster_ip not in used and ipaddress.IPv4Address(old.cluster_ip) in net:
            out[i] = replace(s, cluster_ip=old.cluster_ip)
            used[old.cluster_ip] = s.key
            pool.reserve(old.cluster_ip)
    owned = {owner: ip for ip, owner in reserved.items()}
    for i, s in enumerate(out):
        if s.type == "ExternalName" or s.headless or out[i].cluster_ip:
            continue
        if s.key in owned:  # a kube-dns of your own (dns: false) gets the DNS address, as on a cluster
            out[i] = replace(s, cluster_ip=owned[s.key])
            continue
        try:
            out[i] = replace(s, cluster_ip=str(pool.allocate()))
        except ipam.PoolExhausted:
            problems.append(Problem(where(s.doc), "spec.clusterIP", f"serviceNetwork {net} has no address left"))
    out = _node_ports(out, spec, prev, where, problems)
    out = _lb_ips(out, spec, prev, where, problems)
    return out, problems


def _node_ports(services: list[Service], spec: LabSpec, prev: dict[str, Service], where, problems) -> list[Service]:
    """Node ports and health check node ports (TCP, from the same range, as the API
    server allocates them): given ones first, then the ones services already had, then
    new ones in order."""
    lo, hi = node_port_range(spec)
    taken: dict[tuple[int, str], str] = {}
    chosen: dict[tuple[str, int], int | None] = {}  # (service, port index; -1: the health check port) -> node port
    HC = -1

    def wanted(s: Service) -> list[tuple[int, str, int | None, str]]:
        """(index, protocol, given port, field) of what the service needs."""
        out = [(i, p.protocol, p.node_port, f"spec.ports[{i}].nodePort") for i, p in enumerate(s.ports)] if s.wants_node_ports else []
        if s.needs_health_check:
            out.append((HC, "TCP", s.health_check_node_port, "spec.healthCheckNodePort"))
        return out

    def previous(s: Service) -> dict[int, int | None]:
        if s.key not in prev:
            return {}
        old = prev[s.key]
        ports = {(op.name, op.port, op.protocol): op.node_port for op in old.ports}
        out = {i: ports.get((p.name, p.port, p.protocol)) for i, p in enumerate(s.ports)}
        out[HC] = old.health_check_node_port
        return out

    needing = [(s, wanted(s)) for s in services]
    for s, want in needing:
        for i, proto, given, path in want:
            if given:
                key = (given, proto)
                if key in taken and taken[key] != s.key:
                    problems.append(Problem(where(s.doc), path, f"nodePort {given}/{proto} is already used by {taken[key]}"))
                taken[key] = s.key
                chosen[(s.key, i)] = given
    for s, want in needing:
        old = previous(s)
        for i, proto, _, _ in want:
            kept = old.get(i)
            if (s.key, i) not in chosen and kept and (kept, proto) not in taken and lo <= kept <= hi:
                taken[(kept, proto)] = s.key
                chosen[(s.key, i)] = kept
    for s, want in needing:
        for i, proto, _, path in want:
            if (s.key, i) in chosen:
                continue
            np = next((n for n in range(lo, hi + 1) if (n, proto) not in taken), None)
            if np is None:
                problems.append(Problem(where(s.doc), path.rsplit(".", 1)[0] if i != HC else path, f"nodePortRange {spec.node_port_range} has no port left"))
            else:
                taken[(np, proto)] = s.key
            chosen[(s.key, i)] = np
    out = []
    for s in services:
        if s.wants_node_ports:
            s = replace(s, ports=tuple(replace(p, node_port=chosen[(s.key, i)]) for i, p in enumerate(s.ports)))
        if s.needs_health_check:
            s = replace(s, health_check_node_port=chosen[(s.key, HC)])
        out.append(s)
    return out


def _lb_ips(services: list[Service], spec: LabSpec, prev: dict[str, Service], where, problems) -> list[Service]:
    lbs = [s for s in services if s.type == "LoadBalancer"]
    if not lbs or not spec.load_balancer_pool:
        return services
    first, last = v.lb_pool_range(spec.load_balancer_pool)
    pool = ipam.AddressPool(first, last)
    owner: dict[str, str] = {}
    for s in lbs:
        if s.load_balancer_ip:
            if s.load_balancer_ip not in pool:
                problems.append(Problem(where(s.doc), "spec.loadBalancerIP", f"{s.load_balancer_ip} is not in loadBalancerPool {spec.load_balancer_pool}"))
            elif s.load_balancer_ip in owner:
                problems.append(Problem(where(s.doc), "spec.loadBalancerIP", f"{s.load_balancer_ip} is already used by {owner[s.load_balancer_ip]}"))
            owner[s.load_balancer_ip] = s.key
            pool.reserve(s.load_balancer_ip)
    chosen: dict[str, str] = {}
    for s in lbs:
        old = prev.get(s.key)
        if not s.load_balancer_ip and old and old.load_balancer_ip and old.load_balancer_ip in pool and old.load_balancer_ip not in owner:
            chosen[s.key] = old.load_balancer_ip
            owner[old.load_balancer_ip] = s.key
            pool.reserve(old.load_balancer_ip)
    for s in lbs:
        if not s.load_balancer_ip and s.key not in chosen:
            try:
                chosen[s.key] = str(pool.allocate())
            except ipam.PoolExhausted:
                problems.append(Problem(where(s.doc), "spec.type", f"loadBalancerPool {spec.load_balancer_pool} has no address left"))
    return [replace(s, load_balancer_ip=chosen[s.key]) if s.key in chosen else s for s in services]
