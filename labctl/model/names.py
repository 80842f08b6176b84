"""Names of every kernel object a lab owns, derived from the lab name and a
stable key, so the lab knows exactly what is its own. Pure.

Namespaces (listed by `ip netns list`):
    <lab>-underlay        the switch: a bridge joining every node and external
    <lab>-<node>          a node
    <lab>-<external>      an external host
    <lab>-<ns>.<pod>      a pod (Kubernetes namespaces have no dots, so this is unambiguous)

Interfaces (at most 15 characters, IFNAMSIZ - 1):
    node:   eth0, cni0, flannel.1 and veth<8 hex> per pod (like the CNI bridge plugin)
    pod:    eth0
    switch: br0, and one port per node or external, named after it when it fits
"""

from __future__ import annotations

import hashlib

IFNAMSIZ = 15
UNDERLAY = "underlay"
SWITCH_BRIDGE = "br0"
POD_BRIDGE = "cni0"
VXLAN_DEVICE = "flannel.1"
VXLAN6_DEVICE = "flannel-v6.1"  # flanneld's IPv6 VXLAN device (same VNI and port)
VXLAN_VNI = 1
VXLAN_PORT = 8472
NETNS_DIR = "/run/netns"
NETNS_NAME_MAX = 255


def _hex(key: str, n: int) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:n]


def underlay_netns(lab: str) -> str:
    return f"{lab}-{UNDERLAY}"


def node_netns(lab: str, node: str) -> str:
    return f"{lab}-{node}"


def external_netns(lab: str, ext: str) -> str:
    return f"{lab}-{ext}"


def pod_netns(lab: str, namespace: str, pod: str) -> str:
    return f"{lab}-{namespace}.{pod}"


def pod_veth(lab: str, namespace: str, pod: str) -> str:
    """Node-side end of a pod's veth: veth + 8 hex digits, as the CNI bridge plugin names them."""
    return "veth" + _hex(f"{lab}/{namespace}/{pod}", 8)


def switch_port(lab: str, host: str) -> str:
    """Switch-side end of a node's or external's uplink."""
    if len(host) <= IFNAMSIZ and host not in ("lo", SWITCH_BRIDGE):
        return host
    return "p" + _hex(f"{lab}/{host}", 10)


def vtep_mac(lab: str, node: str, six: bool = False) -> str:
    """flannel.1's (flannel-v6.1's) MAC: stable per lab and node, locally administered unicast."""
    return _mac(f"vtep6/{lab}/{node}" if six else f"vtep/{lab}/{node}")


def _mac(key: str) -> str:
    """A locally administered unicast MAC from a stable key."""
    b = bytearray(bytes.fromhex(_hex(key, 12)))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def host_mac(lab: str, host: str) -> str:
    """eth0's MAC on a node or external: stable per lab and host, so a host that leaves
    and comes back under its address is not hidden by a stale ARP entry of its peers."""
    return _mac(f"eth0/{lab}/{host}")


def bridge_mac(lab: str, host: str, bridge: str) -> str:
    """A bridge's MAC (cni0 on a node, br0 on the switch), fixed when it is made: a bridge
    without one takes the lowest MAC of its ports, and changes it when that port leaves,
    under the ARP caches of every pod that has it as its gateway."""
    return _mac(f"{bridge}/{lab}/{host}")


def daemon_key(node: str, daemon: str) -> str:
    """The journal's key for a node's daemon (an overlay's: bird)."""
    return f"daemon:node/{node}/{daemon}"


def external_command_key(external: str) -> str:
    """The journal's key for an external's command."""
    return f"cmd:ext/{external}"


def command_key(pod_key: str, container: str) -> str:
    """The journal's key for a container command's process."""
    return f"cmd:{pod_key}/{container}"


def lab_namespaces(topo) -> list[str]:
    """Every namespace a topology has: underlay, nodes, externals, pods."""
    lab = topo.lab.name
    out = [underlay_netns(lab)]
    out += [node_netns(lab, n.name) for n in topo.lab.nodes]
    out += [external_netns(lab, e.name) for e in topo.lab.externals]
    out += [pod_netns(lab, p.namespace, p.name) for p in topo.pods]
    return out
