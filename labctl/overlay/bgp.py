"""Calico's BGP networking: no encapsulation, and no route written by labctl. Each
node runs a real BGP daemon (Debian's bird2, as Calico's calico-node runs BIRD)
inside its namespace; the nodes form a full mesh of iBGP sessions (AS 64512,
Calico's default), each announces its pod CIDR (cni0's subnet), and each kernel
learns the others' as

    10.244.1.0/24 via 10.10.20.11 dev eth0 proto bird metric 32

`labctl exec node/NAME -- birdc show protocols` talks to that node's bird.
Rendering is pure here; labctl.build starts, reconfigures and waits for the
daemons (Overlay.daemon).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from pathlib import Path

from labctl.kernel.nl import Batch
from labctl.model.objects import LabSpec, Node
from labctl.overlay.base import Daemon, Overlay

DEFAULT_AS = 64512
CONVERGE_TIMEOUT = 30.0  # bounded wait for every session and route (the stock-kernel VM is slow)


def peer_name(node: Node) -> str:
    """A BIRD protocol name for a peer: letters, digits and '_'."""
    return "node_" + "".join(c if c.isalnum() else "_" for c in node.name)


def config(spec: LabSpec, node: Node, socket_path: str, tunnel: str | None = None) -> str:
    """bird.conf of one node: Calico's full mesh (timers from its bird.cfg.template,
    a lab-sized hold time), the node's pod CIDR announced, BGP routes into the kernel
    (`tunnel`: through that device, `via <node> dev tunl0 onlink`, as Calico's
    krt_tunnel writes them)."""
    assert node.ip and node.pod_cidr
    asn = spec.bgp_as or DEFAULT_AS
    out = [
        f"# bird.conf of node {node.name} in lab {spec.name}, rendered by labctl: Calico-style full-mesh iBGP",
        f"# control socket: {socket_path} (labctl exec node/{node.name} -- birdc ... uses it)",
        f"router id {node.ip};",
        "log stderr all;",
        "",
        "protocol device { scan time 10; }",
        "",
        "# the node's pod CIDR: cni0's subnet",
        'protocol direct { ipv4; interface "cni0"; }',
        "",
        *_kernel_protocol(tunnel),
        "",
        "template bgp mesh {",
        "    debug { states, events };  # sessions connecting and changing state, in the daemon's log",
        f"    local {node.ip} as {asn};",
        "    direct;  # the peers share the node network (iBGP would be multihop)",
        "    connect delay time 1;  # Calico's; bird waits 0.75-1 s before its first connect (RFC 4271's jitter)",
        "    connect retry time 1;  # Calico: 3 s; a lab retries at once (a peer still starting refuses the first try)",
        "    error wait time 5, 60;",
        "    hold time 6;  # a lab-sized hold time (bird's default is 240 s): a lost node's routes go in seconds",
        "    keepalive time 2;",
        "    ipv4 {",
        "        gateway direct;  # next hops are on the node network",
        "        import all;",
        f"        export filter {{ if net = {node.pod_cidr} then accept; reject; }};",
        "    };",
        "}",
    ]
    me = ipaddress.IPv4Address(node.ip)
    for peer in spec.nodes:
        if peer.name == node.name or not peer.ip:
            continue
        passive = ipaddress.IPv4Address(peer.ip) > me  # Calico's mesh: one side connects, the higher address
        out.append("")
        out.append(f"protocol bgp {peer_name(peer)} from mesh {{")
        out.append(f'    description "node {peer.name}";')
        out.append(f"    neighbor {peer.ip} as {asn};")
        if passive:
            out.append("    passive on;  # the higher address connects (Calico's unidirectional mesh)")
        out.append("}")
    return "\n".join(out) + "\n"


def _kernel_protocol(tunnel: str | None) -> list[str]:
    if not tunnel:
        return [
            "# routes learned over BGP go into the kernel's main table (proto bird, metric 32)",
            "protocol kernel {",
            "    ipv4 { import none; export filter { if source = RTS_BGP then accept; reject; }; };",
            "}",
        ]
    return [
        f"# routes learned over BGP go into the kernel's main table through {tunnel}, the next hop",
        "# (the peer node) as the outer destination: `via <node> dev tunl0 onlink proto bird`",
        "protocol kernel {",
        "    ipv4 {",
        "        import none;",
        "        export filter {",
        "            if source != RTS_BGP then reject;",
        f'            ifname = "{tunnel}";  # (this drops the gateway: set it again after)',
        "            onlink = true;",
        "            gw = bgp_next_hop;",
        "            accept;",
        "        };",
        "    };",
        "}",
    ]


def learned(ns: str) -> set[str]:
    """The prefixes bird installed in a node's main table."""
    p = subprocess.run(["ip", "-n", ns, "-j", "-4", "route", "show", "proto", "bird"], capture_output=True, text=True)
    if p.returncode != 0:
        return set()
    return {r["dst"] for r in json.loads(p.stdout or "[]") if r.get("type", "unicast") == "unicast"}


def sessions(socket_path: str) -> dict[str, str] | None:
    """BIRD protocol name -> BGP state (Established, Active, Connect, ...), from
    `birdc show protocols`; None when the daemon does not answer."""
    try:
        p = subprocess.run(["birdc", "-s", socket_path, "show", "protocols"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0 or "ready" not in p.stdout:
        return None
    out = {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[1] == "BGP":
            out[parts[0]] = parts[5] if len(parts) > 5 else parts[3]  # Info: the BGP state
    return out


class Bgp(Overlay):
    name = "bgp"
    status_key = "bgp"
    daemon = Daemon("bird", package="bird2", program="bird", client="birdc")

    def require(self, spec: LabSpec) -> None:
        from labctl.kernel import run

        run.require("bird", "bird2")
        run.require("birdc", "bird2")

    def peer(self, b: Batch, spec: LabSpec, local: Node, remote: Node) -> None:
        """Nothing: bird learns the route."""

    def remove_peer(self, b: Batch, spec: LabSpec, local: Node, remote: Node) -> None:
        """Nothing: bird withdraws the route when the session goes (its config drops the peer)."""

    def leave(self, b: Batch, spec: LabSpec, node: Node) -> None:
        """Nothing in the kernel: bird, stopped with SIGTERM, withdraws and deletes its routes."""

    def node_source_ip(self, spec: LabSpec, node: Node) -> str:
        assert node.ip
        return node.ip

    def daemon_config(self, spec: LabSpec, node: Node, socket_path: str) -> str:
        return config(spec, node, socket_path)

    def daemon_argv(self, conf: Path, socket_path: Path) -> list[str]:
        return ["bird", "-f", "-c", str(conf), "-s", str(socket_path)]

    def daemon_reload_argv(self, socket_path: Path) -> list[str]:
        return ["birdc", "-s", str(socket_path), "configure"]

    def node_status(self, spec: LabSpec, node: Node, labdir: Path) -> dict | None:
        """{"peers": {node: BGP state}, "as", "routerId", "socket"} ("down": bird does not answer)."""
        sock = labdir / self.daemon.name / node.name / f"{self.daemon.name}.ctl"
        states = sessions(str(sock)) or {}
        peers = {r.name: states.get(peer_name(r), "down") for r in spec.nodes if r.name != node.name}
        return {"peers": peers, "as": spec.bgp_as or DEFAULT_AS, "routerId": node.ip, "socket": str(sock)}

    def wait_converged(self, spec: LabSpec, netns_of, dead) -> None:
        """Every node has every other node's pod CIDR from bird (bounded; the error names
        the node and the routes it lacks). `dead()`: a daemon that exited, and why."""
        from labctl.errors import LabError

        wanted = {n.name: {r.pod_cidr for r in spec.nodes if r.name != n.name} for n in spec.nodes}
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        pending = dict(wanted)
        while pending:
            for name in list(pending):
                missing = pending[name] - learned(netns_of(name))
                if missing:
                    pending[name] = missing
                else:
                    del pending[name]
            if not pending:
                return
            gone = dead()
            if gone:
                raise LabError(f"bird exited on node {gone[0]}: {gone[1]}", hint="see its log under the lab's logs/")
            if time.monotonic() > deadline:
                what = "; ".join(f"node {n} lacks {', '.join(sorted(m))}" for n, m in sorted(pending.items()))
                raise LabError(f"BGP did not converge in {CONVERGE_TIMEOUT:.0f} s: {what}", hint="labctl exec node/NAME -- birdc show protocols all")
            time.sleep(0.02)


OVERLAY = Bgp()
