"""EndpointSlices as Kubernetes' EndpointSlice controller computes them. Pure.

For each Service with a selector: every selected pod that has an address
becomes an endpoint (ready or not: its conditions say which), at the port
numbers its containers give the Service's target ports. Pods whose ports
resolve the same go in the same slices, at most 100 endpoints to a slice; the
slices are labelled with the Service's name and the controller that manages
them, and named `<service>-<5 characters>` (the API server's generateName;
here the suffix is a hash, so a lab shows the same names every time).

An endpoint's conditions, as the controller sets them: `serving` is the pod's
readiness; `ready` is the same, or true whatever the pod when the Service
publishes not-ready addresses; `terminating` is false (pods here leave at
once). `zone` comes from the node's `topology.kubernetes.io/zone` label.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from labctl.model.objects import Pod, Service, Topology
from labctl.proxy.endpoints import PodIndex, target_port
from labctl.proxy.topology import Candidate, Hints, hints, mode

MAX_ENDPOINTS_PER_SLICE = 100  # the controller's --max-endpoints-per-slice default
MANAGED_BY = "endpointslice-controller.k8s.io"
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
HEADLESS = "service.kubernetes.io/headless"
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what generateName draws suffixes from


def slice_name(service: Service, n: int) -> str:
    """`<service>-<suffix>`: generateName's shape (base cut to 58 characters), a stable suffix."""
    digest = hashlib.sha256(f"{service.namespace}/{service.name}/{n}".encode()).digest()
    return f"{service.name[:57]}-" + "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:5])


def _ports(service: Service, pod: Pod) -> tuple[tuple[str, int, str], ...]:
    """(name, port, protocol) of each Service port the pod resolves."""
    out = []
    for p in service.ports:
        number = target_port(pod, p)
        if number is not None:
            out.append((p.name or "", number, p.protocol))
    return tuple(out)


def _endpoint(topo: Topology, service: Service, pod: Pod, hint: Hints | None = None) -> dict[str, Any]:
    assert pod.ip
    ep: dict[str, Any] = {
        "addresses": [pod.ip],
        "conditions": {"ready": (pod.ready and not pod.terminating) or service.publish_not_ready, "serving": pod.ready, "terminating": pod.terminating},
    }
    if pod.hostname and pod.subdomain == service.name:
        ep["hostname"] = pod.hostname
    ep["targetRef"] = {"kind": "Pod", "namespace": pod.namespace, "name": pod.name}
    if pod.node:
        ep["nodeName"] = pod.node
        zone = _zone(topo, pod.node)
        if zone:
            ep["zone"] = zone
    if hint is not None:
        ep["hints"] = {"forZones": [{"name": z} for z in hint.zones]} if hint.zones else {}
        if hint.nodes:
            ep["hints"]["forNodes"] = [{"name": n} for n in hint.nodes]
    return ep


def _api_server(service: Service) -> list[dict[str, Any]]:
    """The `kubernetes` Service's slice, as the API server's endpoint reconciler writes it:
    named as the Service, no controller label, addresses without a node."""
    from labctl.model.family import split_hostport

    pairs = [split_hostport(a) for a in service.static_endpoints]
    ips = sorted({ip for ip, _ in pairs}, key=ipaddress.ip_address)
    number = pairs[0][1]
    return [
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": service.name, "namespace": service.namespace, "labels": {SERVICE_NAME: service.name}},
            "addressType": _address_type(ips[0]) if ips else "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
            "ports": [{"name": p.name or "", "port": number, "protocol": p.protocol} for p in service.ports[:1]],
        }
    ]


def _zone(topo: Topology, node_name: str | None) -> str | None:
    """A node's zone label (None: no label, or no such node)."""
    return topo.zones.get(node_name or "") or None


def _candidates(topo: Topology, service: Service, pods: list[Pod]) -> list[Candidate]:
    return [Candidate(p.ip or "", (p.ready and not p.terminating) or service.publish_not_ready, _zone(topo, p.node), p.node) for p in pods if p.ip]


def hints_of(topo: Topology, service: Service, pods: list[Pod]) -> tuple[dict[str, Hints], str]:
    """address -> hints for the Service's endpoints, and why there are none when so."""
    how = mode(service.topology_mode, service.traffic_distribution)
    return hints(how, _candidates(topo, service, pods), topo.lab.nodes)


def service_hints(topo: Topology, service: Service, index: PodIndex | None = None) -> dict[str, Hints]:
    """address -> hints, what kube-proxy reads off the slices."""
    pods = [p for p in (index or PodIndex(topo.pods)).select(service) if p.ip]
    return hints_of(topo, service, pods)[0]


def _address_type(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


def for_service(topo: Topology, service: Service, index: PodIndex | None = None, start: int = 0) -> list[dict[str, Any]]:
    """The Service's EndpointSlices (none without a selector, or for an ExternalName) of
    the view's family (`start`: how many the Service has of the families before it)."""
    if service.static_endpoints:
        return _api_server(service)
    if not service.selector or service.type == "ExternalName":
        return []
    pods = [p for p in (index or PodIndex(topo.pods)).select(service) if p.ip]
    given, _ = hints_of(topo, service, pods)
    groups: dict[tuple, list[Pod]] = {}
    for pod in sorted(pods, key=lambda p: ipaddress.ip_address(p.ip)):
        groups.setdefault(_ports(service, pod), []).append(pod)
    if not groups:
        groups[()] = []  # the controller keeps a placeholder slice: no endpoints, ports unset
    labels = {SERVICE_NAME: service.name, MANAGED_BY_LABEL: MANAGED_BY}
    if service.headless:
        labels[HEADLESS] = ""
    out = []
    for ports, members in sorted(groups.items()):
        chunks = [members[i : i + MAX_ENDPOINTS_PER_SLICE] for i in range(0, len(members), MAX_ENDPOINTS_PER_SLICE)] or [[]]
        for chunk in chunks:
            out.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {"name": slice_name(service, start + len(out)), "namespace": service.namespace, "labels": dict(labels)},
                    "addressType": "IPv6" if ":" in topo.lab.pod_network else "IPv4",
                    "endpoints": [_endpoint(topo, service, p, given.get(p.ip or "")) for p in chunk],
                    "ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports] if ports else None,
                }
            )
    return out


def compute(topo: Topology) -> list[dict[str, Any]]:
    """Every EndpointSlice of the lab (the controller's, the user's, those mirrored from
    Endpoints), by namespace and Service name."""
    from labctl.model import family

    ours: list[dict[str, Any]] = []
    made: dict[str, int] = {}  # a dual-stack Service's slices of both families are numbered on
    for _, view in family.views(topo):
        index = PodIndex(view.pods)
        for svc in view.services:
            got = for_service(view, svc, index, made.get(svc.key, 0))
            made[svc.key] = made.get(svc.key, 0) + len(got)
            ours += got
    users = [x for _, view in family.views(topo) for x in view.user_slices]
    return sorted([*ours, *users], key=lambda s: (s["metadata"]["namespace"], s["metadata"]["labels"].get(SERVICE_NAME, ""), s["metadata"]["name"]))


def table_row(s: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """NAMESPACE, NAME, ADDRESSTYPE, PORTS, ENDPOINTS, as `kubectl get endpointslices -A` prints them."""
    ports = ",".join(str(p["port"]) for p in s["ports"] or []) or "<unset>"
    addresses = [a for e in s["endpoints"] for a in e["addresses"]]
    shown = ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "") if addresses else "<unset>"
    return s["metadata"]["namespace"], s["metadata"]["name"], s["addressType"], ports, shown
