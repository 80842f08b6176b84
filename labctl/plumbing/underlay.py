"""The underlay: a switch namespace with bridge br0, and one uplink per node or
external (eth0 inside the host, a port named after it on the switch).

Each function adds requests to a netlink Batch; nothing here sends them.
"""

from __future__ import annotations

from labctl import names
from labctl.kernel.nl import Batch

SWITCH_BRIDGE_INDEX = 2
HOST_ETH0_INDEX = 2  # eth0 of nodes and externals


def switch(b: Batch) -> None:
    """br0 in the switch namespace. No address: it is a plain L2 switch."""
    b.bridge(names.SWITCH_BRIDGE, index=SWITCH_BRIDGE_INDEX, up=True)


def uplink(b: Batch, lab: str, host: str, host_netns: str, host_netns_fd: int) -> None:
    """A veth from the switch (port on br0) to eth0 inside the host's namespace."""
    b.veth(
        names.switch_port(lab, host),
        "eth0",
        host_netns_fd,
        host_netns,
        peer_index=HOST_ETH0_INDEX,
        master=SWITCH_BRIDGE_INDEX,
        up=True,
    )


def host_address(b: Batch, ip: str, prefixlen: int) -> None:
    """Inside a node or external: lo and eth0 up, eth0's address on the node network."""
    b.link_up(index=1)
    b.addr(HOST_ETH0_INDEX, ip, prefixlen, "eth0")
    b.link_up(index=HOST_ETH0_INDEX)
