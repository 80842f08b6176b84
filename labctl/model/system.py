"""The objects a lab has besides the user's: the `kubernetes` Service every
cluster has, and what each system add-on adds (the cluster DNS's coredns pod
and kube-dns Service; an ingress controller next). Pure.

An add-on's model part says which objects it adds and what it checks; its
runtime part (labctl.addons, by the same name) serves them. Adding one is a
model module here (its objects), a runtime module, and a line in each of
SYSTEM_ADDONS and labctl.model.registry.ADDONS.
"""

from __future__ import annotations

from typing import Callable

from labctl.model import dns, gateway, ingress
from labctl.model.errors import Problem
from labctl.model.objects import Container, ContainerPort, LabSpec, Pod, Service, ServicePort


class SystemAddOn:
    """The model part of a system add-on."""

    name = ""

    def enabled(self, spec: LabSpec) -> bool:
        raise NotImplementedError

    def check(self, spec: LabSpec, where: str) -> list[Problem]:
        """The Lab fields of the add-on (checked whether it is on or not)."""
        return []

    def check_documents(self, spec: LabSpec, documents: list[tuple[int, dict]], where_of: Callable[[int], str]) -> list[Problem]:
        """The manifests that need the add-on ((index, manifest) pairs)."""
        return []

    def clashes(self, spec: LabSpec, pods: list[Pod], services: list[Service], where_of: Callable[[int], str], documents=()) -> list[Problem]:
        """User objects that take the add-on's names."""
        return []

    def namespaces(self, spec: LabSpec) -> list[str]:
        """Namespaces the add-on's objects live in (made as if a Namespace document said so)."""
        return []

    def pods(self, spec: LabSpec, documents=()) -> list[Pod]:
        """`documents`: the lab's manifests (a Gateway's pods follow its listeners)."""
        return []

    def services(self, spec: LabSpec) -> list[Service]:
        """Services with their addresses given (kube-dns at .10)."""
        return []

    def allocated_services(self, spec: LabSpec, documents=()) -> list[Service]:
        """Services allocated like the user's (ClusterIP, NodePorts, LoadBalancer IP)."""
        return []


class ClusterDns(SystemAddOn):
    name = "dns"

    def enabled(self, spec: LabSpec) -> bool:
        return dns.system_objects(spec)

    def check(self, spec: LabSpec, where: str) -> list[Problem]:
        return dns.check_lab(spec, where)

    def clashes(self, spec, pods, services, where_of, documents=()) -> list[Problem]:
        return dns.reserved(spec, pods, services, where_of)

    def pods(self, spec: LabSpec, documents=()) -> list[Pod]:
        return [dns.dns_pod(spec)]

    def services(self, spec: LabSpec) -> list[Service]:
        return [dns.dns_service(spec)]


def controller_pods(lab: LabSpec, spec: ingress.IngressSpec) -> list[Pod]:
    """The controller pods: nginx runs in them (labctl.addons.ingress starts it)."""
    ports = (ContainerPort(80, "TCP", "http"), ContainerPort(443, "TCP", "https"))
    nodes = [n.name for n in lab.nodes]
    return [
        Pod(
            namespace=ingress.NAMESPACE,
            name=f"{ingress.CONTROLLER}-{i}",
            node=nodes[i % len(nodes)],
            labels=dict(ingress.LABELS),
            containers=(Container("controller", ports, command=ingress.NGINX_COMMAND),),
        )
        for i in range(spec.replicas)
    ]


def controller_service(spec: ingress.IngressSpec) -> Service:
    """Allocated like a user's Service (ClusterIP, NodePorts, LoadBalancer IP, health check port)."""
    return Service(
        namespace=ingress.NAMESPACE,
        name=ingress.CONTROLLER,
        type=spec.service,
        selector=dict(ingress.LABELS),
        ports=(ServicePort(80, "TCP", "http", "http"), ServicePort(443, "TCP", "https", "https")),
        external_traffic_policy=spec.external_traffic_policy,
    )


def is_controller(pod: Pod) -> bool:
    return pod.namespace == ingress.NAMESPACE and pod.name.startswith(ingress.CONTROLLER + "-") and pod.labels == ingress.LABELS


class IngressController(SystemAddOn):
    """ingress-nginx: namespace ingress-nginx, controller pods running nginx, their
    Service, and the IngressClass `nginx` (labctl.model.ingress)."""

    name = "ingress"

    def enabled(self, spec: LabSpec) -> bool:
        return spec.ingress is not None

    def check(self, spec: LabSpec, where: str) -> list[Problem]:
        return ingress.check_lab(spec, spec.ingress, where)

    def clashes(self, spec, pods, services, where_of, documents=()) -> list[Problem]:
        taken = [s for s in services if s.key == f"{ingress.NAMESPACE}/{ingress.CONTROLLER}"]
        taken += [p for p in pods if p.namespace == ingress.NAMESPACE and p.name.startswith(ingress.CONTROLLER + "-")]
        return [Problem(where_of(x.doc), "metadata.name", f"{x.namespace}/{x.name} is the ingress controller's (spec.ingress of the Lab)") for x in taken]

    def namespaces(self, spec: LabSpec) -> list[str]:
        return [ingress.NAMESPACE]

    def pods(self, spec: LabSpec, documents=()) -> list[Pod]:
        return controller_pods(spec, spec.ingress)

    def allocated_services(self, spec: LabSpec, documents=()) -> list[Service]:
        return [controller_service(spec.ingress)]


def served_gateways(spec: LabSpec, documents) -> list[gateway.Gateway]:
    """The Gateways of a class of ours, oldest first (document order here: their pods only
    need a stable order)."""
    classes = {gateway.CLASS: gateway.CONTROLLER_NAME}
    for d in documents:
        if d.get("kind") == "GatewayClass" and not gateway.check(d, ""):
            classes.setdefault(d["metadata"]["name"], (d.get("spec") or {}).get("controllerName", ""))
    # only well-formed Gateways get a proxy (the others are reported by their own checks)
    gws = [gateway.gateway_from_manifest(i, d) for i, d in enumerate(documents) if d.get("kind") == "Gateway" and not gateway.check(d, "")]
    return [g for g in gws if classes.get(g.class_name) == gateway.CONTROLLER_NAME]


def gateway_labels(gw: gateway.Gateway) -> dict[str, str]:
    return {gateway.GATEWAY_LABEL: gw.name, "app.kubernetes.io/name": gateway.proxy_name(gw.name)}


def gateway_ports(gw: gateway.Gateway) -> list[int]:
    return sorted({li.port for li in gw.listeners if li.protocol in gateway.PROTOCOLS})


def is_gateway_proxy(pod: Pod) -> str | None:
    """The Gateway (ns/name) whose nginx runs in this pod, or None."""
    name = pod.labels.get(gateway.GATEWAY_LABEL)
    proxy = gateway.proxy_name(name) if name else None
    if proxy and pod.owner == proxy and pod.labels.get("app.kubernetes.io/name") == proxy and pod.name.startswith(proxy + "-"):
        return f"{pod.namespace}/{name}"
    return None


class GatewayAPI(SystemAddOn):
    """NGINX Gateway Fabric's provisioning: per Gateway of the class `nginx`, nginx
    pod(s) `<ns>/<gateway>-nginx-<i>` and the LoadBalancer Service `<ns>/<gateway>-nginx`
    with a port per listener port (labctl.model.gateway)."""

    name = "gateway"

    def enabled(self, spec: LabSpec) -> bool:
        return spec.gateway_api

    def check_documents(self, spec, documents, where_of) -> list[Problem]:
        return gateway.check_lab(spec, documents, where_of)

    def clashes(self, spec, pods, services, where_of, documents=()) -> list[Problem]:
        out = []
        for gw in served_gateways(spec, documents):
            name = gateway.proxy_name(gw.name)
            taken = [s for s in services if s.key == f"{gw.namespace}/{name}"]
            taken += [p for p in pods if p.namespace == gw.namespace and p.name.startswith(name + "-")]
            out += [Problem(where_of(x.doc), "metadata.name", f"{x.namespace}/{x.name} is the nginx of Gateway {gw.key}") for x in taken]
        return out

    def pods(self, spec: LabSpec, documents=()) -> list[Pod]:
        out = []
        for gw in served_gateways(spec, documents):
            ports = tuple(ContainerPort(p, "TCP", f"port-{p}") for p in gateway_ports(gw))
            out.append(
                Pod(
                    namespace=gw.namespace,
                    name=f"{gateway.proxy_name(gw.name)}-0",
                    labels=gateway_labels(gw),
                    containers=(Container("nginx", ports, command=ingress.NGINX_COMMAND),),
                    owner=gateway.proxy_name(gw.name),  # scheduled like a Deployment's pod, and kept where it is
                )
            )
        return out

    def allocated_services(self, spec: LabSpec, documents=()) -> list[Service]:
        return [
            Service(
                namespace=gw.namespace,
                name=gateway.proxy_name(gw.name),
                type="LoadBalancer",
                selector=gateway_labels(gw),
                ports=tuple(ServicePort(p, "TCP", f"port-{p}", p) for p in gateway_ports(gw)),
                external_traffic_policy="Local",
            )
            for gw in served_gateways(spec, documents)
            if gateway_ports(gw)
        ]


SYSTEM_ADDONS: tuple[SystemAddOn, ...] = (ClusterDns(), IngressController(), GatewayAPI())


def on(spec: LabSpec) -> list[SystemAddOn]:
    return [a for a in SYSTEM_ADDONS if a.enabled(spec)]
