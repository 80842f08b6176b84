"""What an overlay is: how pod traffic crosses from node to node. One object per
kind behind one interface, chosen by name (labctl.model.registry.OVERLAYS).

Each method adds netlink requests to a node's Batch (labctl.kernel.nl); nothing
here sends them. flannel's backends are the model: a device per node, and per
remote node the entries that reach its pod CIDR.
"""

from __future__ import annotations

from labctl.kernel.nl import Batch
from labctl.model.objects import LabSpec, Node

UNDERLAY_MTU = 1500


class Overlay:
    name = ""
    overhead = 0  # bytes of encapsulation per packet

    @property
    def mtu(self) -> int:
        """The pods' MTU (cni0, veths): the underlay's, less the encapsulation."""
        return UNDERLAY_MTU - self.overhead

    def require(self, spec: LabSpec) -> None:
        """What the kernel must have (exit 3), checked before anything is made."""

    def device(self, b: Batch, spec: LabSpec, node: Node) -> None:
        """The node's own device(s), made when the node is."""

    def peer(self, b: Batch, spec: LabSpec, local: Node, remote: Node) -> None:
        """On `local`: what reaches `remote`'s pod CIDR."""
        raise NotImplementedError

    def remove_peer(self, b: Batch, spec: LabSpec, local: Node, remote: Node) -> None:
        """On `local`: `remote` left the lab."""
        raise NotImplementedError

    def node_source_ip(self, spec: LabSpec, node: Node) -> str:
        """The address a pod on another node sees when `node` itself connects to it
        (what a NetworkPolicy ipBlock is matched against)."""
        raise NotImplementedError
