"""EndpointSlice and Endpoints manifests a user writes, for Services without a
selector (the classic way to put an outside database behind a Service name).

kube-proxy reads EndpointSlices only, those labelled with
`kubernetes.io/service-name`; the EndpointSliceMirroring controller turns an
Endpoints object of a selector-less Service into such a slice (labelled
`endpointslice.kubernetes.io/managed-by: endpointslicemirroring-controller.k8s.io`).
Both end up here as slices in the discovery.k8s.io/v1 shape. An endpoint whose
`ready` is absent counts as ready, as kube-proxy reads it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from labctl.model.errors import Problem

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
MIRRORING = "endpointslicemirroring-controller.k8s.io"
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"
ZONE_LABEL = "topology.kubernetes.io/zone"
TOPOLOGY_MODE = "service.kubernetes.io/topology-mode"  # "Auto": the controller's zone shares
TOPOLOGY_AWARE_HINTS = "service.kubernetes.io/topology-aware-hints"  # its deprecated name
DISTRIBUTIONS = ("PreferClose", "PreferSameZone", "PreferSameNode")  # spec.trafficDistribution


def _ipv4(value: Any, family: str = "IPv4") -> str | None:
    """Why an address is not one of `family`, or None."""
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        return "not an IP address"
    got = "IPv6" if ip.version == 6 else "IPv4"
    return None if got == family else f"an {got} address in a slice of addressType {family}"


def check_slice(data: dict[str, Any], where: str) -> list[Problem]:
    """What the schema cannot say and labctl does not model."""
    out = []
    labels = (data.get("metadata") or {}).get("labels") or {}
    if not labels.get(SERVICE_NAME):
        out.append(Problem(where, f"metadata.labels.{SERVICE_NAME}", "missing: kube-proxy reads only slices that name their Service"))
    family = data.get("addressType")
    if family not in ("IPv4", "IPv6"):
        out.append(Problem(where, "addressType", f"{family!r}: labctl models IPv4 and IPv6 slices (FQDN slices are not modelled)"))
        return out
    for i, ep in enumerate(data.get("endpoints") or []):
        for j, a in enumerate(ep.get("addresses") or []):
            why = _ipv4(a, family)
            if why:
                out.append(Problem(where, f"endpoints[{i}].addresses[{j}]", f"{a!r}: {why}"))
    for i, p in enumerate(data.get("ports") or []):
        if p.get("port") is None:
            out.append(Problem(where, f"ports[{i}].port", "missing: an endpoint port needs a number here"))
    return out


def check_endpoints(data: dict[str, Any], where: str) -> list[Problem]:
    out = []
    for i, subset in enumerate(data.get("subsets") or []):
        for key in ("addresses", "notReadyAddresses"):
            for j, a in enumerate(subset.get(key) or []):
                why = "not an IP address" if _ipv4(a.get("ip")) == "not an IP address" else None
                if why:
                    out.append(Problem(where, f"subsets[{i}].{key}[{j}].ip", f"{a.get('ip')!r}: {why}"))
    return out


def _mirrored_name(name: str, n: int) -> str:
    digest = hashlib.sha256(f"mirror/{name}/{n}".encode()).hexdigest()
    return f"{name[:57]}-{digest[:5]}"


def _mirror(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The slices the mirroring controller writes for an Endpoints object (one per subset)."""
    meta = doc["metadata"]
    out = []
    for subset in doc.get("subsets") or []:
        by_family: dict[str, list] = {}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in subset.get(key) or []:
                ep: dict[str, Any] = {"addresses": [a["ip"]], "conditions": {"ready": ready}}
                if a.get("nodeName"):
                    ep["nodeName"] = a["nodeName"]
                if a.get("hostname"):
                    ep["hostname"] = a["hostname"]
                by_family.setdefault("IPv6" if ":" in str(a["ip"]) else "IPv4", []).append(ep)
        ports = [{"name": p.get("name") or "", "port": p["port"], "protocol": p.get("protocol") or "TCP"} for p in subset.get("ports") or []]
        for family, endpoints in sorted(by_family.items()) or [("IPv4", [])]:
            out.append(_mirrored(meta, len(out), family, endpoints, ports))
    return out


def _mirrored(meta: dict, n: int, family: str, endpoints: list, ports: list) -> dict[str, Any]:
    """One slice the mirroring controller writes (per subset and address family)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": _mirrored_name(meta["name"], n),
            "namespace": meta.get("namespace") or "default",
            "labels": {SERVICE_NAME: meta["name"], MANAGED_BY: MIRRORING},
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": ports or None,
    }


def _normal(doc: dict[str, Any]) -> dict[str, Any]:
    meta = doc["metadata"]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace") or "default", "labels": dict(meta.get("labels") or {})},
        "addressType": doc["addressType"],
        "endpoints": [dict(e) for e in doc.get("endpoints") or []],
        "ports": [{"name": p.get("name") or "", "port": p["port"], "protocol": p.get("protocol") or "TCP"} for p in doc.get("ports") or []] or None,
    }


def from_documents(documents, selectorless: set[str]) -> list[dict[str, Any]]:
    """The user's slices, and those mirrored from Endpoints of the Services in
    `selectorless` ("ns/name"), in the documents' order."""
    out = []
    for doc in documents:
        kind = doc.get("kind")
        if kind == "EndpointSlice":
            out.append(_normal(doc))
        elif kind == "Endpoints":
            meta = doc["metadata"]
            key = f"{meta.get('namespace') or 'default'}/{meta['name']}"
            if key in selectorless and (meta.get("labels") or {}).get(SKIP_MIRROR) != "true":
                out += _mirror(doc)
    return out


def ready(endpoint: dict[str, Any]) -> bool:
    """kube-proxy: a missing `ready` is ready."""
    return (endpoint.get("conditions") or {}).get("ready") is not False
