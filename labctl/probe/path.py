"""The kernel's path around the rules a trace saw: where the packet came into each
namespace, the route the kernel chose, conntrack's record, encapsulation and
delivery.

The netfilter monitors print, with every packet, the devices it came in on and
goes out of (iptables' IN= and OUT=, nft's iif and oif), its MAC source and its
addresses at that hook: the kernel's own routing decision. `expand` turns those
into the contract's route / bridge / conntrack / ipvs / encap / decap / deliver /
drop hops, asking each namespace's kernel the rest through a `View`: the FIB
entry that matched (`ip route get fibmatch`), the bridge port or VXLAN peer
that holds a MAC (the FDB), the neighbour's MAC, a VXLAN device's VNI, port and
local address, the conntrack entry of the probe's flow and IPVS's connection.
`expand` and the parsers are pure (the view is all the kernel they see); `View`
is the side effect, each question asked once per namespace.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cached_property
from typing import Any, Callable

_HEX_MAC = re.compile(r"^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$")


def mac(text: str | None) -> str | None:
    """xtables-monitor prints MACs without leading zeros (a:58:a:f4:0:3)."""
    if not text or not _HEX_MAC.match(text):
        return None
    return ":".join(part.zfill(2) for part in text.lower().split(":"))


def conntrack_entry(line: str) -> dict[str, Any] | None:
    """One `conntrack -L` line: its state and the original and reply tuples."""
    tokens = line.split()
    if len(tokens) < 4:
        return None
    tuples: list[dict[str, str]] = [{}, {}]
    i = 0
    for tok in tokens[3:]:
        k, sep, v = tok.partition("=")
        if sep and k in ("src", "dst", "sport", "dport"):
            if k in tuples[i] and i == 0:
                i = 1
            tuples[i][k] = v
    state = tokens[3] if "=" not in tokens[3] else ""
    if not tuples[0] or not tuples[1]:
        return None
    flags = [t.strip("[]") for t in tokens if t.startswith("[")]
    return {"state": state, "original": tuples[0], "reply": tuples[1], "flags": flags}


def _ep(t: dict[str, str], side: str) -> str:
    port = t.get("sport" if side == "src" else "dport")
    return f"{t.get(side)}:{port}" if port else t.get(side, "")


def ipvs_connection(listing: str, sport: int) -> dict[str, str] | None:
    """The probe's line of `ipvsadm -Lnc`: TCP 00:59 SYN_RECV client virtual real."""
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[3].rsplit(":", 1)[-1] == str(sport):
            return {"proto": parts[0], "state": parts[2], "client": parts[3], "virtual": parts[4], "real": parts[5]}
    return None


class View:
    """One namespace's kernel, asked lazily and once per question."""

    def __init__(self, ns: str):
        self.ns = ns

    def _run(self, *argv: str) -> str:
        p = subprocess.run(argv, capture_output=True, text=True)
        return p.stdout if p.returncode == 0 else ""

    @cached_property
    def links(self) -> dict[str, dict[str, Any]]:
        out = {}
        for link in json.loads(self._run("ip", "-n", self.ns, "-j", "-d", "link", "show") or "[]"):
            info = link.get("linkinfo") or {}
            out[link["ifname"]] = {"kind": info.get("info_kind", ""), "data": info.get("info_data") or {}, "master": link.get("master")}
        return out

    @cached_property
    def fdb(self) -> list[dict[str, Any]]:
        return json.loads(self._run("bridge", "-n", self.ns, "-j", "fdb", "show") or "[]")

    @cached_property
    def neighbours(self) -> list[dict[str, Any]]:
        return json.loads(self._run("ip", "-n", self.ns, "-j", "neigh", "show") or "[]")

    def kind(self, dev: str | None) -> str:
        return (self.links.get(dev or "") or {}).get("kind", "")

    def vxlan(self, dev: str) -> dict[str, Any]:
        return (self.links.get(dev) or {}).get("data", {})

    def port_of(self, bridge: str, hw: str | None) -> str | None:
        """The bridge port that holds a MAC (the FDB's learned or static entry)."""
        return next((e["ifname"] for e in self.fdb if e.get("mac") == hw and e.get("master") == bridge and e.get("ifname") != bridge), None)

    def peer_of(self, dev: str, hw: str | None) -> str | None:
        """The remote address a VXLAN device sends a MAC's frames to."""
        return next((e.get("dst") for e in self.fdb if e.get("ifname") == dev and e.get("mac") == hw and e.get("dst")), None)

    def neighbour(self, dev: str, ip: str | None) -> str | None:
        return next((e.get("lladdr") for e in self.neighbours if e.get("dev") == dev and e.get("dst") == ip), None) if ip else None

    def fibmatch(self, dst: str) -> str:
        return " ".join(self._run("ip", "-n", self.ns, "route", "get", "fibmatch", dst).split())

    def conntrack(self, proto: str, sport: int) -> str:
        p = subprocess.run(["ip", "netns", "exec", self.ns, "conntrack", "-L", "-p", proto, "--orig-port-src", str(sport)], capture_output=True, text=True)
        return p.stdout.strip().splitlines()[0] if p.stdout.strip() else ""

    def ipvs(self) -> str:
        return self._run("ip", "netns", "exec", self.ns, "ipvsadm", "-Lnc")

    pins = None  # the ebpf mode: the node's pinned maps' directory

    def bpf_connection(self, sport: int) -> dict | None:
        """The probe's connection in the node's BPF conntrack (ebpf mode)."""
        if self.pins is None:
            return None
        from labctl.proxy.bpfmaps import connection

        return connection(self.bpf_ct, sport)

    @cached_property
    def bpf_ct(self) -> list[dict]:
        """The node's ct4, dumped once (the request's and the reply's hops both read it)."""
        from labctl.proxy.bpfmaps import ct_entries

        return ct_entries(json.loads(self._run("bpftool", "-j", "map", "dump", "pinned", f"{self.pins}/ct4") or "[]"))


def _gateway(route: str) -> str | None:
    m = re.search(r"\bvia (\S+)", route)
    return m.group(1) if m else None


def expand(
    hops: list[dict[str, Any]], view: View, name: Callable[[str | None], str | None], proto: str, sport: int, ipvs: bool = False
) -> list[dict[str, Any]]:
    """One namespace's parsed hops with the monitors' packet marks ("_in", "_route",
    "_out") replaced by the path hops the kernel can vouch for. `name(ip)` says
    which place of the lab holds an address (default/web-1, node/node2, ext/client)."""
    out: list[dict[str, Any]] = []
    where = next((h["netns"] for h in hops), "")
    ct = None
    dropped: set[str] = set()
    routes: dict[str, str] = {}
    snat: dict[str, str] = {}  # direction -> the source a masquerade gave it here
    for h in hops:
        kind, d = h["kind"], h["direction"]
        f = h.get("fields") or {}
        base = {"netns": where, "direction": d}
        if kind == "netfilter":
            nat = h.get("nat") or {}
            if ct and d == "request" and nat and not nat.get("after"):
                # a rewrite seen last in this namespace: conntrack's reply tuple says what it wrote
                after = _ep(ct["reply"], "src" if nat["field"] == "dst" else "dst")
                nat["after"] = after if after != nat["before"] else None
            if nat.get("after") and nat["field"] == "src":
                snat[d] = nat["after"].rsplit(":", 1)[0]
            out.append(h)
            if h["verdict"].upper() in ("DROP", "REJECT"):
                dropped.add(d)
                out.append({**base, "kind": "drop", "detail": f"{h['table']} {h['chain']}: {h['verdict'].lower()}", "verdict": h["verdict"]})
            continue
        if kind == "_in":
            out += _ingress(base, f, view, name)
            if d == "request":
                out += bpf_hops(where, view, sport, f.get("IN"))
            if ct is None:
                ct = conntrack_entry(view.conntrack(proto, sport)) or {}
            if ct and d == "request":
                out.append({**base, "kind": "conntrack", "detail": _ct_text(ct)})
            if ct and d == "reply":  # the request's masquerade undone as the reply comes in
                out += _unnat(base, ct, "dst")
        elif kind == "_route":
            if ipvs and d == "request":
                conn = ipvs_connection(view.ipvs(), sport)
                if conn:
                    out.append(
                        {
                            **base,
                            "kind": "ipvs",
                            "detail": f"{conn['proto']} {conn['state']} {conn['client']} -> {conn['virtual']} -> {conn['real']}",
                            "nat": {"field": "dst", "before": conn["virtual"], "after": conn["real"]},
                        }
                    )
            route = view.fibmatch(f.get("DST", ""))
            out.append({**base, "kind": "route", "detail": f"{f.get('DST')} -> {route or '(no route)'}", "dev": f.get("OUT"), "gateway": _gateway(route)})
            routes[d] = route
        elif kind == "_out" and d not in dropped:
            if d == "reply" and ct:
                out += _unnat(base, ct, "src")
            if d == "reply":
                c = view.bpf_connection(sport)
                if c is not None:
                    out_dev = f.get("OUT")
                    prog = "to_container" if view.kind(out_dev) == "bridge" else f"from_host ({out_dev} egress)" if out_dev else "to_host"
                    out.append(
                        {
                            **base,
                            "kind": "bpf",
                            "detail": f"{prog}: the reply's source {c['backend']} -> {c['frontend']} (ct4, lb4_revnat)",
                            "nat": {"field": "src", "before": c["backend"], "after": c["frontend"]},
                        }
                    )
            out += _egress(base, {**f, "SRC": snat.get(d, f.get("SRC", ""))}, routes.get(d, ""), view, name)
    return out


def bpf_hops(where: str, view: View, sport: int, came_in: str | None = "eth0") -> list[dict[str, Any]]:
    """The ebpf mode's translation of the probe in this node, from its BPF conntrack
    (the program rewrote the packet before netfilter saw it): the DNAT, and the
    SNAT to the node when the backend is on another node. `came_in`: the device
    the monitors first saw the packet on (none: the node sent it)."""
    c = view.bpf_connection(sport)
    if c is None:
        return []
    if c["host"] or not came_in:
        prog = "from_host (eth0 egress)"
    elif view.kind(came_in) == "bridge":
        prog = "from_container (the pod's veth, ingress)"
    else:
        prog = f"from_netdev ({came_in} ingress)"
    hops = [
        {
            "netns": where,
            "direction": "request",
            "kind": "bpf",
            "detail": f"{prog}: {c['client']} -> {c['frontend']} -> backend {c['backend']} (lb4_services, backend id {c['backendId']}, kept in ct4)",
            "nat": {"field": "dst", "before": c["frontend"], "after": c["backend"]},
        }
    ]
    if c["source"] != c["client"]:
        hops.append(
            {
                "netns": where,
                "direction": "request",
                "kind": "bpf",
                "detail": f"{prog}: source {c['client']} -> {c['source']}",
                "nat": {"field": "src", "before": c["client"], "after": c["source"]},
            }
        )
    return hops


def _ct_text(ct: dict[str, Any]) -> str:
    o, r = ct["original"], ct["reply"]
    flags = f" [{', '.join(ct['flags'])}]" if ct.get("flags") else ""
    return f"{ct['state'] or 'entry'}{flags}: original {_ep(o, 'src')} -> {_ep(o, 'dst')}, reply {_ep(r, 'src')} -> {_ep(r, 'dst')}"


def _unnat(base: dict, ct: dict[str, Any], field: str) -> list[dict[str, Any]]:
    """The reply's rewrite that undoes the request's NAT: its source back to the
    address the client asked for (after a DNAT), its destination back to the
    client (after a masquerade)."""
    o, r = ct["original"], ct["reply"]
    before, after = (_ep(r, "src"), _ep(o, "dst")) if field == "src" else (_ep(r, "dst"), _ep(o, "src"))
    if before == after:
        return []
    why = "the DNAT undone" if field == "src" else "the masquerade undone"
    return [{**base, "kind": "conntrack", "detail": f"{why}: {field} {before} -> {after}", "nat": {"field": field, "before": before, "after": after}}]


# Tunnel devices by the kernel's link kind: (outer header when a packet comes in
# from a peer's MAC, outer header when it leaves toward a gateway, the header's name).


def _vxlan_in(view: View, dev: str, peer_mac: str | None) -> dict[str, Any]:
    data = view.vxlan(dev)
    return {"src": view.peer_of(dev, peer_mac), "dst": data.get("local"), "dport": data.get("port"), "vni": data.get("id")}


def _vxlan_out(view: View, dev: str, gateway: str | None) -> dict[str, Any]:
    data = view.vxlan(dev)
    return {"src": data.get("local"), "dst": view.peer_of(dev, view.neighbour(dev, gateway)), "dport": data.get("port"), "vni": data.get("id")}


def _ipip_in(view: View, dev: str, peer_mac: str | None) -> dict[str, Any]:
    return {"src": None, "dst": None, "dport": None, "vni": None}  # no MAC says who sent it


def _ipip_out(view: View, dev: str, gateway: str | None) -> dict[str, Any]:
    return {"src": None, "dst": gateway, "dport": None, "vni": None}  # onlink: the gateway is the peer node


TUNNELS = {"vxlan": (_vxlan_in, _vxlan_out, "VXLAN"), "ipip": (_ipip_in, _ipip_out, "IP-in-IP")}


def _outer_text(o: dict[str, Any]) -> str:
    extra = f":{o['dport']} vni {o['vni']}" if o.get("dport") else ""
    return f"{o.get('src') or '?'} -> {o.get('dst') or '?'}{extra}"


def _ingress(base: dict, f: dict[str, str], view: View, name) -> list[dict[str, Any]]:
    dev = f.get("IN")
    if not dev:
        return []
    kind = view.kind(dev)
    if kind in TUNNELS:
        read, _, header = TUNNELS[kind]
        outer = read(view, dev, mac(f.get("MACSRC")))
        who = name(outer["src"]) or outer["src"] or "a peer"
        detail = f"{dev}: {header} from {who} ({_outer_text(outer)}), inner {f.get('SRC')} -> {f.get('DST')}"
        return [{**base, "kind": "decap", "detail": detail, "dev": dev, "outer": outer}]
    if kind == "bridge":
        port = view.port_of(dev, mac(f.get("MACSRC")))
        who = name(f.get("SRC")) or f.get("SRC")
        return [{**base, "kind": "bridge", "detail": f"{who} -> {port or '?'} -> {dev}", "dev": dev, "port": port}]
    return []


def _egress(base: dict, f: dict[str, str], route: str, view: View, name) -> list[dict[str, Any]]:
    dev, dst = f.get("OUT"), f.get("DST")
    target = f"{dst}:{f['DPORT']}" if f.get("DPORT") else str(dst)
    if not dev:
        return [{**base, "kind": "deliver", "detail": f"to {base['netns']} itself ({target})"}]
    kind = view.kind(dev)
    if kind in TUNNELS:
        _, write, header = TUNNELS[kind]
        outer = write(view, dev, _gateway(route))
        detail = f"{dev}: inner {f.get('SRC')} -> {dst} in {header} {_outer_text(outer)} (to {name(outer['dst']) or outer['dst']})"
        return [{**base, "kind": "encap", "detail": detail, "dev": dev, "outer": outer}]
    who = name(dst)
    if kind == "bridge":
        port = view.port_of(dev, view.neighbour(dev, dst))
        detail = f"{base['netns']} {dev} -> {port or '?'} -> eth0 ({target})"
        return [{"netns": who or base["netns"], "direction": base["direction"], "kind": "deliver", "detail": detail, "port": port}]
    if who and not who.startswith("node/") and "/" in who and _gateway(route) is None:
        return [{"netns": who, "direction": base["direction"], "kind": "deliver", "detail": f"{base['netns']} {dev} -> {who} ({target})"}]
    return []


def order(by_node: dict[str, list[dict[str, Any]]], direction: str, first: str | None, node_ips: dict[str, str]) -> list[str]:
    """The nodes a direction crossed, in the order it crossed them: from the one it
    entered from outside (a pod, an external, the node itself) along each node's
    encapsulation or route to the next node's address."""
    seen = [n for n, hops in by_node.items() if any(h["direction"] == direction for h in hops)]
    owner = {ip: n for n, ip in node_ips.items()}
    nxt: dict[str, str] = {}
    for n in seen:
        for h in by_node[n]:
            if h["direction"] != direction:
                continue
            to = (h.get("outer") or {}).get("dst") if h["kind"] == "encap" else h.get("gateway") if h["kind"] == "route" else None
            if to in owner and owner[to] != n and owner[to] in seen:
                nxt[n] = owner[to]
            came = (h.get("outer") or {}).get("src") if h["kind"] == "decap" else None
            if came in owner and owner[came] != n and owner[came] in seen:
                nxt.setdefault(owner[came], n)
    pointed = set(nxt.values())
    starts = [n for n in seen if n not in pointed]
    starts.sort(key=lambda n: n != first)
    out: list[str] = []
    for s in starts or seen[:1]:
        n: str | None = s
        while n is not None and n not in out:
            out.append(n)
            n = nxt.get(n)
    return out + [n for n in seen if n not in out]
