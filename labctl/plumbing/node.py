"""A node: cni0 (the pods' gateway, as the CNI bridge plugin makes it), the
sysctls a kubelet node has, and flannel's masquerade rules.
"""

from __future__ import annotations

import ipaddress

from labctl import ipam, names
from labctl.kernel.nl import Batch
from labctl.model.objects import LabSpec, Node

CNI0_INDEX = 3

SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}


def cni0(b: Batch, spec: LabSpec, node: Node) -> None:
    """cni0 holds the first address of the node's pod CIDR."""
    assert node.pod_cidr
    b.bridge(names.POD_BRIDGE, index=CNI0_INDEX, mtu=spec.mtu, up=True)
    b.addr(CNI0_INDEX, ipam.gateway(node.pod_cidr), ipaddress.ip_network(node.pod_cidr).prefixlen, names.POD_BRIDGE)


def masquerade_rules(spec: LabSpec, node: Node) -> str:
    """iptables-restore input: flannel's FLANNEL-POSTRTG and FLANNEL-FWD chains.

    Pod traffic leaving the pod network is masqueraded at its node (what CNI's
    ipMasq and flanneld's --ip-masq do); pod-to-pod traffic keeps its source.
    Packets marked 0x4000 are left to kube-proxy's KUBE-POSTROUTING.
    """
    cluster = spec.pod_network
    local = node.pod_cidr
    c = '-m comment --comment "flanneld masq"'
    f = '-m comment --comment "flanneld forward"'
    return "\n".join(
        [
            "*nat",
            ":FLANNEL-POSTRTG - [0:0]",
            f"-A POSTROUTING {c} -j FLANNEL-POSTRTG",
            f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN",
            f"-A FLANNEL-POSTRTG -s {local} -d {cluster} {c} -j RETURN",
            f"-A FLANNEL-POSTRTG -s {cluster} -d {local} {c} -j RETURN",
            f"-A FLANNEL-POSTRTG ! -s {cluster} -d {local} {c} -j RETURN",
            f"-A FLANNEL-POSTRTG -s {cluster} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully",
            f"-A FLANNEL-POSTRTG ! -s {cluster} -d {cluster} {c} -j MASQUERADE --random-fully",
            "COMMIT",
            "*filter",
            ":FLANNEL-FWD - [0:0]",
            f"-A FORWARD {f} -j FLANNEL-FWD",
            f"-A FLANNEL-FWD -s {cluster} {f} -j ACCEPT",
            f"-A FLANNEL-FWD -d {cluster} {f} -j ACCEPT",
            "COMMIT",
            "",
        ]
    )
