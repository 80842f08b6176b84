"""The cluster DNS add-on: its records from the topology (records), and the
answers the lab's responder gives from them (server). Its objects, the coredns
pod and the kube-dns Service, are its model part (labctl.model.dns)."""

from __future__ import annotations

from typing import Any

from labctl.addons.base import AddOn
from labctl.model import dns
from labctl.model.objects import Pod, Topology


class ClusterDns(AddOn):
    """kube-system/coredns behind kube-dns: the responder answers DNS on the pod's port 53."""

    name = "dns"
    preload = ("labctl.addons.dns.server",)  # dnspython's import overlaps the building of the lab

    def pod_config(self, topo: Topology, pod: Pod) -> dict[str, Any]:
        return {"dns": [[dns.PORT, "UDP"], [dns.PORT, "TCP"]]} if dns.is_system(pod) else {}

    def responder_config(self, topo: Topology) -> dict[str, Any]:
        from labctl.addons.dns.records import zone

        return {"dns": zone(topo)}

    def status(self, topo: Topology) -> dict[str, Any] | None:
        return dns.describe(topo)

    def summary(self, topo: Topology) -> str:
        return f"cluster DNS at {dns.service_ip(topo.lab)}"


ADDON = ClusterDns()
