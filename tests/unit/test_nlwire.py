"""labctl's struct-packed netlink messages are byte for byte pyroute2's."""

from __future__ import annotations

import socket

import pytest

from labctl.kernel import nl


def pyroute2_route(dst: str, gateway, oif, onlink: bool, msg_type: int, flags: int, proto: int, delete: bool = False) -> bytes:
    """The route request as pyroute2's rtmsg encodes it (labctl's encoder before nlwire)."""
    net, _, plen = dst.partition("/")
    m = nl._new("rtmsg")
    fam = socket.AF_INET6 if ":" in net else socket.AF_INET
    m["family"] = fam
    m["dst_len"] = int(plen or (128 if fam == socket.AF_INET6 else 32))
    m["table"] = nl.RT_TABLE_MAIN
    m["proto"] = proto
    m["scope"] = nl.RT_SCOPE_NOWHERE if delete else (nl.RT_SCOPE_UNIVERSE if gateway else nl.RT_SCOPE_LINK)
    m["type"] = 0 if delete else nl.RTN_UNICAST
    m["flags"] = nl.RTNH_F_ONLINK if onlink else 0
    attrs = [("RTA_DST", net)] if m["dst_len"] else []
    attrs += [("RTA_GATEWAY", gateway)] if gateway else []
    attrs += [("RTA_OIF", oif)] if oif else []
    m["attrs"] = attrs
    return nl._encode(m, msg_type, flags)


def one(fn, *args, **kw) -> bytes:
    b = nl.Batch(None)
    fn(b, *args, **kw)
    [req] = b.requests
    return req.data


CREATE = nl.NLM_F_CREATE | nl.NLM_F_REPLACE


@pytest.mark.parametrize("address,plen", [("10.244.0.1", 24), ("fd00:10:244::1", 64)])
def test_addresses(address, plen):
    six = ":" in address
    attrs = [("IFA_ADDRESS", address)] if six else [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
    fam = socket.AF_INET6 if six else socket.AF_INET
    extra = {"flags": nl.IFA_F_NODAD} if six else {}
    assert one(nl.Batch.addr, 3, address, plen, "cni0") == nl._msg("ifaddrmsg", nl.RTM_NEWADDR, CREATE, attrs, family=fam, prefixlen=plen, index=3, **extra)
    assert one(nl.Batch.addr_del, 3, address, plen, "cni0") == nl._msg("ifaddrmsg", nl.RTM_DELADDR, 0, attrs, family=fam, prefixlen=plen, index=3)


@pytest.mark.parametrize(
    "dst,gateway,oif,onlink",
    [
        ("10.244.1.0/24", "10.244.1.0", 4, True),
        ("0.0.0.0/0", "10.10.20.1", None, False),
        ("fd00:10:244:1::/64", "fd00:10:244:1::", 5, True),
        ("::/0", "fd00:10:20::1", None, False),
        ("10.244.2.0/24", "10.10.20.12", 2, False),
    ],
)
def test_routes(dst, gateway, oif, onlink):
    assert one(nl.Batch.route, dst, gateway=gateway, oif=oif, onlink=onlink) == pyroute2_route(
        dst, gateway, oif, onlink, nl.RTM_NEWROUTE, CREATE, nl.RTPROT_BOOT
    )
    assert one(nl.Batch.route_del, dst) == pyroute2_route(dst, None, None, False, nl.RTM_DELROUTE, 0, 0, delete=True)


@pytest.mark.parametrize("dst", ["10.244.1.0", "fd00:10:244:1::"])
def test_neighbours_and_fdb_entries(dst):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    mac = "0a:58:0a:f4:01:02"
    want = nl._msg("ndmsg", nl.RTM_NEWNEIGH, CREATE, [("NDA_DST", dst), ("NDA_LLADDR", mac)], family=fam, ifindex=4, state=nl.NUD_PERMANENT)
    assert one(nl.Batch.neigh, 4, dst, mac, "flannel.1") == want
    assert one(nl.Batch.neigh_del, 4, dst, "flannel.1") == nl._msg("ndmsg", nl.RTM_DELNEIGH, 0, [("NDA_DST", dst)], family=fam, ifindex=4)
    node = "10.10.20.11" if fam == socket.AF_INET else "fd00:10:20::b"
    fields = dict(family=nl.AF_BRIDGE, ifindex=4, state=nl.NUD_PERMANENT | nl.NUD_NOARP, flags=nl.NTF_SELF)
    assert one(nl.Batch.fdb, 4, mac, node, "flannel.1") == nl._msg("ndmsg", nl.RTM_NEWNEIGH, CREATE, [("NDA_LLADDR", mac), ("NDA_DST", node)], **fields)
    fields = dict(family=nl.AF_BRIDGE, ifindex=4, state=nl.NUD_NOARP, flags=nl.NTF_SELF)
    assert one(nl.Batch.fdb_del, 4, mac, node, "flannel.1") == nl._msg("ndmsg", nl.RTM_DELNEIGH, 0, [("NDA_LLADDR", mac), ("NDA_DST", node)], **fields)
