"""`labctl status`: the applied topology, as the contract's JSON shape, plus
what is alive (namespaces present, responder running)."""

from __future__ import annotations

from typing import Any

from labctl import names
from labctl.kernel import netns
from labctl.lab import LabHandle
from labctl.responder import control as responder


def status(handle: LabHandle) -> dict[str, Any]:
    topo = handle.applied()
    if topo is None:
        return {"lab": handle.name, "state": "incomplete", "nodes": [], "externals": [], "pods": [], "services": [], "policies": []}
    lab = topo.lab
    present = set(netns.listed())
    return {
        "lab": lab.name,
        "state": "up",
        "overlay": lab.overlay,
        "proxyMode": lab.proxy_mode,
        "networks": {"node": lab.node_network, "pod": lab.pod_network, "service": lab.service_network},
        "nodes": [
            {
                "name": n.name,
                "ip": n.ip,
                "podCIDR": n.pod_cidr,
                "netns": names.node_netns(lab.name, n.name),
                "present": names.node_netns(lab.name, n.name) in present,
            }
            for n in lab.nodes
        ],
        "externals": [
            {"name": e.name, "ip": e.ip, "netns": names.external_netns(lab.name, e.name), "present": names.external_netns(lab.name, e.name) in present}
            for e in lab.externals
        ],
        "pods": [
            {
                "namespace": p.namespace,
                "name": p.name,
                "node": p.node,
                "ip": p.ip,
                "labels": dict(p.labels),
                "ports": [{"port": cp.port, "protocol": cp.protocol, "name": cp.name} for cp in p.ports()],
                "netns": names.pod_netns(lab.name, p.namespace, p.name),
                "present": names.pod_netns(lab.name, p.namespace, p.name) in present,
            }
            for p in topo.pods
        ],
        "services": [],
        "policies": [],
        "responder": responder.status(handle.dir, handle.journal),
    }
