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
from labctl.model import family
from labctl.model.objects import LabSpec, Node
from labctl.overlay.base import Daemon, Overlay

DEFAULT_AS = 64512
CONVERGE_TIMEOUT = 30.0  # bounded wait for every session and route (the stock-kernel VM is slow)


def peer_name(node: Node) -> str:
    """A BIRD protocol name for a peer: letters, digits and '_'."""
    return "node_" + "".join(c if c.isalnum() else "_" for c in node.name)


def router_id(spec: LabSpec, node: Node) -> str:
    """BIRD's router id: the node's IPv4 address; in an IPv6-only lab (a router id is 32
    bits) the last 32 bits of its IPv6 address, unique on the node network's /64 or longer."""
    v4 = family.address(node, 4)
    if v4:
        return v4
    v6 = family.address(node, 6) or node.ip
    return str(ipaddress.IPv4Address(int(ipaddress.IPv6Address(v6)) & 0xFFFFFFFF))


def config(spec: LabSpec, node: Node, socket_path: str, tunnel: str | None = None) -> str:
    """bird.conf of one node: Calico's full mesh (timers from its bird.cfg.template,
    a lab-sized hold time), the node's pod CIDR announced, BGP routes into the kernel
    (`tunnel`: through that device, `via <node> dev tunl0 onlink`, as Calico's
    krt_tunnel writes them). In a lab with IPv6, each family has its own sessions
    between the nodes' addresses of that family (as calico-node peers per family), its
    own channel and kernel protocol; the first family's protocols keep the plain names."""
    assert node.ip and node.pod_cidr
    asn = spec.bgp_as or DEFAULT_AS
    fams = family.lab_families(spec)
    channels = " ".join(f"ipv{f};" for f in fams)
    out = [
        f"# bird.conf of node {node.name} in lab {spec.name}, rendered by labctl: Calico-style full-mesh iBGP",
        f"# control socket: {socket_path} (labctl exec node/{node.name} -- birdc ... uses it)",
        f"router id {router_id(spec, node)};",
        "log stderr all;",
        "",
        "protocol device { scan time 10; }",
        "",
        "# the node's pod CIDR" + ("s" if len(fams) > 1 else "") + ": cni0's subnet" + ("s" if len(fams) > 1 else ""),
        f'protocol direct {{ {channels} interface "cni0"; }}',
    ]
    for i, fam in enumerate(fams):
        view = family.spec_view(spec, fam)
        me = family.host_view(spec, node, fam)
        suffix = "" if i == 0 else f"_v{fam}"
        out += ["", *_kernel_protocol(tunnel, fam), "", *_template(me, asn, fam, suffix)]
        mine = ipaddress.ip_address(me.ip)
        for peer in view.nodes:
            if peer.name == node.name or not peer.ip:
                continue
            passive = ipaddress.ip_address(peer.ip) > mine  # Calico's mesh: one side connects, the higher address
            out.append("")
            out.append(f"protocol bgp {peer_name(peer)}{suffix} from mesh{suffix} {{")
            out.append(f'    description "node {peer.name}";')
            out.append(f"    neighbor {peer.ip} as {asn};")
            if passive:
                out.append("    passive on;  # the higher address connects (Calico's unidirectional mesh)")
            out.append("}")
    return "\n".join(out) + "\n"


def _template(me: Node, asn: int, fam: int, suffix: str) -> list[str]:
    return [
        f"template bgp mesh{suffix} {{",
        "    debug { states, events };  # sessions connecting and changing state, in the daemon's log",
        f"    local {me.ip} as {asn};",
        "    direct;  # the peers share the node network (iBGP would be multihop)",
        "    connect delay time 1;  # Calico's; bird waits 0.75-1 s before its first connect (RFC 4271's jitter)",
        "    connect retry time 1;  # Calico: 3 s; a lab retries at once (a peer still starting refuses the first try)",
        "    error wait time 5, 60;",
        "    hold time 6;  # a lab-sized hold time (bird's default is 240 s): a lost node's routes go in seconds",
        "    keepalive time 2;",
        f"    ipv{fam} {{",
        "        gateway direct;  # next hops are on the node network",
        "        import all;",
        f"        export filter {{ if net = {me.pod_cidr} then accept; reject; }};",
        "    };",
        "}",
    ]


def _kernel_protocol(tunnel: str | None, fam: int = 4) -> list[str]:
    if not tunnel:
        return [
            f"# routes learned over BGP go into the kernel's main table (proto bird, metric 32){' (IPv6)' if fam == 6 else ''}",
            "protocol kernel {",
            f"    ipv{fam} {{ import none; export filter {{ if source = RTS_BGP then accept; reject; }}; }};",
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


def learned(ns: str, families: tuple[int, ...] = (4,)) -> set[str]:
    """The prefixes bird installed in a node's main table (of these families)."""
    out: set[str] = set()
    for fam in families:
        p = subprocess.run(["ip", "-n", ns, "-j", f"-{fam}", "route", "show", "proto", "bird"], capture_output=True, text=True)
        if p.returncode == 0:
            out |= {r["dst"] for r in json.loads(p.stdout or "[]") if r.get("type", "unicast") == "unicast"}
    return out


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
        fams = family.lab_families(spec)
        by_family = {
            family.name(f): {r.name: states.get(peer_name(r) + ("" if i == 0 else f"_v{f}"), "down") for r in spec.nodes if r.name != node.name}
            for i, f in enumerate(fams)
        }
        out = {"peers": by_family[family.name(fams[0])], "as": spec.bgp_as or DEFAULT_AS, "routerId": router_id(spec, node), "socket": str(sock)}
        if len(fams) > 1:
            out["peersByFamily"] = by_family  # each family's own sessions
        return out

    def wait_converged(self, spec: LabSpec, netns_of, dead) -> None:
        """Every node has every other node's pod CIDR from bird (bounded; the error names
        the node and the routes it lacks). `dead()`: a daemon that exited, and why."""
        from labctl.errors import LabError

        fams = family.lab_families(spec)
        wanted = {n.name: {c for r in spec.nodes if r.name != n.name for c in (r.pod_cidrs or (r.pod_cidr,)) if c} for n in spec.nodes}
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        pending = dict(wanted)
        while pending:
            for name in list(pending):
                missing = pending[name] - learned(netns_of(name), fams)
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
