"""What an overlay is: how pod traffic crosses from node to node. One object per
kind behind one interface, chosen by name (labctl.model.registry.OVERLAYS).

Each method adds netlink requests to a node's Batch (labctl.kernel.nl); nothing
here sends them. flannel's backends are the model: a device per node, and per
remote node the entries that reach its pod CIDR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labctl.kernel.nl import Batch
from labctl.model.objects import LabSpec, Node

UNDERLAY_MTU = 1500


@dataclass(frozen=True)
class Daemon:
    """A routing daemon each node runs (bgp: bird), a recorded process of the lab."""

    name: str  # its files: <lab dir>/<name>/<node>/<name>.conf and .ctl
    package: str
    program: str
    client: str  # `labctl exec node/NAME -- <client> ...` is given the node's control socket


class Overlay:
    name = ""
    overhead = 0  # bytes of encapsulation per packet
    daemon: Daemon | None = None  # a daemon per node that learns the routes (None: labctl writes them)
    status_key = ""  # its key under `status --json` nodes[] (node_status)
    devices: tuple[str, ...] = ()  # the node devices it keeps up (`up` sets them up again)
    devices6: tuple[str, ...] = ()  # those it adds in a lab with IPv6

    @property
    def mtu(self) -> int:
        """The pods' MTU (cni0, veths): the underlay's, less the encapsulation."""
        return UNDERLAY_MTU - self.overhead

    def pod_mtu(self, spec: LabSpec) -> int:
        """The pods' MTU in this lab: 20 bytes less where IPv6 is encapsulated in IPv6
        (its outer header is 40 bytes, not 20)."""
        from labctl.model import family

        return self.mtu - 20 if self.overhead and 6 in family.lab_families(spec) else self.mtu

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

    def leave(self, b: Batch, spec: LabSpec, node: Node) -> None:
        """On `node`: remove the overlay's device and peers (a running lab switches to
        another overlay; the daemon, if any, is stopped by the builder)."""
        for remote in spec.nodes:
            if remote.name != node.name:
                self.remove_peer(b, spec, node, remote)

    def route_to(self, spec: LabSpec, remote: Node) -> tuple[str, str]:
        """(gateway, device) of the route a node has to `remote`'s pods (what `probe`
        compares `ip route get` with, to name a missing route)."""
        assert remote.ip
        return remote.ip, "eth0"

    def node_source_ip(self, spec: LabSpec, node: Node) -> str:
        """The address a pod on another node sees when `node` itself connects to it
        (what a NetworkPolicy ipBlock is matched against)."""
        raise NotImplementedError

    # -- an overlay whose routes a daemon learns (daemon is not None) --------------

    def daemon_config(self, spec: LabSpec, node: Node, socket_path: str) -> str:
        """The daemon's configuration for one node (pure)."""
        raise NotImplementedError

    def daemon_argv(self, conf: Path, socket_path: Path) -> list[str]:
        """The daemon in the foreground (labctl records it, as a container's command)."""
        raise NotImplementedError

    def daemon_reload_argv(self, socket_path: Path) -> list[str]:
        """Tell a running daemon to read its changed configuration."""
        raise NotImplementedError

    def wait_converged(self, spec: LabSpec, netns_of, dead) -> None:
        """Return once every node has learned what it must (netns_of: node name ->
        namespace; dead(): (node, why) of a daemon that exited, else None)."""

    def node_status(self, spec: LabSpec, node: Node, labdir: Path) -> dict | None:
        """What `status --json` shows under nodes[].<status_key> (None: nothing)."""
        return None
