"""Extended accounting objects (nfnetlink_acct), the counters `iptables -m nfacct`
adds to: kube-proxy counts packets with two of them. They live in a network
namespace (`ip netns exec NS nfacct list` shows them).

Messages are written by hand: NFNL_SUBSYS_ACCT, a nfgenmsg header and the
NFACCT_NAME attribute (linux/netfilter/nfnetlink_acct.h).
"""

from __future__ import annotations

import errno
import functools
import socket
import struct

from labctl.kernel.nl import NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, Batch, acks

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ACCT = 7
NFNL_MSG_ACCT_NEW, NFNL_MSG_ACCT_GET = 0, 1
NFACCT_NAME = 1
NLM_F_DUMP = 0x300


def _message(kind: int, flags: int, name: str) -> bytes:
    value = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(value), NFACCT_NAME) + value
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0) + attr  # nfgenmsg: family, version, res_id
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ACCT << 8) | kind, flags, 0, 0) + body


def ensure(netns: str, names: list[str]) -> None:
    """Create the named counters in a namespace; the ones that exist are kept (and their counts)."""
    b = Batch(netns, protocol=NETLINK_NETFILTER)
    for name in names:
        b.add(_message(NFNL_MSG_ACCT_NEW, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, name), f"nfacct add {name}", ok=(errno.EBUSY,))
    b.commit()


@functools.cache
def supported() -> bool:
    """Whether the kernel has nfnetlink_acct: a read-only look-up of a name that does not
    exist answers ENOENT when it does (EPERM without root: assumed, root will find out)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    except OSError:
        return False
    try:
        sock.bind((0, 0))
        sock.settimeout(2.0)
        sock.send(_message(NFNL_MSG_ACCT_GET, NLM_F_REQUEST | NLM_F_ACK, "labctl-probe"))
        for _seq, err, _msg in acks(sock.recv(65536)):
            return -err not in (errno.EOPNOTSUPP, errno.EINVAL, errno.EPROTONOSUPPORT)
        return True
    except OSError:
        return True
    finally:
        sock.close()
