"""Cross-node pod traffic: flannel's vxlan and host-gw backends.

Each backend module offers device(batch, spec, node), peer(batch, spec,
local, remote) and remove_peer(...), adding netlink requests to a batch.
"""

from __future__ import annotations

from types import ModuleType

from labctl.overlay import hostgw, vxlan

BACKENDS: dict[str, ModuleType] = {vxlan.NAME: vxlan, hostgw.NAME: hostgw}


def backend(name: str) -> ModuleType:
    return BACKENDS[name]
