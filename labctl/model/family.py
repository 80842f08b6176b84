"""IP families: what a dual-stack or IPv6 lab adds to the model. Pure.

A lab has one or two families (spec.ipFamilies, the first is the primary, as a
cluster's first service CIDR is). Every object keeps its primary family's
address in its singular field (Pod.ip, Node.ip, Service.cluster_ip, ...), as
Kubernetes keeps podIP beside podIPs, and one address per family in the plural
field.

Each layer of the datapath (plumbing, kube-proxy's rules, policy, DNS, probes)
is written for one family and run once per family on a *view*: the topology as
a single-stack lab of that family would hold it, the singular fields set to
that family's values and the objects without an address in it left out (a
SingleStack IPv4 Service is not in the IPv6 view). The view of a single-stack
lab is the lab itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any, Iterable

from labctl.model.objects import LabSpec, Pod, Service, Topology

NAMES = {"IPv4": 4, "IPv6": 6}
DEFAULTS = {
    4: {"node": "10.10.20.0/24", "pod": "10.244.0.0/16", "service": "10.96.0.0/16", "mask": 24},
    6: {"node": "fd00:10:20::/64", "pod": "fd00:10:244::/56", "service": "fd00:10:96::/112", "mask": 64},
}
POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")


def name(fam: int) -> str:
    return "IPv6" if fam == 6 else "IPv4"


def of(text: str) -> int:
    """The family of an address, a CIDR, a range first-last or "ip:port" / "[ip]:port"
    (4 for anything without a colon in its address part)."""
    s = str(text).strip()
    if s.startswith("["):
        return 6
    host = s.split("/", 1)[0].split("-", 1)[0]
    return 6 if host.count(":") >= 2 else 4


def is_address(text: str, fam: int | None = None) -> bool:
    try:
        ip = ipaddress.ip_address(str(text))
    except ValueError:
        return False
    return fam is None or ip.version == fam


def lab_families(spec: LabSpec) -> tuple[int, ...]:
    return tuple(NAMES[f] for f in spec.ip_families) or (4,)


def dual(spec: LabSpec) -> bool:
    return len(lab_families(spec)) > 1


def _at(values: tuple, i: int, singular: Any = None) -> Any:
    if i < len(values):
        return values[i]
    return singular if i == 0 else None


def hostport(ip: str, port: int | str) -> str:
    """ "ip:port", with brackets around an IPv6 address (Go's net.JoinHostPort)."""
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


def split_hostport(text: str) -> tuple[str, int]:
    s = str(text)
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
        return host, int(port)
    host, _, port = s.rpartition(":")
    return host, int(port)


def addresses(obj: Any) -> tuple[str, ...]:
    """Every address of a pod, node or external, its families' order."""
    ips = tuple(a for a in getattr(obj, "ips", ()) or () if a)
    return ips or ((obj.ip,) if obj.ip else ())


def address_keys(obj: Any) -> dict[str, Any]:
    """The contract's address keys of a node, external or pod: `ip` and `ips`, and a
    node's `podCIDR` and `podCIDRs` (status and validate show them alike)."""
    out: dict[str, Any] = {"ip": obj.ip, "ips": list(addresses(obj))}
    if hasattr(obj, "pod_cidrs"):
        out.update(podCIDR=obj.pod_cidr, podCIDRs=[c for c in obj.pod_cidrs or (obj.pod_cidr,) if c])
    return out


def address(obj: Any, fam: int) -> str | None:
    """The pod's, node's or external's address of one family, or None."""
    return next((a for a in addresses(obj) if of(a) == fam), None)


def service_families(svc: Service, spec: LabSpec) -> tuple[int, ...]:
    if svc.ip_families:
        return tuple(NAMES[f] for f in svc.ip_families if f in NAMES)
    return lab_families(spec)[:1]


def cluster_ip(svc: Service, fam: int) -> str | None:
    """The Service's ClusterIP of one family ("None" for headless), or None."""
    if svc.headless:
        return "None"
    ips = svc.cluster_ips or ((svc.cluster_ip,) if svc.cluster_ip else ())
    return next((ip for ip in ips if of(ip) == fam), None)


def cluster_ips(svc: Service) -> list[str]:
    return list(svc.cluster_ips or ((svc.cluster_ip,) if svc.cluster_ip else ()))


def load_balancer_ips(svc: Service) -> list[str]:
    return list(svc.load_balancer_ips or ((svc.load_balancer_ip,) if svc.load_balancer_ip else ()))


def only(values: Iterable[str], fam: int) -> tuple[str, ...]:
    return tuple(v for v in values if of(v) == fam)


# -- views ----------------------------------------------------------------------------


def spec_view(spec: LabSpec, fam: int) -> LabSpec:
    """The Lab as a single-stack lab of family `fam` would be."""
    fams = lab_families(spec)
    if fams == (fam,):
        return spec
    i = fams.index(fam)

    def host(h):
        return _host_at(h, i)

    def net(values: tuple, singular: str, kind: str) -> str:
        return _at(values, i, singular) or DEFAULTS[fam][kind]

    pools = spec.load_balancer_pools or ((spec.load_balancer_pool,) if spec.load_balancer_pool else ())
    return replace(
        spec,
        ip_families=(name(fam),),
        node_network=net(spec.node_networks, spec.node_network, "node"),
        pod_network=net(spec.pod_networks, spec.pod_network, "pod"),
        service_network=net(spec.service_networks, spec.service_network, "service"),
        node_networks=(),
        pod_networks=(),
        service_networks=(),
        load_balancer_pool=_at(pools, i),
        load_balancer_pools=(),
        node_cidr_mask=spec.node_cidr_mask6 if fam == 6 else spec.node_cidr_mask4,
        nodes=tuple(host(n) for n in spec.nodes),
        externals=tuple(host(e) for e in spec.externals),
    )


def _host_at(h, i: int):
    ip = _at(h.ips, i, h.ip)
    extra = {"pod_cidr": _at(h.pod_cidrs, i, h.pod_cidr), "pod_cidrs": (_at(h.pod_cidrs, i, h.pod_cidr),)} if hasattr(h, "pod_cidrs") else {}
    return replace(h, ip=ip, ips=(ip,), **extra)


def host_view(spec: LabSpec, host, fam: int):
    """A node or external (of this lab or one that left it) as the `fam` view has it."""
    fams = lab_families(spec)
    return host if fams == (fam,) else _host_at(host, fams.index(fam))


def pod_view(pod: Pod, i: int) -> Pod:
    ip = _at(pod.ips, i, pod.ip)
    return replace(pod, ip=ip, ips=(ip,) if ip else ())


def service_view(svc: Service, spec: LabSpec, fam: int) -> Service | None:
    """The Service as the `fam` family's kube-proxy sees it; None when it has no address there."""
    if svc.type == "ExternalName":
        return svc
    if fam not in service_families(svc, spec):
        return None
    ip = cluster_ip(svc, fam)
    lbs = only(load_balancer_ips(svc), fam)
    return replace(
        svc,
        cluster_ip=ip,
        cluster_ips=(ip,) if ip else (),
        ip_families=(name(fam),),
        external_ips=only(svc.external_ips, fam),
        load_balancer_ip=lbs[0] if lbs else None,
        load_balancer_ips=lbs[:1],
        load_balancer_source_ranges=only(svc.load_balancer_source_ranges, fam),
        static_endpoints=only(svc.static_endpoints, fam),
    )


_VIEWS: dict[tuple[int, int], tuple[Topology, Topology]] = {}


def view(topo: Topology, fam: int) -> Topology:
    """The topology as the `fam` family's datapath sees it (see the module's text)."""
    fams = lab_families(topo.lab)
    if fams == (fam,):
        return topo
    if fam not in fams:
        raise ValueError(f"lab {topo.lab.name} has no {name(fam)} family")
    key = (id(topo), fam)
    hit = _VIEWS.get(key)
    if hit is not None and hit[0] is topo:
        return hit[1]
    from labctl.model.policy import family_view

    i = fams.index(fam)
    spec = spec_view(topo.lab, fam)
    services = tuple(v for v in (service_view(s, topo.lab, fam) for s in topo.services) if v is not None)
    suffix = f"@{name(fam)}"
    out = replace(
        topo,
        lab=spec,
        pods=tuple(pod_view(p, i) for p in topo.pods),
        services=services,
        policies=tuple(family_view(p, fam) for p in topo.policies),
        ipam={k[: -len(suffix)] if i else k: v for k, v in topo.ipam.items() if (k.endswith(suffix) if i else "@" not in k)},
    )
    if len(_VIEWS) > 64:
        _VIEWS.clear()
    _VIEWS[key] = (topo, out)
    return out


def views(topo: Topology) -> list[tuple[int, Topology]]:
    """(family, view) for each family of the lab, primary first."""
    return [(f, view(topo, f)) for f in lab_families(topo.lab)]
