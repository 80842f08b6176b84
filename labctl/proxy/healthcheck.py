"""Which health check node ports each node serves, and what they answer. Pure.

kube-proxy serves one HTTP health check per LoadBalancer service with
externalTrafficPolicy Local, on its healthCheckNodePort, on every node: the
count of the service's ready endpoints on that node (distinct addresses,
whatever the port), 200 when there is one, 503 otherwise. The lab's responder
serves them in each node's namespace (labctl.responder.healthcheck).
"""

from __future__ import annotations

from labctl.model import names
from labctl.model.objects import Topology
from labctl.proxy.endpoints import PodIndex, endpoints


def checks(topo: Topology) -> list[dict]:
    """For the responder: per node and service, the port and the local endpoint count."""
    index = PodIndex(topo.pods)
    out = []
    for s in topo.services:
        if not (s.proxied and s.needs_health_check and s.health_check_node_port):
            continue
        local: dict[str | None, set[str]] = {}
        for p in s.ports:
            for e in endpoints(topo, s, p, index):
                local.setdefault(e.node, set()).add(e.ip)
        for n in topo.lab.nodes:
            out.append(
                {
                    "netns": names.node_netns(topo.lab.name, n.name),
                    "node": n.name,
                    "ip": n.ip,
                    "port": s.health_check_node_port,
                    "namespace": s.namespace,
                    "name": s.name,
                    "local": len(local.get(n.name, ())),
                }
            )
    return out
