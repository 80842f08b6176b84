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

from labctl.model import family, ipam
from labctl.model import fields as v
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
        static_endpoints=(family.hostport(first, APISERVER_PORT),) if first else (),
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
    if s.cluster_ips and s.cluster_ip != s.cluster_ips[0]:
        bad("spec.clusterIPs[0]", f"{s.cluster_ips[0]} must be the same as spec.clusterIP {s.cluster_ip}")
    given = [ip for ip in (s.cluster_ips or ((s.cluster_ip,) if s.cluster_ip else ())) if ip != "None"]
    if "None" in s.cluster_ips and len(s.cluster_ips) > 1:
        bad("spec.clusterIPs", "a headless service has the one value None")
    for k, cip in enumerate(given if spec is not None else []):
        path = "spec.clusterIP" if k == 0 and not s.cluster_ips else f"spec.clusterIPs[{k}]"
        if not family.is_address(cip):
            bad(path, f"{cip!r} is not an IP address")
            continue
        fam = family.of(cip)
        if fam not in family.lab_families(spec):
            bad(path, f"{cip} is {family.name(fam)}, not a family of this lab (spec.ipFamilies of the Lab)")
            continue
        view = family.spec_view(spec, fam)
        ip = ipaddress.ip_address(cip)
        if ip not in ipaddress.ip_network(view.service_network):
            bad(path, f"{ip} is not inside serviceNetwork {view.service_network}")
        owner = reserved_ips(view).get(str(ip))
        if owner and owner != s.key:
            bad(path, f"{ip} is reserved for {owner}")
    if len(given) == 2 and family.of(given[0]) == family.of(given[1]):
        bad("spec.clusterIPs[1]", f"{given[1]} is of the same family as clusterIPs[0]: dual-stack clusterIPs are one per family")
    if len(given) > 2:
        bad("spec.clusterIPs", "at most two addresses, one per family")
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
        if not family.is_address(eip):
            bad(f"spec.externalIPs[{i}]", f"{eip!r} is not an IP address")
        elif spec is not None and family.of(eip) not in family.service_families(s, spec) and s.ip_families:
            bad(f"spec.externalIPs[{i}]", f"{eip} is {family.name(family.of(eip))}, not a family of the service ({', '.join(s.ip_families)})")
    if s.selector:
        problems += v.label_problems(s.selector, w, "spec.selector")
    problems += _check_families(s, spec, w)
    if s.type == "LoadBalancer" and spec is not None and not spec.load_balancer_pool and not any(spec.load_balancer_pools):
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


def _check_families(s: Service, spec: LabSpec | None, w: str) -> list[Problem]:
    """ipFamilyPolicy and ipFamilies as the API server checks them."""
    out: list[Problem] = []
    if s.type == "ExternalName":
        return out
    if s.ip_family_policy is not None and s.ip_family_policy not in family.POLICIES:
        out.append(Problem(w, "spec.ipFamilyPolicy", f"{s.ip_family_policy!r}: must be one of {', '.join(family.POLICIES)}"))
    for i, f in enumerate(s.ip_families):
        if f not in family.NAMES:
            out.append(Problem(w, f"spec.ipFamilies[{i}]", f"{f!r}: must be IPv4 or IPv6"))
        elif f in s.ip_families[:i]:
            out.append(Problem(w, f"spec.ipFamilies[{i}]", f"{f} is given twice"))
        elif spec is not None and family.NAMES[f] not in family.lab_families(spec):
            out.append(Problem(w, f"spec.ipFamilies[{i}]", f"{f} is not configured in this lab (spec.ipFamilies of the Lab is {list(spec.ip_families)})"))
    if len(s.ip_families) > 2:
        out.append(Problem(w, "spec.ipFamilies", "at most two families"))
    ips = [ip for ip in s.cluster_ips or ((s.cluster_ip,) if s.cluster_ip else ()) if ip != "None" and family.is_address(ip)]
    for i, ip in enumerate(ips[: len(s.ip_families)]):
        if s.ip_families[i] in family.NAMES and family.NAMES[s.ip_families[i]] != family.of(ip):
            out.append(Problem(w, f"spec.ipFamilies[{i}]", f"{s.ip_families[i]} does not match clusterIPs[{i}] {ip}"))
    wanted = max(len(s.ip_families), len(ips))
    if s.ip_family_policy == "SingleStack" and wanted > 1:
        out.append(Problem(w, "spec.ipFamilyPolicy", "SingleStack allows one family, and this service gives two (spec.ipFamilies or spec.clusterIPs)"))
    if spec is not None and not family.dual(spec) and (s.ip_family_policy == "RequireDualStack" or wanted > 1):
        field = "spec.ipFamilyPolicy" if s.ip_family_policy == "RequireDualStack" else "spec.ipFamilies"
        out.append(
            Problem(w, field, f"this lab is not dual-stack (spec.ipFamilies of the Lab is {list(spec.ip_families)}): use SingleStack or PreferDualStack")
        )
    return out


def resolve_families(s: Service, spec: LabSpec) -> Service:
    """The API server's defaulting of ipFamilyPolicy and ipFamilies (the service is valid)."""
    if s.type == "ExternalName":
        return replace(s, ip_family_policy=None, ip_families=(), cluster_ips=())
    lab = [family.name(f) for f in family.lab_families(spec)]
    ips = [ip for ip in s.cluster_ips or ((s.cluster_ip,) if s.cluster_ip else ()) if ip != "None"]
    fams = list(s.ip_families) or [family.name(family.of(ip)) for ip in ips]
    policy = s.ip_family_policy
    if policy is None and len(fams) > 1:
        policy = "RequireDualStack"  # inferred from two families, as the API server does
    if policy is None:
        # a headless service without a selector is dual-stack where the cluster is
        policy = "RequireDualStack" if s.headless and not s.selector and len(lab) > 1 else "SingleStack"
    if not fams:
        fams = [lab[0]]
    if policy != "SingleStack" and len(lab) > 1 and len(fams) == 1:
        fams.append(next(f for f in lab if f != fams[0]))
    return replace(s, ip_family_policy=policy, ip_families=tuple(fams))


# -- allocation ---------------------------------------------------------------------


def allocate(services: list[Service], spec: LabSpec, previous: Topology | None, where: Callable[[int], str]) -> tuple[list[Service], list[Problem]]:
    """ClusterIPs of every family a service has, then NodePorts (shared by the families),
    then LoadBalancer IPs of every family with a pool."""
    problems: list[Problem] = []
    fams = family.lab_families(spec)
    out = [resolve_families(s, spec) for s in services]
    prev_all = {s.key: s for s in previous.services} if previous else {}
    got: dict[str, dict[int, str]] = {}
    lbs: dict[str, dict[int, str]] = {}
    for fam in fams:
        sv = family.spec_view(spec, fam)
        before = family.view(previous, fam) if previous is not None and fam in family.lab_families(previous.lab) else None
        mine = [family.service_view(_given(s, fam), spec, fam) for s in out]
        mine = [m for m in mine if m is not None]
        done, found = _cluster_ips(mine, sv, before, where)
        problems += found
        for m in done:
            if m.cluster_ip and not m.headless:
                got.setdefault(m.key, {})[fam] = m.cluster_ip
        if sv.load_balancer_pool:
            prev = {s.key: s for s in before.services} if before else {}
            for m in _lb_ips(done, sv, prev, where, problems):
                if m.type == "LoadBalancer" and m.load_balancer_ip:
                    lbs.setdefault(m.key, {})[fam] = m.load_balancer_ip
    for i, s in enumerate(out):
        if s.type == "ExternalName" or s.headless:
            out[i] = replace(s, cluster_ips=("None",) if s.headless else ())
            continue
        order = family.service_families(s, spec)
        ips = tuple(got.get(s.key, {}).get(f) for f in order)
        ips = tuple(ip for ip in ips if ip)
        out[i] = replace(s, cluster_ip=ips[0] if ips else None, cluster_ips=ips)
        if s.type == "LoadBalancer":
            mine_lb = tuple(lbs.get(s.key, {})[f] for f in order if f in lbs.get(s.key, {}))
            out[i] = replace(out[i], load_balancer_ip=mine_lb[0] if mine_lb else None, load_balancer_ips=mine_lb)
    out = _node_ports(out, spec, prev_all, where, problems)
    return out, problems


def _given(s: Service, fam: int) -> Service:
    """The service with the ClusterIP and LoadBalancer IP it was given in family `fam`."""
    ip = family.cluster_ip(s, fam) if s.cluster_ip else None
    lb = s.load_balancer_ip if s.load_balancer_ip and family.of(s.load_balancer_ip) == fam else None
    return replace(s, cluster_ips=(ip,) if ip else (), cluster_ip=ip, load_balancer_ip=lb, load_balancer_ips=())


def _cluster_ips(services: list[Service], spec: LabSpec, previous: Topology | None, where: Callable[[int], str]) -> tuple[list[Service], list[Problem]]:
    """One family's ClusterIPs (the services and the lab as that family sees them)."""
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
        if old and old.cluster_ip and old.cluster_ip not in ("None",) and old.cluster_ip not in used and old.cluster_ip in pool:
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
