"""Which of a namespace's links are administratively down, asked without a fork:
one SIOCGIFFLAGS ioctl per name, from a socket opened inside the namespace."""

from __future__ import annotations

import fcntl
import socket
import struct

from labctl.kernel import netns

SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1


def down(ns: str, devices: list[str]) -> list[str]:
    """Those of `devices` that exist in `ns` and are not up (a missing one is not reported)."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    out = []
    try:
        for dev in devices:
            try:
                raw = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sH14x", dev.encode()[:15], 0))
            except OSError:
                continue
            flags = struct.unpack_from("16sH", raw)[1]
            if not flags & IFF_UP:
                out.append(dev)
    finally:
        sock.close()
    return out
