"""flannel's host-gw backend: no encapsulation, one plain route per remote
node through the node network (all nodes share one L2 segment):

    ip route replace <remote podCIDR> via <remote node IP> dev eth0
"""

from __future__ import annotations

from labctl.kernel import ifindex
from labctl.kernel.nl import Batch
from labctl.model.objects import LabSpec, Node
from labctl.overlay.base import Overlay


class HostGw(Overlay):
    name = "host-gw"

    def peer(self, b: Batch, spec: LabSpec, local: Node, remote: Node) -> None:
        assert remote.ip and remote.pod_cidr
        b.route(remote.pod_cidr, gateway=remote.ip, oif=ifindex.of(b.netns, ifindex.ETH0, "eth0"), dev="eth0")

    def remove_peer(self, b: Batch, spec: LabSpec, local: Node, remote: Node) -> None:
        assert remote.pod_cidr
        b.route_del(remote.pod_cidr)

    def node_source_ip(self, spec: LabSpec, node: Node) -> str:
        """The node's own address: flannel masquerades non-pod sources into the pod
        network to the outgoing address."""
        assert node.ip
        return node.ip


OVERLAY = HostGw()
