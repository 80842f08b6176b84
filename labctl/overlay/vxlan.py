"""flannel's VXLAN backend, as flanneld lays it out in each node.

- flannel.1: VNI 1, UDP 8472, learning off, bound to eth0 and the node's
  address, MTU = 1500 - 50, with the node's pod CIDR .0 as a /32.
- In a lab with IPv6, flannel-v6.1 for that family, as flanneld's dual-stack
  mode makes it: the same VNI and port over the node's IPv6 address, MTU =
  1500 - 70 (a 40-byte outer header), its own MAC, the IPv6 pod CIDR's first
  address as a /128. Each family's entries below go to its own device.
- Per remote node, three permanent entries (flannel writes them from the
  other nodes' annotations; labctl knows them from the topology):
    ip route replace <remote podCIDR> via <remote .0> dev flannel.1 onlink
    ip neigh replace <remote .0> lladdr <remote VTEP MAC> dev flannel.1 nud permanent
    bridge fdb replace <remote VTEP MAC> dev flannel.1 dst <remote node IP> self permanent
"""

from __future__ import annotations

from labctl.kernel import ifindex
from labctl.kernel.nl import Batch
from labctl.model import ipam, names
from labctl.model.objects import LabSpec, Node
from labctl.overlay.base import Overlay

DEV = names.VXLAN_DEVICE
DEV6 = names.VXLAN6_DEVICE


def _six(spec: LabSpec) -> bool:
    """Whether `spec` is an IPv6 family's view (each family's entries are made on its view)."""
    return spec.ip_families[:1] == ("IPv6",)


def dev(spec: LabSpec) -> str:
    return DEV6 if _six(spec) else DEV


class Vxlan(Overlay):
    name = "vxlan"
    overhead = 50  # outer Ethernet 14, IP 20, UDP 8, VXLAN 8
    devices = (DEV,)
    devices6 = (DEV6,)

    def device(self, b: Batch, spec: LabSpec, node: Node) -> None:
        """flannel.1 (flannel-v6.1 on an IPv6 view) at its slot on a new node (made before
        its pods' veths); on a running node switching to vxlan, at the next free index
        (the kernel's choice)."""
        assert node.ip and node.pod_cidr
        six = _six(spec)
        name = dev(spec)
        index = ifindex.fresh(b.netns, ifindex.VXLAN6 if six else ifindex.VXLAN)
        b.vxlan(
            name,
            index=index,
            vni=names.VXLAN_VNI,
            local=node.ip,
            link=ifindex.of(b.netns, ifindex.ETH0, "eth0"),
            port=names.VXLAN_PORT,
            mtu=self.mtu - 20 if six else self.mtu,
            mac=names.vtep_mac(spec.name, node.name, six),
        )
        if not index:
            b.commit()  # its index is the kernel's choice: ask it
            b.requests.clear()
            index = device_index(b.netns, six)
        b.addr(index, ipam.vtep_address(node.pod_cidr), 128 if six else 32, name)
        b.link_up(index=index)

    def peer(self, b: Batch, spec: LabSpec, local: Node, remote: Node) -> None:
        assert remote.ip and remote.pod_cidr
        six = _six(spec)
        index = device_index(b.netns, six)
        vtep = ipam.vtep_address(remote.pod_cidr)
        mac = names.vtep_mac(spec.name, remote.name, six)
        b.neigh(index, vtep, mac, dev(spec))
        b.fdb(index, mac, remote.ip, dev(spec))
        b.route(remote.pod_cidr, gateway=vtep, oif=index, dev=dev(spec), onlink=True)

    def remove_peer(self, b: Batch, spec: LabSpec, local: Node, remote: Node) -> None:
        assert remote.ip and remote.pod_cidr
        six = _six(spec)
        index = device_index(b.netns, six)
        b.route_del(remote.pod_cidr)
        b.neigh_del(index, ipam.vtep_address(remote.pod_cidr), dev(spec))
        b.fdb_del(index, names.vtep_mac(spec.name, remote.name, six), remote.ip, dev(spec))

    def leave(self, b: Batch, spec: LabSpec, node: Node) -> None:
        """Deleting the device takes its routes, neighbours and FDB entries with it."""
        b.link_del(dev(spec))

    def route_to(self, spec: LabSpec, remote: Node) -> tuple[str, str]:
        assert remote.pod_cidr
        return ipam.vtep_address(remote.pod_cidr), dev(spec)

    def node_source_ip(self, spec: LabSpec, node: Node) -> str:
        """flannel.1's address (the pod CIDR's first address, the route's preferred source)."""
        assert node.pod_cidr
        return ipam.vtep_address(node.pod_cidr)


def device_index(netns: str | None, six: bool = False) -> int:
    """flannel.1's (flannel-v6.1's) index in a node (also while it is still in an unsent
    batch of a node this process made)."""
    return ifindex.of(netns, ifindex.VXLAN6, DEV6) if six else ifindex.of(netns, ifindex.VXLAN, DEV)


OVERLAY = Vxlan()
