"""The capabilities a lab chooses by name, each one module: a proxy mode, an
overlay, a system add-on. Adding one is writing its module and one line here.

The model validates the names a Lab gives against these tables and never
imports the modules (it stays pure); labctl.registry loads them when a lab is
built. Each module holds one object: MODE (labctl.proxy.mode.ProxyMode),
OVERLAY (labctl.overlay.base.Overlay) or ADDON (labctl.addons.base.AddOn),
whose `name` is its key here.
"""

from __future__ import annotations

PROXY_MODES = {
    "iptables": "labctl.proxy.iptables",
    "nftables": "labctl.proxy.nftables",
    "ipvs": "labctl.proxy.ipvs",
    "ebpf": "labctl.proxy.ebpf",
}

OVERLAYS = {
    "vxlan": "labctl.overlay.vxlan",
    "host-gw": "labctl.overlay.hostgw",
    "bgp": "labctl.overlay.bgp",
    "ipip": "labctl.overlay.ipip",
}

ADDONS = {
    "dns": "labctl.addons.dns",
    "ingress": "labctl.addons.ingress",
    "gateway": "labctl.addons.gateway",
}
