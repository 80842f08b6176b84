"""The underlay: a switch namespace with bridge br0, and one uplink per node or
external (eth0 inside the host, a port named after it on the switch).

br0 holds the node network's first address: it stands for the network's
gateway, so nodes and externals have a default route as real hosts do (the
gateway forwards nothing: the lab has no way out). Each function adds
requests to a netlink Batch; nothing here sends them.
"""

from __future__ import annotations

import ipaddress

from labctl.kernel import ifindex
from labctl.kernel.nl import Batch
from labctl.model import names


def gateway(node_network: str) -> str:
    return str(ipaddress.ip_network(node_network).network_address + 1)


def default_route(network: str) -> str:
    return "::/0" if ipaddress.ip_network(network).version == 6 else "0.0.0.0/0"


def switch(b: Batch, lab: str, node_networks) -> None:
    """br0 in the switch namespace, with the gateway address of each family's node network."""
    b.bridge(names.SWITCH_BRIDGE, index=ifindex.fresh(b.netns, ifindex.BR0), mac=names.bridge_mac(lab, names.UNDERLAY, names.SWITCH_BRIDGE), up=True)
    index = ifindex.of(b.netns, ifindex.BR0, names.SWITCH_BRIDGE)
    for net in [node_networks] if isinstance(node_networks, str) else node_networks:
        b.addr(index, gateway(net), ipaddress.ip_network(net).prefixlen, names.SWITCH_BRIDGE)


def uplink(b: Batch, lab: str, host: str, host_netns: str, host_netns_fd: int) -> None:
    """A veth from the switch (port on br0) to eth0 inside the host's namespace."""
    b.veth(
        names.switch_port(lab, host),
        "eth0",
        host_netns_fd,
        host_netns,
        peer_index=ifindex.fresh(host_netns, ifindex.ETH0),
        peer_mac=names.host_mac(lab, host),
        master=ifindex.of(b.netns, ifindex.BR0, names.SWITCH_BRIDGE),
        up=True,
    )


def host_address(b: Batch, ip: str, node_network: str) -> None:
    """Inside a node or external: lo and eth0 up, eth0's address, the default route."""
    b.link_up(index=1)
    eth0 = ifindex.of(b.netns, ifindex.ETH0, "eth0")
    b.addr(eth0, ip, ipaddress.ip_network(node_network).prefixlen, "eth0")
    b.link_up(index=eth0)
    b.route(default_route(node_network), gateway=gateway(node_network), dev="eth0")


def host_addresses(b: Batch, spec, host) -> None:
    """host_address for each family of the lab (a node's or external's address in it)."""
    from labctl.model import family

    for fam in family.lab_families(spec):
        view = family.spec_view(spec, fam)
        ip = family.address(host, fam)
        if ip:
            host_address(b, ip, view.node_network)
