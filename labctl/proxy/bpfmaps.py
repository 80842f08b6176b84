"""The eBPF mode's maps as data (pure): what a node's lb4_services, lb4_backends and
lb4_revnat should hold for its service ports, the byte layout of their keys and
values (labctl/proxy/bpf/lb.c's structs), the `bpftool batch` lines that bring
the maps from one content to another, and the decoding `labctl bpf lb list`
prints (as `cilium bpf lb list` does).

Backend ids and rev-NAT indexes are kept stable across syncs in the node's
record (conntrack entries name them): a new backend gets the lowest free id.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from dataclasses import dataclass, field

from labctl.proxy.endpoints import ServicePortInfo
from labctl.proxy.policy import decide

PROTO = {"tcp": 6, "udp": 17}
PROTO_NAME = {6: "TCP", 17: "UDP"}
SVC_AFFINITY = 1
SVC_DROP = 2  # no endpoint here for a Local policy, but some elsewhere: dropped, not rejected
SVC_SNAT = 4  # externalTrafficPolicy Cluster: a backend on another node is reached SNATed to this node
SVC_FIREWALL = 8  # loadBalancerSourceRanges: only sources in lb4_src_range
SVC_FLAGS = {SVC_AFFINITY: "sessionAffinity", SVC_DROP: "local-only, none here", SVC_SNAT: "SNAT to the node", SVC_FIREWALL: "source ranges"}
BACKEND_LOCAL = 1
SCOPE = {0: "internal", 1: "external"}
MAPS = ("lb4_services", "lb4_backends", "lb4_revnat", "lb4_config", "lb4_src_range")


def _ip(a: str) -> bytes:
    return ipaddress.IPv4Address(a).packed


def service_key(ip: str, port: int, proto: int, slot: int, scope: int = 0) -> bytes:
    return _ip(ip) + struct.pack("!H", port) + struct.pack("<H", slot) + bytes([proto, scope, 0, 0])


KINDS = {"ClusterIP": 1, "NodePort": 2, "LoadBalancer": 3, "ExternalIP": 4}


def service_value(backend_id: int, count: int, rev_nat: int, flags: int, kind: str | None = None, generation: int = 0) -> bytes:
    """`kind`: for `bpf lb list` (lb.c does not read it); `generation`: a master's
    digest of its backends, which established connections check theirs against."""
    return struct.pack("<IHHBBH", backend_id, count, rev_nat, flags, KINDS.get(kind or "", 0), generation)


def generation(backends: tuple[str, ...]) -> int:
    return zlib.crc32(",".join(backends).encode()) & 0xFFFF


def backend_value(ip: str, port: int, proto: int, local: bool) -> bytes:
    return _ip(ip) + struct.pack("!H", port) + bytes([proto, BACKEND_LOCAL if local else 0])


def revnat_value(ip: str, port: int) -> bytes:
    return _ip(ip) + struct.pack("!H", port) + b"\0\0"


def src_range_key(rev_nat: int, cidr: str) -> bytes:
    net = ipaddress.IPv4Network(cidr if "/" in cidr else f"{cidr}/32", strict=False)
    return struct.pack("<IHH", 32 + net.prefixlen, rev_nat, 0) + net.network_address.packed


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u16(n: int) -> bytes:
    return struct.pack("<H", n)


@dataclass(frozen=True)
class Front:
    """One frontend of a service port on a node, in one scope."""

    ip: str
    port: int
    proto: int
    scope: int
    flags: int
    timeout: int  # sessionAffinity's, in seconds
    kind: str
    backends: tuple[str, ...]  # "ip:port/proto"
    sources: tuple[str, ...] = ()  # loadBalancerSourceRanges (and the IP itself when the node is in one): who may reach it

    @property
    def key(self) -> str:  # what its rev-NAT index is allocated for
        return f"{self.ip}:{self.port}/{self.proto}"


def frontends(info: ServicePortInfo, node: str, node_ip: str) -> list[Front]:
    """A service port's frontends on `node`: scope 0 (internal: what pods and the
    node itself send) holds the ClusterIP with internalTrafficPolicy's endpoints,
    and the LoadBalancer IP, external IPs and this node's NodePort with every
    endpoint (kube-proxy's short-circuit for traffic from inside); scope 1
    (external: what comes in on eth0) holds the NodePort, LoadBalancer IP and
    external IPs with externalTrafficPolicy's."""
    s, p = info.service, info.port
    proto = PROTO[info.proto]
    pol = decide(info, node)
    affinity = SVC_AFFINITY if s.session_affinity == "ClientIP" else 0
    timeout = s.affinity_timeout if affinity else 0

    def front(ip, port, scope, eps, kind, snat=False) -> Front:
        sources = tuple(pol.allowed_sources(node_ip)) if kind == "LoadBalancer" and pol.firewalled else ()
        flags = affinity | (SVC_DROP if not eps and pol.has_endpoints else 0) | (SVC_SNAT if snat else 0) | (SVC_FIREWALL if sources else 0)
        return Front(ip, port, proto, scope, flags, timeout, kind, tuple(f"{e.ip}:{e.port}/{proto}" for e in eps), sources)

    out = []
    if s.cluster_ip and s.cluster_ip != "None":
        out.append(front(s.cluster_ip, p.port, 0, pol.local if pol.internal_local else pol.endpoints, "ClusterIP"))
    ext = [(ip, p.port, "LoadBalancer" if what == "loadbalancer IP" else "ExternalIP") for what, ip in pol.externals]
    if pol.node_port:
        ext.append((node_ip, pol.node_port, "NodePort"))
    for ip, port, kind in ext:
        out.append(front(ip, port, 0, pol.endpoints, kind))
        out.append(front(ip, port, 1, pol.local if pol.external_local else pol.endpoints, kind, snat=not pol.external_local))
    return out


@dataclass
class Changes:
    """What a sync writes: map -> entries to insert or replace, map -> keys to delete."""

    updates: dict[str, dict[bytes, bytes]] = field(default_factory=lambda: {m: {} for m in MAPS})
    deletes: dict[str, list[bytes]] = field(default_factory=lambda: {m: [] for m in MAPS})

    @property
    def entries(self) -> int:
        return sum(len(v) for v in self.updates.values())

    def __bool__(self) -> bool:
        return any(self.updates.values()) or any(self.deletes.values())

    def lines(self, pins: str, limit: int = 200) -> list[str]:
        """As `bpftool batch` would take them (the first `limit` of each kind): what
        `up --json` and the record's readers show; the writing is in batch syscalls."""
        out = [f"map update pinned {pins}/{m} key hex {_hex(k)} value hex {_hex(v)}" for m, e in self.updates.items() for k, v in list(e.items())[:limit]]
        return out + [f"map delete pinned {pins}/{m} key hex {_hex(k)}" for m, ks in self.deletes.items() for k in ks[:limit]]


def _keys(f: dict) -> list[bytes]:
    """The lb4_services keys a recorded frontend holds (its master and its slots)."""
    return [service_key(f["ip"], f["port"], f["proto"], slot, f["scope"]) for slot in range(f["slots"] + 1)]


def diff(
    changed: list[ServicePortInfo],
    removed: list[str],
    old_services: dict[str, dict],
    ids: dict[str, dict],
    node: str,
    node_ip: str,
) -> tuple[Changes, dict[str, dict | None], dict[str, dict]]:
    """The map changes that bring a node from its record to `changed` ports rendered
    anew and `removed` ones gone (the others stay as recorded). `ids`: the record's
    "backendIds", "revNats" and "backendRefs" (how many frontends name each backend).
    Returns the changes, each touched port's new record part (None: removed) and the ids."""
    backend_ids, rev_nats, refs = dict(ids.get("backendIds", {})), dict(ids.get("revNats", {})), dict(ids.get("backendRefs", {}))
    ch = Changes()
    new_backend, new_rev = _Ids(backend_ids.values()).next, _Ids(rev_nats.values()).next
    parts: dict[str, dict | None] = {}
    gone_fronts: dict[str, dict] = {}  # frontend key -> a recorded frontend that may no longer be anyone's
    for key in [*removed, *(i.key for i in changed)]:
        for f in old_services.get(key, {}).get("fronts", []):
            ch.deletes["lb4_services"] += _keys(f)
            ch.deletes["lb4_src_range"] += [src_range_key(rev_nats.get(f"{f['ip']}:{f['port']}/{f['proto']}", 0), c) for c in f.get("sources", [])]
            gone_fronts[f"{f['ip']}:{f['port']}/{f['proto']}"] = f
            for b in f["backends"]:
                refs[b] = refs.get(b, 0) - 1
    for key in removed:
        parts[key] = None
    live_fronts: set[str] = set()
    for info in changed:
        fronts = frontends(info, node, node_ip)
        recorded = []
        for f in fronts:
            rev = rev_nats.get(f.key) or new_rev()
            rev_nats[f.key] = rev
            live_fronts.add(f.key)
            ch.updates["lb4_services"][service_key(f.ip, f.port, f.proto, 0, f.scope)] = service_value(
                f.timeout, len(f.backends), rev, f.flags, f.kind, generation(f.backends)
            )
            for slot, b in enumerate(f.backends, 1):
                if b not in backend_ids:
                    backend_ids[b] = new_backend()
                ch.updates["lb4_services"][service_key(f.ip, f.port, f.proto, slot, f.scope)] = service_value(backend_ids[b], 0, rev, 0)
                refs[b] = refs.get(b, 0) + 1
                addr, _, proto = b.rpartition("/")
                ip, _, port = addr.rpartition(":")
                ch.updates["lb4_backends"][u32(backend_ids[b])] = backend_value(ip, int(port), int(proto), _local(info, node, ip, int(port)))
            ch.updates["lb4_revnat"][u16(rev)] = revnat_value(f.ip, f.port)
            for c in f.sources:
                ch.updates["lb4_src_range"][src_range_key(rev, c)] = b"\x01"
            recorded.append(
                {
                    "ip": f.ip,
                    "port": f.port,
                    "proto": f.proto,
                    "scope": f.scope,
                    "slots": len(f.backends),
                    "backends": list(f.backends),
                    "sources": list(f.sources),
                }
            )
        parts[info.key] = {"fronts": recorded}
    for m in ("lb4_services", "lb4_src_range"):
        written = set(ch.updates[m])
        ch.deletes[m] = [k for k in dict.fromkeys(ch.deletes[m]) if k not in written]
    gone = [fk for fk in gone_fronts if fk not in live_fronts]
    still = {f"{f['ip']}:{f['port']}/{f['proto']}" for k, v in old_services.items() if k not in parts for f in v.get("fronts", [])} if gone else set()
    for fk in gone:
        if fk not in still and fk in rev_nats:
            ch.deletes["lb4_revnat"].append(u16(rev_nats.pop(fk)))
    for b, n in list(refs.items()):
        if n <= 0:
            refs.pop(b)
            if b in backend_ids:
                ch.deletes["lb4_backends"].append(u32(backend_ids.pop(b)))
    return ch, parts, {"backendIds": backend_ids, "revNats": rev_nats, "backendRefs": refs}


class _Ids:
    """The lowest free ids, handed out in order (an id freed in this sync is not reused by it)."""

    def __init__(self, taken):
        self.taken, self.n = set(taken), 1

    def next(self) -> int:
        while self.n in self.taken:
            self.n += 1
        self.taken.add(self.n)
        return self.n


def _local(info: ServicePortInfo, node: str, ip: str, port: int) -> bool:
    return any(e.ip == ip and e.port == port and e.node == node for e in (*info.endpoints, *info.terminating))


def config(node_ip: str) -> dict[bytes, bytes]:
    return {u32(0): _ip(node_ip) + b"\0\0\0\0"}


def render(infos: list[ServicePortInfo], node: str, node_ip: str) -> Changes:
    """A node's whole maps for these service ports (a first sync)."""
    ch, _, _ = diff(infos, [], {}, {}, node, node_ip)
    ch.updates["lb4_config"] = config(node_ip)
    return ch


def _hex(b: bytes) -> str:
    return " ".join(f"{x:02x}" for x in b)


# -- reading the maps back (bpftool -j map dump) -----------------------------------------


def _bytes(field) -> bytes:
    """bpftool -j prints a BTF map's keys as objects, a map without BTF as hex strings."""
    return bytes(int(x, 16) for x in field)


def frontends_of(services: list[dict], backends: list[dict]) -> list[dict]:
    """The frontends in `bpftool -j map dump` of lb4_services and lb4_backends (raw
    "key"/"value" byte lists), each with its master's fields and its slots in
    order; a slot whose backend is missing names it `backend N not found`."""
    bes = {}
    for e in backends:
        k, v = _bytes(e["key"]), _bytes(e["value"])
        bes[struct.unpack("<I", k)[0]] = f"{ipaddress.IPv4Address(v[:4])}:{struct.unpack('!H', v[4:6])[0]}"
    fronts: dict[tuple, dict] = {}
    for e in services:
        k, v = _bytes(e["key"]), _bytes(e["value"])
        ip, port, slot, proto, scope = ipaddress.IPv4Address(k[:4]), struct.unpack("!H", k[4:6])[0], struct.unpack("<H", k[6:8])[0], k[8], k[9]
        backend_id, count, rev, flags, kind, _ = struct.unpack("<IHHBBH", v)
        f = fronts.setdefault((str(ip), port, proto, scope), {"slots": {}})
        if slot == 0:
            f.update(
                frontend=f"{ip}:{port}/{PROTO_NAME.get(proto, str(proto)).lower()}",
                type=next((name for name, code in KINDS.items() if code == kind), "ClusterIP"),
                scope="external" if scope else "internal",
                flags=[name for bit, name in SVC_FLAGS.items() if flags & bit],
                revNat=rev,
                count=count,
                affinityTimeout=backend_id if flags & SVC_AFFINITY else None,
            )
        else:
            f["slots"][slot] = (bes.get(backend_id, f"backend {backend_id} not found"), rev)
    out = [f for f in fronts.values() if "frontend" in f]
    return sorted(out, key=lambda f: (f["frontend"], f["scope"]))


def lb_frontends(services: list[dict], backends: list[dict]) -> list[dict]:
    """`bpf lb list --json`: the contract's {frontend, type, backends}, plus the scope
    (internal: what pods and nodes send; external: what comes in on eth0), the
    master's flags and its rev-NAT index."""
    return [
        {k: f[k] for k in ("frontend", "type", "scope", "flags", "revNat")} | {"backends": [b for _, (b, _) in sorted(f["slots"].items())]}
        for f in frontends_of(services, backends)
    ]


def lb_list(services: list[dict], backends: list[dict]) -> list[tuple[str, str]]:
    """`cilium bpf lb list`'s two columns: a master row per frontend, a row per slot."""
    rows = []
    for f in frontends_of(services, backends):
        ip_port, _, proto = f["frontend"].rpartition("/")
        front = f"{ip_port}/{proto.upper()}" + (" (external)" if f["scope"] == "external" else "")
        extra = f", affinity timeout {f['affinityTimeout']} s" if f["affinityTimeout"] is not None else ""
        rows.append((front, f"0.0.0.0:0 ({f['revNat']}) (0) [{', '.join([f['type'], *f['flags']])}] (master, count={f['count']}{extra})"))
        rows += [
            ("", f"{b}/{proto.upper()} ({rev}) ({slot})" if "not found" not in b else f"{b} ({rev}) ({slot})") for slot, (b, rev) in sorted(f["slots"].items())
        ]
    return rows


def ct_entries(dump: list[dict]) -> list[dict]:
    """`bpftool -j map dump` of ct4, decoded: for each translated connection, the
    entry on its tuple before NAT (`service`: the backend it was given, and the
    SNAT port) and the one after NAT (what replies are matched by; `client`: the
    address an SNAT replaced, `host`: the node's own connection)."""
    out = []
    for e in dump:
        k, v = _bytes(e["key"]), _bytes(e["value"])
        saddr, daddr = ipaddress.IPv4Address(k[0:4]), ipaddress.IPv4Address(k[4:8])
        sport, dport = struct.unpack("!HH", k[8:12])
        backend_id, rev_nat = struct.unpack("<IH", v[8:14])
        nat_port = struct.unpack("!H", v[14:16])[0]
        client = ipaddress.IPv4Address(v[16:20])
        client_port = struct.unpack("!H", v[20:22])[0]
        flags = v[22]
        out.append(
            {
                "proto": PROTO_NAME.get(k[12], str(k[12])),
                "src": f"{saddr}:{sport}",
                "dst": f"{daddr}:{dport}",
                "service": bool(k[13] & 1),
                "backendId": backend_id,
                "revNat": rev_nat,
                "natPort": nat_port if k[13] & 1 else None,
                "client": f"{client}:{client_port}" if int(client) else None,
                "host": bool(flags & 1) and not k[13] & 1,
            }
        )
    out.sort(key=lambda x: (x["src"], not x["service"]))
    return out


def connection(entries: list[dict], sport: int) -> dict | None:
    """The probe's connection in a node's ct4 (its client port): frontend, backend,
    and the source it was given, if any."""
    svc = next((e for e in entries if e["service"] and e["src"].endswith(f":{sport}")), None)
    if svc is None:
        return None
    after = next(
        (
            e
            for e in entries
            if not e["service"] and e["backendId"] == svc["backendId"] and e["src"].endswith(f":{svc['natPort'] or sport}") and e["revNat"] == svc["revNat"]
        ),
        None,
    )
    if after is None:
        return None
    return {"client": svc["src"], "frontend": svc["dst"], "backend": after["dst"], "source": after["src"], "backendId": svc["backendId"], "host": after["host"]}
