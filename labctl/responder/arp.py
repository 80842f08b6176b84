"""A layer-2 speaker: answers ARP requests for LoadBalancer IPs on a node's
eth0, and announces them with a gratuitous ARP, as MetalLB's speaker does.
The socket is opened inside the node's namespace (setns per thread); the
responder's loop serves it."""

from __future__ import annotations

import fcntl
import socket
import struct

ETH_P_ARP = 0x0806
SIOCGIFHWADDR = 0x8927
BROADCAST = b"\xff" * 6


def open_speaker(ifname: str = "eth0") -> tuple[socket.socket, bytes]:
    """A raw socket for ARP on `ifname` of the current namespace, and its MAC."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, socket.htons(ETH_P_ARP))
    try:
        sock.bind((ifname, ETH_P_ARP))
        info = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()))
    except OSError:
        sock.close()
        raise
    return sock, info[18:24]


def _frame(dst_mac: bytes, src_mac: bytes, op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    eth = dst_mac + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa + tha + tpa
    return eth + arp


def gratuitous(sock: socket.socket, mac: bytes, ip: str) -> None:
    """Tell the segment that `ip` is at `mac` (an unsolicited ARP reply, broadcast)."""
    addr = socket.inet_aton(ip)
    try:
        sock.send(_frame(BROADCAST, mac, 2, mac, addr, BROADCAST, addr))
    except OSError:
        pass


def answer(sock: socket.socket, mac: bytes, ips: set[str]) -> None:
    """Reply to every pending ARP request for one of `ips`."""
    while True:
        try:
            frame = sock.recv(128)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if len(frame) < 42:
            continue
        op = struct.unpack_from("!H", frame, 20)[0]
        sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
        if op != 1 or socket.inet_ntoa(tpa) not in ips:
            continue
        try:
            sock.send(_frame(sha, mac, 2, mac, tpa, sha, spa))
        except OSError:
            pass


announce = gratuitous  # the speaker's way of telling the segment (labctl.responder.server)
