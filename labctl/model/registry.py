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

# Capabilities built for IPv4 alone: a Lab with IPv6 in spec.ipFamilies choosing one is
# refused (exit 2) with the reason, rather than built half-way.
IPV4_ONLY = {
    "ebpf": "the eBPF datapath's programs and maps are IPv4's (lb4_*, ct4)",
    "ipip": "IP-in-IP (tunl0) carries IPv4 (Calico routes IPv6 without it: use overlay bgp)",
}

ADDONS = {
    "dns": "labctl.addons.dns",
    "ingress": "labctl.addons.ingress",
    "gateway": "labctl.addons.gateway",
}
