"""Kubernetes manifests -> model objects.

Each accepted kind registers how it is read. The manifests have passed the
Kubernetes schema already; what is checked here is what the schema cannot say
and what has a network meaning labctl does not model yet (refused rather than
silently ignored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from labctl.model import gateway, ingress, policy
from labctl.model.documents import Document
from labctl.model.errors import Problem
from labctl.model.fields import dns1123_subdomain, label_problems
from labctl.model.objects import Container, ContainerPort, Deployment, Pod, Service, ServicePort


@dataclass
class Objects:
    """What the manifests of a file amount to, before defaults are resolved."""

    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    namespace_docs: dict[str, Document] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    policies: list = field(default_factory=list)  # labctl.model.policy.NetworkPolicy
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str
    namespaced: bool
    read: Callable[[Document, Objects], None]
    also: tuple[str, ...] = ()  # other apiVersions served (v1beta1 of the Gateway API)
    kubernetes_schema: bool = True  # False: a CRD, checked by its own module

    def serves(self, api_version: Any) -> bool:
        return api_version == self.api_version or api_version in self.also


KINDS: dict[str, Kind] = {}


def register(kind: str, api_version: str, namespaced: bool = True, also: tuple[str, ...] = (), kubernetes_schema: bool = True):
    def deco(fn):
        KINDS[kind] = Kind(kind, api_version, namespaced, fn, also, kubernetes_schema)
        return fn

    return deco


def accepted_kinds() -> str:
    return ", ".join(f"{k.kind} ({k.api_version})" for k in KINDS.values())


# -- Namespace ---------------------------------------------------------------


@register("Namespace", "v1", namespaced=False)
def _read_namespace(doc: Document, out: Objects) -> None:
    meta = doc.data["metadata"]
    name = meta["name"]
    labels = dict(meta.get("labels") or {})
    # As the API server does: every namespace carries its own name as a label.
    labels["kubernetes.io/metadata.name"] = name
    if name in out.namespaces:
        first = out.namespace_docs[name]
        out.problems.append(Problem(doc.where(), "metadata.name", f"namespace {name!r} is already defined by document {first.index}"))
        return
    out.namespaces[name] = labels
    out.namespace_docs[name] = doc


# -- Pod and Deployment ------------------------------------------------------

MAX_REPLICAS = 10_000  # a lab's /16 pod network holds 65,534 pods; kube-apiserver allows 2^31-1

_UNSUPPORTED_POD_FIELDS = {
    "hostNetwork": "pods in the node's network namespace",
}


def _container(c: dict[str, Any], where: str, path: str, problems: list[Problem]) -> Container:
    ports = []
    for i, p in enumerate(c.get("ports") or []):
        if p.get("hostPort"):
            problems.append(Problem(where, f"{path}.ports[{i}].hostPort", "hostPort is not supported by labctl yet"))
        ports.append(ContainerPort(port=p["containerPort"], protocol=p.get("protocol") or "TCP", name=p.get("name")))
    command = None
    if c.get("command"):
        command = tuple(c["command"]) + tuple(c.get("args") or ())
    return Container(name=c["name"], ports=tuple(ports), command=command)


def pod_from_spec(
    namespace: str,
    name: str,
    labels: dict[str, str],
    spec: dict[str, Any],
    doc: Document,
    spec_path: str,
    problems: list[Problem],
    owner: str | None = None,
    ready: bool = True,
) -> Pod:
    for fld, meaning in _UNSUPPORTED_POD_FIELDS.items():
        if spec.get(fld):
            problems.append(Problem(doc.where(), f"{spec_path}.{fld}", f"{meaning} ({fld}) are not supported by labctl yet"))
    containers = tuple(_container(c, doc.where(), f"{spec_path}.containers[{i}]", problems) for i, c in enumerate(spec.get("containers") or []))
    return Pod(
        namespace=namespace,
        name=name,
        labels=dict(labels),
        containers=containers,
        node=spec.get("nodeName"),
        owner=owner,
        hostname=spec.get("hostname"),
        subdomain=spec.get("subdomain"),
        dns_policy=spec.get("dnsPolicy") or "ClusterFirst",
        dns_config=dict(spec.get("dnsConfig") or {}),
        service_links=spec.get("enableServiceLinks", True) is not False,
        ready=ready,
        grace=_grace(spec.get("terminationGracePeriodSeconds")),
        doc=doc.index,
    )


def _grace(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def _ready(status: dict[str, Any] | None) -> bool:
    """A pod is ready unless its status says the Ready condition is False."""
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") != "False"
    return True


@register("Pod", "v1")
def _read_pod(doc: Document, out: Objects) -> None:
    meta = doc.data["metadata"]
    out.pods.append(
        pod_from_spec(
            meta.get("namespace") or "default",
            meta["name"],
            meta.get("labels") or {},
            doc.data.get("spec") or {},
            doc,
            "spec",
            out.problems,
            ready=_ready(doc.data.get("status")),
        )
    )


def _selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@register("Deployment", "apps/v1")
def _read_deployment(doc: Document, out: Objects) -> None:
    meta = doc.data["metadata"]
    spec = doc.data.get("spec") or {}
    namespace = meta.get("namespace") or "default"
    name = meta["name"]
    replicas = spec.get("replicas", 1)
    if replicas is None:
        replicas = 1
    template = spec.get("template") or {}
    tmeta = template.get("metadata") or {}
    labels = tmeta.get("labels") or {}
    selector = spec.get("selector") or {}
    if dns1123_subdomain(str(name)):
        out.problems.append(Problem(doc.where(), "metadata.name", dns1123_subdomain(str(name)) or ""))
    out.problems += policy.selector_problems(selector, doc.where(), "spec.selector")
    out.problems += label_problems(labels, doc.where(), "spec.template.metadata.labels")
    if not labels:
        out.problems.append(Problem(doc.where(), "spec.template.metadata.labels", "must not be empty: the selector has to match the pods"))
    elif not _selector_matches(selector, labels):
        out.problems.append(Problem(doc.where(), "spec.selector", "selector does not match template labels"))
    if not (selector.get("matchLabels") or selector.get("matchExpressions")):
        out.problems.append(Problem(doc.where(), "spec.selector", "must not be empty"))
    if replicas < 0:
        out.problems.append(Problem(doc.where(), "spec.replicas", f"must be 0 or more, not {replicas}"))
        replicas = 0
    elif replicas > MAX_REPLICAS:
        out.problems.append(Problem(doc.where(), "spec.replicas", f"{replicas} is more pods than a lab builds from one Deployment (at most {MAX_REPLICAS:,})"))
        replicas = 0
    out.deployments.append(Deployment(namespace=namespace, name=name, replicas=replicas, doc=doc.index))
    for i in range(replicas):
        out.pods.append(
            pod_from_spec(
                namespace,
                f"{name}-{i}",
                labels,
                template.get("spec") or {},
                doc,
                "spec.template.spec",
                out.problems,
                owner=f"Deployment/{name}",
            )
        )


# -- Service -------------------------------------------------------------------


def _topology_mode(annotations: dict[str, Any]) -> str | None:
    from labctl.model.slices import TOPOLOGY_AWARE_HINTS, TOPOLOGY_MODE

    value = annotations.get(TOPOLOGY_MODE, annotations.get(TOPOLOGY_AWARE_HINTS))
    return str(value) if value is not None else None


@register("Service", "v1")
def _read_service(doc: Document, out: Objects) -> None:
    from labctl.model.slices import DISTRIBUTIONS

    meta = doc.data["metadata"]
    spec = doc.data.get("spec") or {}
    given = spec.get("trafficDistribution")
    if given is not None and given not in DISTRIBUTIONS:
        out.problems.append(Problem(doc.where(), "spec.trafficDistribution", f"{given!r}: must be one of {', '.join(DISTRIBUTIONS)}"))
    affinity = spec.get("sessionAffinity") or "None"
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    ports = tuple(
        ServicePort(
            port=p["port"],
            protocol=p.get("protocol") or "TCP",
            name=p.get("name") or None,
            target_port=p.get("targetPort"),
            node_port=p.get("nodePort") or None,
        )
        for p in spec.get("ports") or []
    )
    cluster_ips = tuple(str(ip) for ip in spec.get("clusterIPs") or ())
    cluster_ip = spec.get("clusterIP") or (cluster_ips[0] if cluster_ips else None)
    out.services.append(
        Service(
            namespace=meta.get("namespace") or "default",
            name=meta["name"],
            type=spec.get("type") or "ClusterIP",
            cluster_ip=cluster_ip,
            selector=dict(spec["selector"]) if spec.get("selector") else None,
            ports=ports,
            external_ips=tuple(spec.get("externalIPs") or ()),
            load_balancer_ip=spec.get("loadBalancerIP") or None,
            external_traffic_policy=spec.get("externalTrafficPolicy") or "Cluster",
            internal_traffic_policy=spec.get("internalTrafficPolicy") or "Cluster",
            session_affinity=affinity,
            affinity_timeout=timeout if timeout is not None else 10800,
            external_name=spec.get("externalName"),
            publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
            allocate_lb_node_ports=spec.get("allocateLoadBalancerNodePorts", True) is not False,
            load_balancer_source_ranges=tuple(str(r).strip() for r in spec.get("loadBalancerSourceRanges") or ()),
            health_check_node_port=spec.get("healthCheckNodePort") or None,
            traffic_distribution=spec.get("trafficDistribution") or None,
            topology_mode=_topology_mode(meta.get("annotations") or {}),
            ip_family_policy=spec.get("ipFamilyPolicy") or None,
            ip_families=tuple(str(f) for f in spec.get("ipFamilies") or ()),
            cluster_ips=cluster_ips,
            doc=doc.index,
        )
    )


# -- EndpointSlice and Endpoints (for Services without a selector) ----------------------


@register("EndpointSlice", "discovery.k8s.io/v1")
def _read_endpoint_slice(doc: Document, out: Objects) -> None:
    from labctl.model import slices

    out.problems += slices.check_slice(doc.data, doc.where())


@register("Endpoints", "v1")
def _read_endpoints(doc: Document, out: Objects) -> None:
    from labctl.model import slices

    out.problems += slices.check_endpoints(doc.data, doc.where())


# -- NetworkPolicy ---------------------------------------------------------------------


@register("NetworkPolicy", "networking.k8s.io/v1")
def _read_network_policy(doc: Document, out: Objects) -> None:
    found = policy.check(doc.index, doc.data, lambda _i: doc.where())
    why = dns1123_subdomain(str(doc.data["metadata"]["name"]))
    found += [Problem(doc.where(), "metadata.name", why)] if why else []
    out.problems += found
    if not found:
        out.policies.append(policy.from_manifest(doc.index, doc.data))


# -- Ingress and IngressClass --------------------------------------------------------


@register("Ingress", "networking.k8s.io/v1")
def _read_ingress(doc: Document, out: Objects) -> None:
    out.problems += ingress.check_ingress(doc.data, doc.where())


@register("IngressClass", "networking.k8s.io/v1", namespaced=False)
def _read_ingress_class(doc: Document, out: Objects) -> None:
    out.problems += ingress.check_class(doc.data, doc.where())


@register("Secret", "v1")
def _read_secret(doc: Document, out: Objects) -> None:
    out.problems += ingress.check_secret(doc.data, doc.where())


# -- Gateway API (CRDs: their own validation) -------------------------------------------


def _read_gateway_api(doc: Document, out: Objects) -> None:
    out.problems += gateway.check(doc.data, doc.where())


for _kind in gateway.KINDS:
    register(_kind, gateway.API_VERSIONS[0], namespaced=_kind != "GatewayClass", also=gateway.API_VERSIONS[1:], kubernetes_schema=False)(_read_gateway_api)
