"""flannel's VXLAN backend, as flanneld lays it out in each node.

- flannel.1: VNI 1, UDP 8472, learning off, bound to eth0 and the node's
  address, MTU = 1500 - 50, with the node's pod CIDR .0 as a /32.
- Per remote node, three permanent entries (flannel writes them from the
  other nodes' annotations; labctl knows them from the topology):
    ip route replace <remote podCIDR> via <remote .0> dev flannel.1 onlink
    ip neigh replace <remote .0> lladdr <remote VTEP MAC> dev flannel.1 nud permanent
    bridge fdb replace <remote VTEP MAC> dev flannel.1 dst <remote node IP> self permanent
"""

from __future__ import annotations

from labctl.kernel.nl import Batch
from labctl.model import ipam, names
from labctl.model.objects import LabSpec, Node
from labctl.overlay.base import Overlay
from labctl.plumbing.underlay import HOST_ETH0_INDEX

DEVICE_INDEX = 4
DEV = names.VXLAN_DEVICE


class Vxlan(Overlay):
    name = "vxlan"
    overhead = 50  # outer Ethernet 14, IP 20, UDP 8, VXLAN 8

    def device(self, b: Batch, spec: LabSpec, node: Node) -> None:
        assert node.ip and node.pod_cidr
        b.vxlan(
            DEV,
            index=DEVICE_INDEX,
            vni=names.VXLAN_VNI,
            local=node.ip,
            link=HOST_ETH0_INDEX,
            port=names.VXLAN_PORT,
            mtu=self.mtu,
            mac=names.vtep_mac(spec.name, node.name),
        )
        b.addr(DEVICE_INDEX, ipam.vtep_address(node.pod_cidr), 32, DEV)
        b.link_up(index=DEVICE_INDEX)

    def peer(self, b: Batch, spec: LabSpec, local: Node, remote: Node) -> None:
        assert remote.ip and remote.pod_cidr
        vtep = ipam.vtep_address(remote.pod_cidr)
        mac = names.vtep_mac(spec.name, remote.name)
        b.neigh(DEVICE_INDEX, vtep, mac, DEV)
        b.fdb(DEVICE_INDEX, mac, remote.ip, DEV)
        b.route(remote.pod_cidr, gateway=vtep, oif=DEVICE_INDEX, dev=DEV, onlink=True)

    def remove_peer(self, b: Batch, spec: LabSpec, local: Node, remote: Node) -> None:
        assert remote.ip and remote.pod_cidr
        b.route_del(remote.pod_cidr)
        b.neigh_del(DEVICE_INDEX, ipam.vtep_address(remote.pod_cidr), DEV)
        b.fdb_del(DEVICE_INDEX, names.vtep_mac(spec.name, remote.name), remote.ip, DEV)

    def node_source_ip(self, spec: LabSpec, node: Node) -> str:
        """flannel.1's address (the pod CIDR's first address, the route's preferred source)."""
        assert node.pod_cidr
        return ipam.vtep_address(node.pod_cidr)


OVERLAY = Vxlan()
