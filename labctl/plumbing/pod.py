"""A pod: its namespace joined to the node's cni0 by a veth, as the CNI bridge
plugin does it: the host end (veth<8 hex>) on cni0 with hairpin mode on, so a
pod can reach itself through its service; eth0 inside with the pod's address
and a default route via cni0.
"""

from __future__ import annotations

import ipaddress

from labctl.kernel import ifindex
from labctl.kernel.nl import Batch
from labctl.model import family, ipam, names
from labctl.model.objects import LabSpec, Node, Pod


def host_end(b: Batch, spec: LabSpec, pod: Pod, pod_netns_fd: int, mtu: int, cni0: int | None = None) -> None:
    """In the node's namespace: the veth pair, its pod end created as eth0 in the pod
    (`cni0`: the bridge's index when the caller has it, for many pods of one node)."""
    veth = names.pod_veth(spec.name, pod.namespace, pod.name)
    assert pod.ip
    pod_netns = names.pod_netns(spec.name, pod.namespace, pod.name)
    b.veth(
        veth,
        "eth0",
        pod_netns_fd,
        pod_netns,
        peer_index=ifindex.fresh(pod_netns, ifindex.ETH0),
        mtu=mtu,
        peer_mac=ipam.mac_for_ip(pod.ip),
        master=cni0 or ifindex.of(b.netns, ifindex.CNI0, names.POD_BRIDGE),
        up=True,
    )
    b.hairpin(veth)


def remove_host_end(b: Batch, spec: LabSpec, pod: Pod) -> None:
    """Deleting the host end deletes the pair, at once (the namespace may linger)."""
    b.link_del(names.pod_veth(spec.name, pod.namespace, pod.name))


def inside(b: Batch, node: Node, pod: Pod) -> None:
    """In the pod's namespace: lo and eth0 up, an address per family, and per family the
    default route via cni0."""
    assert pod.ip and node.pod_cidr
    b.link_up(index=1)
    eth0 = ifindex.of(b.netns, ifindex.ETH0, "eth0")
    cidrs = node.pod_cidrs or (node.pod_cidr,)
    pairs = [(ip, next(c for c in cidrs if family.of(c) == family.of(ip))) for ip in family.addresses(pod)]
    for ip, cidr in pairs:
        b.addr(eth0, ip, ipaddress.ip_network(cidr).prefixlen, "eth0")
    b.link_up(index=eth0)
    for ip, cidr in pairs:
        b.route("::/0" if family.of(ip) == 6 else "0.0.0.0/0", gateway=ipam.gateway(cidr), dev="eth0")
