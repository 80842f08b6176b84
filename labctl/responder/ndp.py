"""The IPv6 half of the layer-2 speaker: answers Neighbor Solicitations for
LoadBalancer IPv6 addresses on a node's eth0 and announces them with an
unsolicited Neighbor Advertisement, as MetalLB's NDP responder does (labctl's
ARP speaker, labctl.responder.arp, does IPv4). A classic BPF filter on the
packet socket lets only Neighbor Solicitations through."""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

ETH_P_IPV6 = 0x86DD
SIOCGIFHWADDR = 0x8927
SO_ATTACH_FILTER = 26
ALL_NODES = socket.inet_pton(socket.AF_INET6, "ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
NS, NA = 135, 136
# ldh [12] == 0x86dd; ldb [20] (next header) == 58; ldb [54] (ICMPv6 type) == 135: accept, else drop
_FILTER = [
    (0x28, 0, 0, 12),
    (0x15, 0, 5, ETH_P_IPV6),
    (0x30, 0, 0, 20),
    (0x15, 0, 3, 58),
    (0x30, 0, 0, 54),
    (0x15, 0, 1, NS),
    (0x06, 0, 0, 0xFFFF),
    (0x06, 0, 0, 0),
]


def open_speaker(ifname: str = "eth0") -> tuple[socket.socket, bytes]:
    """A packet socket seeing the Neighbor Solicitations on `ifname` of the current namespace, and its MAC."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, socket.htons(ETH_P_IPV6))
    try:
        prog = b"".join(struct.pack("HBBI", *insn) for insn in _FILTER)
        buf = ctypes.create_string_buffer(prog)
        fprog = struct.pack("HL", len(_FILTER), ctypes.addressof(buf))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        sock.bind((ifname, ETH_P_IPV6))
        info = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()))
    except OSError:
        sock.close()
        raise
    return sock, info[18:24]


def _checksum(src: bytes, dst: bytes, icmp: bytes) -> int:
    data = src + dst + struct.pack("!I3xB", len(icmp), 58) + icmp
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def advertisement(dst_mac: bytes, mac: bytes, target: bytes, dst: bytes, solicited: bool) -> bytes:
    """An Ethernet frame carrying a Neighbor Advertisement of `target` at `mac`."""
    flags = 0x60000000 if solicited else 0x20000000  # S and O, or O alone
    body = struct.pack("!BBHI", NA, 0, 0, flags) + target + struct.pack("!BB", 2, 1) + mac
    body = body[:2] + struct.pack("!H", _checksum(target, dst, body)) + body[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + target + dst
    return dst_mac + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def unsolicited(sock: socket.socket, mac: bytes, ip: str) -> None:
    """Tell the segment that `ip` is at `mac` (to all nodes, override set)."""
    try:
        sock.send(advertisement(ALL_NODES_MAC, mac, socket.inet_pton(socket.AF_INET6, ip), ALL_NODES, False))
    except OSError:
        pass


def answer(sock: socket.socket, mac: bytes, ips: set[str]) -> None:
    """Reply to every pending Neighbor Solicitation for one of `ips`."""
    wanted = {socket.inet_pton(socket.AF_INET6, ip) for ip in ips}
    while True:
        try:
            frame = sock.recv(256)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if len(frame) < 78 or frame[54] != NS:
            continue
        target, src = frame[62:78], frame[22:38]
        if target not in wanted:
            continue
        unspecified = src == bytes(16)  # a duplicate address check: answered to all nodes
        try:
            sock.send(advertisement(ALL_NODES_MAC if unspecified else frame[6:12], mac, target, ALL_NODES if unspecified else src, not unspecified))
        except OSError:
            pass


announce = unsolicited  # the speaker's way of telling the segment (labctl.responder.server)
