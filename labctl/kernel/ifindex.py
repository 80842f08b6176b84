"""Where labctl's own devices sit in a namespace's interface index space.

A link made with a chosen index needs no round trip to learn it, so labctl's
netlink batches give the devices of a namespace it has just made fixed slots:

    slot 1: eth0 (nodes, externals, pods), br0 (the switch)
    slot 2: cni0 (nodes)
    slot 3: flannel.1 (nodes, vxlan)
    slot 4: flannel-v6.1 (nodes, vxlan, a lab with IPv6)

A fresh namespace holds lo (index 1) and, on a host where tunnel modules are
loaded (ipip, ip_gre, sit, ip6_tunnel...), their fallback devices (tunl0,
gre0, sit0, ...) at 2, 3 and on. Slot k is at BASE + k, BASE being the highest
index of a fresh namespace: 1 on most hosts, so eth0 is 2 as on a real node;
more after `modprobe ipip` (an `overlay: ipip` lab loads it).

BASE is read in each namespace as this process makes it (a module loaded
meanwhile changes it; reading it costs about 20 us). A namespace made by an
earlier run (a running lab gaining pods or switching overlays) is asked for
its devices by name instead.
"""

from __future__ import annotations

import socket

ETH0, BR0, CNI0, VXLAN, VXLAN6 = 1, 1, 2, 3, 4

_bases: dict[str, int] = {}  # namespaces this process made -> their highest index then


def note_created(name: str, highest: int | None = None) -> None:
    """Called inside a namespace just made (the calling thread is in it); `highest`
    given: what it held (a rendering test's namespace that does not exist)."""
    _bases[name] = highest if highest is not None else max(i for i, _ in socket.if_nameindex())


def forget(name: str) -> None:
    _bases.pop(name, None)


def fresh(netns: str | None, slot: int) -> int:
    """The index to make a device at in `netns`: its slot when this process made the
    namespace (nothing of labctl's is in it yet), else 0 (the kernel chooses)."""
    base = _bases.get(netns) if netns is not None else None
    return base + slot if base is not None else 0


def of(netns: str | None, slot: int, device: str) -> int:
    """The index of labctl's `device` (at `slot` when made) in `netns`: computed for a
    namespace this process made (the device may still be in an unsent batch), else
    asked of the kernel. Raises LabError when the device is not there."""
    index = fresh(netns, slot)
    if index:
        return index
    return lookup(netns, device)


def lookup(netns: str | None, device: str) -> int:
    from labctl.errors import LabError
    from labctl.kernel import netns as ns_mod

    try:
        with ns_mod.entered(netns):
            return socket.if_nametoindex(device)
    except OSError:
        where = f" in namespace {netns}" if netns else ""
        raise LabError(f"no device {device}{where}", hint="`labctl up` with the lab's file puts back what is missing") from None
