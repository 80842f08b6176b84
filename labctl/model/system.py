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

from labctl.model import dns
from labctl.model.errors import Problem
from labctl.model.objects import LabSpec, Pod, Service


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

    def pods(self, spec: LabSpec) -> list[Pod]:
        return []

    def services(self, spec: LabSpec) -> list[Service]:
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


SYSTEM_ADDONS: tuple[SystemAddOn, ...] = (ClusterDns(),)


def on(spec: LabSpec) -> list[SystemAddOn]:
    return [a for a in SYSTEM_ADDONS if a.enabled(spec)]
