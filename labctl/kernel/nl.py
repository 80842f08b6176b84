"""Netlink requests for one namespace, sent as one pipelined batch.

Messages are encoded with pyroute2's message classes (ifinfmsg, ifaddrmsg,
rtmsg, ndmsg), then written back to back on one NETLINK_ROUTE socket opened
inside the target namespace, like `ip -batch` but without a round trip per
request. Every request asks for an acknowledgement; every failure is reported
with the iproute2 command it stands for and the kernel's own message.

pyroute2's IPRoute request engine costs about half a millisecond per request
on the CI machine, which dominates building a thousand pods; its encoders are
cheap, so they are used here directly.
"""

from __future__ import annotations

import errno as errno_mod
import importlib.util
import os
import socket
import struct
import sys
import types
from dataclasses import dataclass, field
from typing import Iterable

from labctl import failpoints
from labctl.errors import KernelError
from labctl.kernel import netns, nlwire

# Kernel ABI constants (linux/netlink.h, linux/rtnetlink.h). pyroute2 itself is
# imported on the first message encoded: importing it costs a quarter of a
# second, which a `labctl up` with nothing to change should not pay.
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSG_ERROR = 2
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1

IFF_UP = 1
AF_BRIDGE = 7
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 4
RTPROT_BOOT = 3
RTPROT_STATIC = 4
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255

IFA_F_NODAD = 0x02

CHUNK = 200  # requests per send; their acks fit the receive buffer easily


@dataclass
class Request:
    data: bytes
    what: str  # the iproute2 command this request stands for
    ok: frozenset[int] = frozenset()  # errnos that count as success (e.g. EEXIST, ENODEV for deletes)


@dataclass
class Failure:
    request: Request
    errno: int
    message: str | None

    def __str__(self) -> str:
        text = f"`{self.request.what}`: {os.strerror(self.errno)}"
        return text + (f" ({self.message})" if self.message else "")


def _encode(msg, msg_type: int, nl_flags: int) -> bytes:
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | nl_flags
    msg.encode()
    return bytes(msg.data)


def bare_pyroute2() -> None:
    """Make pyroute2's message modules importable without its package __init__ (see _classes)."""
    if "pyroute2" not in sys.modules:
        # pyroute2/__init__.py imports every pyroute2 API (IPRoute, NDB, nftables,
        # conntrack...): about 0.2 s, a fifth of the demo's whole `up`. Its message
        # classes need none of it, so the package is registered bare, with its
        # path, and only the modules used here are loaded from it.
        spec = importlib.util.find_spec("pyroute2")
        bare = types.ModuleType("pyroute2")
        bare.__path__ = list(spec.submodule_search_locations)
        bare.__spec__ = spec
        bare.__file__ = spec.origin
        sys.modules["pyroute2"] = bare


def _classes():
    bare_pyroute2()
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.ndmsg import ndmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    return {"ifinfmsg": ifinfmsg, "ifaddrmsg": ifaddrmsg, "ndmsg": ndmsg, "rtmsg": rtmsg}


_CLASSES: dict | None = None


def _new(kind: str):
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _classes()
    return _CLASSES[kind]()


def _msg(kind: str, msg_type: int, nl_flags: int, attrs: list, **fields) -> bytes:
    """A pyroute2 message of class `kind` with header fields and attributes, encoded."""
    m = _new(kind)
    for k, v in fields.items():
        m[k] = v
    m["attrs"] = attrs
    return _encode(m, msg_type, nl_flags)


def _link(fields: dict, attrs: list, msg_type: int = RTM_NEWLINK, nl_flags: int = 0) -> bytes:
    return _msg("ifinfmsg", msg_type, nl_flags, attrs, **fields)


@dataclass
class Batch:
    """Requests for one namespace (None: the current one), applied by commit()."""

    netns: str | None
    requests: list[Request] = field(default_factory=list)
    protocol: int = socket.NETLINK_ROUTE  # NETLINK_GENERIC for generic netlink families (IPVS)

    def __len__(self) -> int:
        return len(self.requests)

    def _add(self, data: bytes, what: str, ok: Iterable[int] = ()) -> None:
        self.requests.append(Request(data, what, frozenset(ok)))

    def add(self, data: bytes, what: str, ok: Iterable[int] = ()) -> None:
        """An encoded request (with NLM_F_REQUEST | NLM_F_ACK) that `what` describes."""
        self._add(data, what, ok)

    # -- links ---------------------------------------------------------------

    def veth(
        self,
        name: str,
        peer: str,
        peer_netns_fd: int,
        peer_netns: str,
        *,
        index: int = 0,
        peer_index: int = 0,
        mtu: int | None = None,
        peer_mac: str | None = None,
        master: int | None = None,
        up: bool = False,
    ) -> None:
        """ip link add NAME type veth peer name PEER netns PEER_NETNS (peer created in place)."""
        attrs: list = [("IFLA_IFNAME", name)]
        peer_attrs: list = [("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", peer_netns_fd)]
        if mtu:
            attrs.append(("IFLA_MTU", mtu))
            peer_attrs.append(("IFLA_MTU", mtu))
        if peer_mac:
            peer_attrs.append(("IFLA_ADDRESS", peer_mac))
        if master is not None:
            attrs.append(("IFLA_MASTER", master))
        info = {"attrs": [("VETH_INFO_PEER", {"index": peer_index, "attrs": peer_attrs})]}
        attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", info)]}))
        flags = IFF_UP if up else 0
        data = _link({"index": index, "flags": flags, "change": IFF_UP if up else 0}, attrs, nl_flags=NLM_F_CREATE | NLM_F_EXCL)
        self._add(data, f"ip link add {name} type veth peer name {peer} netns {peer_netns}")

    def bridge(self, name: str, *, index: int = 0, mtu: int | None = None, mac: str | None = None, up: bool = True) -> None:
        """ip link add NAME type bridge [address MAC]: a MAC given is kept whatever ports come and go
        (without one, the kernel takes the lowest of its ports', which changes under the hosts' ARP caches)."""
        attrs: list = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})]
        if mtu:
            attrs.append(("IFLA_MTU", mtu))
        if mac:
            attrs.append(("IFLA_ADDRESS", mac))
        data = _link({"index": index, "flags": IFF_UP if up else 0, "change": IFF_UP}, attrs, nl_flags=NLM_F_CREATE | NLM_F_EXCL)
        self._add(data, f"ip link add {name} type bridge")

    def vxlan(self, name: str, *, index: int, vni: int, local: str, link: int, port: int, mtu: int, mac: str) -> None:
        data_attrs = [
            ("IFLA_VXLAN_ID", vni),
            ("IFLA_VXLAN_LOCAL6" if ":" in local else "IFLA_VXLAN_LOCAL", local),
            ("IFLA_VXLAN_LINK", link),
            ("IFLA_VXLAN_PORT", port),
            ("IFLA_VXLAN_LEARNING", 0),
        ]
        attrs = [
            ("IFLA_IFNAME", name),
            ("IFLA_MTU", mtu),
            ("IFLA_ADDRESS", mac),
            ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": data_attrs})]}),
        ]
        data = _link({"index": index, "flags": 0, "change": 0}, attrs, nl_flags=NLM_F_CREATE | NLM_F_EXCL)
        self._add(data, f"ip link add {name} type vxlan id {vni} local {local} dstport {port} nolearning")

    def link_up(self, *, index: int = 0, name: str | None = None, mtu: int | None = None) -> None:
        attrs: list = [("IFLA_IFNAME", name)] if name and not index else []
        if mtu:
            attrs.append(("IFLA_MTU", mtu))
        self._add(_link({"index": index, "flags": IFF_UP, "change": IFF_UP}, attrs), f"ip link set {name or index} up")

    def link_down(self, *, name: str, mtu: int | None = None) -> None:
        attrs: list = [("IFLA_IFNAME", name)] + ([("IFLA_MTU", mtu)] if mtu else [])
        self._add(_link({"index": 0, "flags": 0, "change": IFF_UP}, attrs), f"ip link set {name} down")

    def hairpin(self, name: str) -> None:
        """ip link set NAME type bridge_slave hairpin on"""
        info = [("IFLA_INFO_SLAVE_KIND", "bridge"), ("IFLA_INFO_SLAVE_DATA", {"attrs": [("IFLA_BRPORT_MODE", 1)]})]
        self._add(_link({"index": 0}, [("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": info})]), f"ip link set {name} type bridge_slave hairpin on")

    def link_del(self, name: str) -> None:
        """ip link del NAME; a missing link is success."""
        self._add(_link({"index": 0}, [("IFLA_IFNAME", name)], msg_type=RTM_DELLINK), f"ip link del {name}", ok=(errno_mod.ENODEV,))

    # -- addresses, routes, neighbours ---------------------------------------

    def addr(self, index: int, address: str, prefixlen: int, dev: str) -> None:
        """ip addr add ADDRESS/PREFIXLEN dev DEV (an IPv6 one `nodad`: usable at once, as
        the addresses a CNI plugin or flannel sets are)."""
        flags = NLM_F_CREATE | NLM_F_REPLACE
        if _family(address) == socket.AF_INET6:
            data = nlwire.addr(RTM_NEWADDR, flags, socket.AF_INET6, prefixlen, index, address, False, IFA_F_NODAD)
            self._add(data, f"ip addr add {address}/{prefixlen} dev {dev} nodad")
            return
        self._add(nlwire.addr(RTM_NEWADDR, flags, socket.AF_INET, prefixlen, index, address, True), f"ip addr add {address}/{prefixlen} dev {dev}")

    def addr_del(self, index: int, address: str, prefixlen: int, dev: str) -> None:
        """ip addr del ADDRESS/PREFIXLEN dev DEV; an address not there is success."""
        fam = _family(address)
        data = nlwire.addr(RTM_DELADDR, 0, fam, prefixlen, index, address, fam == socket.AF_INET)
        self._add(data, f"ip addr del {address}/{prefixlen} dev {dev}", ok=(errno_mod.EADDRNOTAVAIL,))

    @staticmethod
    def _route_fields(dst: str, gateway: str | None, onlink: bool, proto: int, scope: int | None = None, rtype: int = RTN_UNICAST):
        net, _, plen = dst.partition("/")
        fam = _family(net)
        dst_len = int(plen or (128 if fam == socket.AF_INET6 else 32))
        if scope is None:
            scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        fields = (fam, dst_len, 0, 0, RT_TABLE_MAIN, proto, scope, rtype, RTNH_F_ONLINK if onlink else 0)
        return fields, (net if dst_len else None)

    def route(self, dst: str, *, gateway: str | None = None, oif: int | None = None, dev: str = "", onlink: bool = False, proto: int = RTPROT_BOOT) -> None:
        """ip route replace DST [via GW] [dev DEV] [onlink]"""
        fields, net = self._route_fields(dst, gateway, onlink, proto)
        what = f"ip route replace {dst}" + (f" via {gateway}" if gateway else "") + (f" dev {dev}" if dev else "") + (" onlink" if onlink else "")
        self._add(nlwire.route(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, fields, net, gateway, oif), what)

    def route_del(self, dst: str) -> None:
        # as `ip route del`: match any scope, type and protocol
        fields, net = self._route_fields(dst, None, False, 0, scope=RT_SCOPE_NOWHERE, rtype=0)
        self._add(nlwire.route(RTM_DELROUTE, 0, fields, net, None, None), f"ip route del {dst}", ok=(errno_mod.ESRCH,))

    def neigh(self, index: int, dst: str, lladdr: str, dev: str) -> None:
        """ip neigh replace DST lladdr MAC dev DEV nud permanent"""
        data = nlwire.neigh(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, _family(dst), index, NUD_PERMANENT, 0, dst, lladdr)
        self._add(data, f"ip neigh replace {dst} lladdr {lladdr} dev {dev} nud permanent")

    def neigh_del(self, index: int, dst: str, dev: str) -> None:
        data = nlwire.neigh(RTM_DELNEIGH, 0, _family(dst), index, 0, 0, dst, None)
        self._add(data, f"ip neigh del {dst} dev {dev}", ok=(errno_mod.ENOENT,))

    def fdb(self, index: int, lladdr: str, dst: str, dev: str) -> None:
        """bridge fdb replace MAC dev DEV dst IP self permanent"""
        data = nlwire.neigh(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, AF_BRIDGE, index, NUD_PERMANENT | NUD_NOARP, NTF_SELF, dst, lladdr, lladdr_first=True)
        self._add(data, f"bridge fdb replace {lladdr} dev {dev} dst {dst} self permanent")

    def fdb_del(self, index: int, lladdr: str, dst: str, dev: str) -> None:
        data = nlwire.neigh(RTM_DELNEIGH, 0, AF_BRIDGE, index, NUD_NOARP, NTF_SELF, dst, lladdr, lladdr_first=True)
        self._add(data, f"bridge fdb del {lladdr} dev {dev} dst {dst} self", ok=(errno_mod.ENOENT,))

    # -- sending ---------------------------------------------------------------

    def commit(self) -> None:
        """Send every request; raise KernelError naming each one that failed."""
        if not self.requests:
            return
        with netns.entered(self.netns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, self.protocol)
        try:
            failures = _send_all(sock, self.requests)
        finally:
            sock.close()
        failpoints.hit("netlink")
        if failures:
            where = f" in namespace {self.netns}" if self.netns else ""
            lines = "\n  ".join(str(f) for f in failures[:10])
            more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
            raise KernelError(f"the kernel refused {len(failures)} of {len(self.requests)} requests{where}:\n  {lines}{more}")


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _send_all(sock: socket.socket, requests: list[Request]) -> list[Failure]:
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    failures: list[Failure] = []
    seq = 0
    for start in range(0, len(requests), CHUNK):
        chunk = requests[start : start + CHUNK]
        by_seq: dict[int, Request] = {}
        buf = bytearray()
        for req in chunk:
            seq += 1
            data = bytearray(req.data)
            struct.pack_into("=I", data, 8, seq)  # nlmsg_seq
            by_seq[seq] = req
            buf += data
        sock.send(bytes(buf))
        while by_seq:
            for ack_seq, err, msg in acks(sock.recv(1 << 20)):
                req = by_seq.pop(ack_seq, None)
                if req is not None and err and -err not in req.ok:
                    failures.append(Failure(req, -err, msg))
    return failures


def acks(data: bytes):
    """Yield (seq, error, extack message) for each NLMSG_ERROR in a buffer."""
    off = 0
    while off + 16 <= len(data):
        length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if mtype == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, off + 16)
            msg = None
            if flags & NLM_F_ACK_TLVS:
                # payload: error, the capped request header (16 bytes), then TLVs
                t = off + 16 + 4 + 16
                end = off + length
                while t + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, t)
                    if alen < 4:
                        break
                    if atype == NLMSGERR_ATTR_MSG:
                        msg = data[t + 4 : t + alen].split(b"\0", 1)[0].decode(errors="replace")
                    t += (alen + 3) & ~3
            yield seq, err, msg
        off += (length + 3) & ~3
