"""Calico's IP-in-IP mode: BGP as in labctl.overlay.bgp, and every route to
another node's pods through tunl0, the ipip module's own device, which Calico
uses as it comes:

    10.244.1.0/24 via 10.10.20.11 dev tunl0 proto bird metric 32 onlink

tunl0 has no fixed remote: the route's gateway (the peer node) becomes the
outer destination, so a pod packet crosses the node network inside an IPv4
header of protocol 4 (`tcpdump -ni eth0 ip proto 4`). It costs 20 bytes: tunl0
and the pods' interfaces have MTU 1480. tunl0 holds the first address of the
node's pod CIDR as a /32 (Calico gives it one from the node's IPAM block), the
source of the node's own packets to other nodes' pods.
"""

from __future__ import annotations

import os
import subprocess

from labctl.kernel import ifindex
from labctl.kernel.nl import Batch
from labctl.model import ipam
from labctl.model.objects import LabSpec, Node
from labctl.overlay.bgp import Bgp, config

DEV = "tunl0"
NO_IPIP_HINT = "use overlay: bgp (no encapsulation) or vxlan here, or a distribution kernel (scripts/vm-test.sh runs one)"


def available() -> bool:
    """Whether the kernel has IP-in-IP tunnels, loading the module if needed (as kubeadm
    loads br_netfilter); /sys/module/ipip exists also when it is built in."""
    if not os.path.isdir("/sys/module/ipip"):
        subprocess.run(["modprobe", "-q", "ipip"], capture_output=True)
    return os.path.isdir("/sys/module/ipip")


class Ipip(Bgp):
    name = "ipip"
    overhead = 20  # the outer IPv4 header
    devices = (DEV,)

    def require(self, spec: LabSpec) -> None:
        from labctl.errors import HostLacks

        super().require(spec)
        if not available():
            raise HostLacks("overlay ipip needs the kernel's ipip module (tunl0), and this kernel has none (modprobe ipip failed)", hint=NO_IPIP_HINT)

    def device(self, b: Batch, spec: LabSpec, node: Node) -> None:
        """tunl0 (every namespace has one once the module is loaded) up, its MTU and address."""
        assert node.pod_cidr
        b.link_up(name=DEV, mtu=self.mtu)
        b.addr(ifindex.lookup(b.netns, DEV), ipam.vtep_address(node.pod_cidr), 32, DEV)

    def leave(self, b: Batch, spec: LabSpec, node: Node) -> None:
        """tunl0 cannot be deleted (the module owns it): down, without its address.
        bird, stopped, takes its routes with it."""
        assert node.pod_cidr
        b.addr_del(ifindex.lookup(b.netns, DEV), ipam.vtep_address(node.pod_cidr), 32, DEV)
        b.link_down(name=DEV, mtu=1480)

    def route_to(self, spec: LabSpec, remote: Node) -> tuple[str, str]:
        assert remote.ip
        return remote.ip, DEV

    def node_source_ip(self, spec: LabSpec, node: Node) -> str:
        """tunl0's address: the source the kernel picks for a route through tunl0."""
        assert node.pod_cidr
        return ipam.vtep_address(node.pod_cidr)

    def daemon_config(self, spec: LabSpec, node: Node, socket_path: str) -> str:
        return config(spec, node, socket_path, tunnel=DEV)


OVERLAY = Ipip()
