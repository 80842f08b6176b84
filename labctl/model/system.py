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

from labctl.model import dns, ingress
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

    def clashes(self, spec: LabSpec, pods: list[Pod], services: list[Service], where_of: Callable[[int], str]) -> list[Problem]:
        """User objects that take the add-on's names."""
        return []

    def namespaces(self, spec: LabSpec) -> list[str]:
        """Namespaces the add-on's objects live in (made as if a Namespace document said so)."""
        return []

    def pods(self, spec: LabSpec) -> list[Pod]:
        return []

    def services(self, spec: LabSpec) -> list[Service]:
        """Services with their addresses given (kube-dns at .10)."""
        return []

    def allocated_services(self, spec: LabSpec) -> list[Service]:
        """Services allocated like the user's (ClusterIP, NodePorts, LoadBalancer IP)."""
        return []


class ClusterDns(SystemAddOn):
    name = "dns"

    def enabled(self, spec: LabSpec) -> bool:
        return dns.system_objects(spec)

    def check(self, spec: LabSpec, where: str) -> list[Problem]:
        return dns.check_lab(spec, where)

    def clashes(self, spec, pods, services, where_of) -> list[Problem]:
        return dns.reserved(spec, pods, services, where_of)

    def pods(self, spec: LabSpec) -> list[Pod]:
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

    def clashes(self, spec, pods, services, where_of) -> list[Problem]:
        taken = [s for s in services if s.key == f"{ingress.NAMESPACE}/{ingress.CONTROLLER}"]
        taken += [p for p in pods if p.namespace == ingress.NAMESPACE and p.name.startswith(ingress.CONTROLLER + "-")]
        return [Problem(where_of(x.doc), "metadata.name", f"{x.namespace}/{x.name} is the ingress controller's (spec.ingress of the Lab)") for x in taken]

    def namespaces(self, spec: LabSpec) -> list[str]:
        return [ingress.NAMESPACE]

    def pods(self, spec: LabSpec) -> list[Pod]:
        return controller_pods(spec, spec.ingress)

    def allocated_services(self, spec: LabSpec) -> list[Service]:
        return [controller_service(spec.ingress)]


SYSTEM_ADDONS: tuple[SystemAddOn, ...] = (ClusterDns(), IngressController())


def on(spec: LabSpec) -> list[SystemAddOn]:
    return [a for a in SYSTEM_ADDONS if a.enabled(spec)]
