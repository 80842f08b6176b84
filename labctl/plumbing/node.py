"""A node: cni0 (the pods' gateway, as the CNI bridge plugin makes it), the
sysctls a kubelet node has, and flannel's masquerade rules.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from labctl.kernel import ifindex
from labctl.kernel.nl import Batch
from labctl.model import ipam, names
from labctl.model.objects import LabSpec, Node

SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    # ICMP errors (a policy's REJECT, a port unreachable) go out at once: with the
    # default (1000 ms per destination after a burst of 6) a verify sending a
    # source many denied probes would see most come back as `filtered`.
    "net.ipv4.icmp_ratelimit": "0",
}
NODAD = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
SYSCTLS6 = {
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.icmp.ratelimit": "0",
}


def sysctls(spec: LabSpec) -> dict[str, str]:
    """A node's sysctls: IPv6 forwarding too in a lab with IPv6 (as kubelet and flannel set it)."""
    from labctl.model import family

    return {**SYSCTLS, **SYSCTLS6} if 6 in family.lab_families(spec) else SYSCTLS


def cni0(b: Batch, spec: LabSpec, node: Node, mtu: int) -> None:
    """cni0 holds the first address of each of the node's pod CIDRs; `mtu`: the overlay's."""
    assert node.pod_cidr
    b.bridge(names.POD_BRIDGE, index=ifindex.fresh(b.netns, ifindex.CNI0), mtu=mtu, mac=names.bridge_mac(spec.name, node.name, names.POD_BRIDGE), up=True)
    for cidr in node.pod_cidrs or (node.pod_cidr,):
        b.addr(ifindex.of(b.netns, ifindex.CNI0, names.POD_BRIDGE), ipam.gateway(cidr), ipaddress.ip_network(cidr).prefixlen, names.POD_BRIDGE)


@dataclass
class Chains:
    """Rules for iptables-restore: table -> chain -> rules, and jumps from built-in chains."""

    chains: dict[str, dict[str, list[str]]]
    jumps: list[tuple[str, str, str]]  # (table, built-in chain, rule without "-A CHAIN")

    def text(self) -> str:
        """A `iptables-restore --noflush` input adding these chains."""
        out = []
        for table, chains in self.chains.items():
            out.append(f"*{table}")
            out += [f":{c} - [0:0]" for c in chains]
            out += [f"-A {c} {r}" for t, c, r in self.jumps if t == table]
            for lines in chains.values():
                out += lines
            out.append("COMMIT")
        return "\n".join(out) + "\n"


def masquerade_chains(spec: LabSpec, node: Node) -> Chains:
    """flannel's FLANNEL-POSTRTG and FLANNEL-FWD chains.

    Pod traffic leaving the pod network is masqueraded at its node (what CNI's
    ipMasq and flanneld's --ip-masq do); pod-to-pod traffic keeps its source.
    Packets marked 0x4000 are left to kube-proxy's KUBE-POSTROUTING.
    """
    cluster = spec.pod_network
    local = node.pod_cidr
    c = '-m comment --comment "flanneld masq"'
    f = '-m comment --comment "flanneld forward"'
    post = "FLANNEL-POSTRTG"
    fwd = "FLANNEL-FWD"
    return Chains(
        chains={
            "nat": {
                post: [
                    f"-A {post} -m mark --mark 0x4000/0x4000 {c} -j RETURN",
                    f"-A {post} -s {local} -d {cluster} {c} -j RETURN",
                    f"-A {post} -s {cluster} -d {local} {c} -j RETURN",
                    f"-A {post} ! -s {cluster} -d {local} {c} -j RETURN",
                    f"-A {post} -s {cluster} ! -d {'ff00::/8' if ':' in cluster else '224.0.0.0/4'} {c} -j MASQUERADE --random-fully",
                    f"-A {post} ! -s {cluster} -d {cluster} {c} -j MASQUERADE --random-fully",
                ]
            },
            "filter": {fwd: [f"-A {fwd} -s {cluster} {f} -j ACCEPT", f"-A {fwd} -d {cluster} {f} -j ACCEPT"]},
        },
        jumps=[("nat", "POSTROUTING", f"{c} -j {post}"), ("filter", "FORWARD", f"{f} -j {fwd}")],
    )


def masquerade_rules(spec: LabSpec, node: Node) -> str:
    """iptables-restore input for flannel's chains (see masquerade_chains)."""
    return masquerade_chains(spec, node).text()
