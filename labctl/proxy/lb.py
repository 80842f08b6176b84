"""Which node announces a LoadBalancer IP on the node network. Pure.

As MetalLB's layer 2 mode does: one node answers ARP for the IP, so traffic
to it arrives at that node, where the service rules take it. With
externalTrafficPolicy Local the speaker is a node with a local endpoint (none:
not announced, as MetalLB does); with Cluster, the first node that has an
endpoint, else the first node (which then refuses: no endpoints).
"""

from __future__ import annotations

from labctl.model.objects import Service, Topology
from labctl.proxy.endpoints import endpoints


def speaker(topo: Topology, service: Service) -> str | None:
    if service.type != "LoadBalancer" or not service.load_balancer_ip:
        return None
    hosting = {e.node for p in service.ports for e in endpoints(topo, service, p)}
    for n in topo.lab.nodes:
        if n.name in hosting:
            return n.name
    if service.external_traffic_policy == "Local" or not topo.lab.nodes:
        return None
    return topo.lab.nodes[0].name


def announcements(topo: Topology) -> dict[str, list[str]]:
    """node -> the LoadBalancer IPs it answers ARP (IPv4) or NDP (IPv6) for: each
    family's, chosen in its view of the lab."""
    from labctl.model import family

    out: dict[str, list[str]] = {}
    for _, view in family.views(topo):
        for s in view.services:
            node = speaker(view, s)
            if node is not None:
                out.setdefault(node, []).append(s.load_balancer_ip)
    return out
