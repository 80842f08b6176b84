"""Why a probe got no answer, when the kernel can say: the source's node has no
route to the node that holds the destination pod (a BGP route withdrawn, a
host-gw route deleted by hand). Asked only after a probe failed, with
`ip route get` in the source node, as a learner would ask it."""

from __future__ import annotations

import ipaddress
import json
import subprocess

from labctl.model import names
from labctl.model.objects import Node, Topology
from labctl.model.targets import Endpoint


def node_of(topo: Topology, ep: Endpoint) -> Node | None:
    """The node an endpoint's traffic starts from: a pod's, or the node itself."""
    if ep.pod is not None:
        return topo.lab.node(ep.pod.node)
    if ep.label.startswith("node/"):
        return topo.lab.node(ep.label[5:])
    return None


def _holder(topo: Topology, ip: str) -> Node | None:
    addr = ipaddress.ip_address(ip)
    for n in topo.lab.nodes:
        if n.pod_cidr and addr in ipaddress.ip_network(n.pod_cidr):
            return n
    return None


def route_gap(topo: Topology, src: Endpoint, dst_ip: str) -> str | None:
    """A sentence naming the missing route, or None (the route is there, or the
    question does not apply: same node, not a pod address, an external source)."""
    local = node_of(topo, src)
    remote = _holder(topo, dst_ip)
    if local is None or remote is None or local.name == remote.name:
        return None
    ns = names.node_netns(topo.lab.name, local.name)
    p = subprocess.run(["ip", "-n", ns, "-j", "route", "get", dst_ip], capture_output=True, text=True)
    if p.returncode != 0:
        return f"node {local.name} has no route to {dst_ip} ({p.stderr.strip()})"
    got = (json.loads(p.stdout or "[]") or [{}])[0]
    from labctl import registry

    backend = registry.overlay(topo.lab.overlay)
    gateway, device = backend.route_to(topo.lab, remote)
    if got.get("dev") == device and got.get("gateway") == gateway:
        return None
    via = f"via {got['gateway']} dev {got.get('dev')}" if got.get("gateway") else f"dev {got.get('dev')}"
    why = f"node {local.name} has no route to {remote.pod_cidr} (node {remote.name}'s pods): the kernel sends {dst_ip} {via}"
    if backend.daemon is not None:
        d = backend.daemon
        why += f"; {d.program} withdrew it or never learned it (labctl exec node/{local.name} -- {d.client} show protocols)"
    return why
