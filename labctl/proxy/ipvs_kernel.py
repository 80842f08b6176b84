"""The IPVS mode's side effects in one node: kube-ipvs0 and its addresses, and
the IPVS table over generic netlink (in the node's namespace). The rules and
sets go through iptables-restore and ipset restore like every other mode
(see sync.py).

Reading uses pyroute2's IPVS socket (dumps). Writing encodes pyroute2's IPVS
messages (ipvsmsg) and sends them back to back on one socket, acknowledged
in bulk, as labctl.kernel.nl does for links and routes: a request and its
round trip through pyroute2's IPVS API cost 30 ms each in the emulated VM,
which made 1,000 services take minutes. kube-proxy's settings are given
explicitly, never pyroute2's defaults (IPVSDest: direct routing; IPVSService:
wlc): masquerade forwarding, weight 1, the Lab's scheduler. A changed
virtual server is a SET_SERVICE, never delete and add.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from contextlib import contextmanager
from typing import Iterator

from labctl.errors import HostLacks, KernelError
from labctl.kernel import netns, run
from labctl.proxy.ipvs import DEVICE, Changes, VirtualServer

PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": socket.IPPROTO_SCTP}
PROTO_NAME = {v: k for k, v in PROTO.items()}
FWD_MASQ = 0  # IP_VS_CONN_F_MASQ
SVC_F_PERSISTENT = 0x1
MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack")


def _loaded() -> bool:
    return os.path.exists("/proc/net/ip_vs") or os.path.exists("/proc/sys/net/ipv4/vs")


def require(scheduler: str = "rr") -> None:
    """Load ip_vs and the scheduler's module as kube-proxy does; exit 3 where the kernel has none."""
    wanted = list(MODULES) + [f"ip_vs_{scheduler}", "xt_ipvs"]
    if not _loaded() or scheduler not in ("rr", "wrr", "sh"):
        for m in wanted:
            subprocess.run(["modprobe", "-q", m], capture_output=True)
    if not _loaded():
        release = os.uname().release
        raise HostLacks(
            f"proxyMode ipvs needs the kernel's ip_vs module, and this kernel ({release}) has none (modprobe ip_vs failed)",
            hint="use proxyMode iptables or nftables here, or run on a stock distribution kernel: scripts/vm-test.sh boots one",
        )


@contextmanager
def _ipvs(ns: str) -> Iterator:
    from pyroute2.ipvs import IPVS

    with netns.entered(ns):
        sock = IPVS()
    try:
        yield sock
    finally:
        sock.close()


def read(ns: str, dests_of: set | None = None, assumed: dict | None = None, six: bool | None = None) -> dict[tuple[str, str, int], VirtualServer]:
    """The node's IPVS table: every virtual server (one dump), with the real
    servers of those in `dests_of` (one dump each; None: all of them). The
    others get their real servers from `assumed` (what the last sync wrote),
    so a one-service change reads one service's real servers, not 10,000.
    `six`: IPv6's virtual servers alone (True) or IPv4's (False); None: both."""
    from pyroute2.ipvs import IPVSService

    out = {}
    with _ipvs(ns) as s:
        for msg in s.service("dump"):
            svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
            proto = PROTO_NAME.get(svc.get_attr("IPVS_SVC_ATTR_PROTOCOL"))
            if svc.get_attr("IPVS_SVC_ATTR_FWMARK") or proto is None:
                continue
            if six is not None and (svc.get_attr("IPVS_SVC_ATTR_AF") == socket.AF_INET6) != six:
                continue  # the other family's proxier's
            key = (svc.get_attr("IPVS_SVC_ATTR_ADDR"), proto, svc.get_attr("IPVS_SVC_ATTR_PORT"))
            if dests_of is None or key in dests_of or key not in (assumed or {}):
                keyed = IPVSService(addr=key[0], port=key[2], protocol=PROTO[proto])
                dests = tuple(
                    sorted(
                        (d.get_attr("IPVS_DEST_ATTR_ADDR"), d.get_attr("IPVS_DEST_ATTR_PORT"))
                        for d in (m.get_attr("IPVS_CMD_ATTR_DEST") for m in s.dest("dump", service=keyed))
                    )
                )
            else:
                dests = assumed[key].dests
            flags = svc.get_attr("IPVS_SVC_ATTR_FLAGS") or {}
            flags = flags.get("flags", 0) if hasattr(flags, "get") else 0
            timeout = svc.get_attr("IPVS_SVC_ATTR_TIMEOUT") or 0
            out[key] = VirtualServer(*key, svc.get_attr("IPVS_SVC_ATTR_SCHED_NAME") or "", timeout if flags & SVC_F_PERSISTENT else 0, dests)
    return out


# -- writing: pyroute2's IPVS messages, pipelined on one generic netlink socket ------------

NETLINK_GENERIC = 16
GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 16, 3
CMD = {"new-service": 1, "set-service": 2, "del-service": 3, "new-dest": 5, "del-dest": 7}
_family: int | None = None


def _family_id(ns: str) -> int:
    """The IPVS generic netlink family's id (the kernel's, the same in every namespace)."""
    global _family
    if _family is None:
        from pyroute2.netlink import ctrlmsg

        m = ctrlmsg()
        m["cmd"], m["version"] = CTRL_CMD_GETFAMILY, 1
        m["attrs"] = [("CTRL_ATTR_FAMILY_NAME", "IPVS")]
        m["header"]["type"], m["header"]["flags"] = GENL_ID_CTRL, 1  # NLM_F_REQUEST
        m.encode()
        with netns.entered(ns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
        with sock:
            sock.bind((0, 0))
            sock.send(bytes(m.data))
            reply = ctrlmsg(sock.recv(65536))
            reply.decode()
        if reply["header"]["type"] != GENL_ID_CTRL:
            raise KernelError("the kernel has no IPVS generic netlink family (is ip_vs loaded?)")
        _family = reply.get_attr("CTRL_ATTR_FAMILY_ID")
    return _family


def _af(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _svc_key(vs: VirtualServer) -> list:
    return [("IPVS_SVC_ATTR_AF", _af(vs.ip)), ("IPVS_SVC_ATTR_PROTOCOL", PROTO[vs.proto]), ("IPVS_SVC_ATTR_ADDR", vs.ip), ("IPVS_SVC_ATTR_PORT", vs.port)]


def _svc_full(vs: VirtualServer) -> list:
    # given explicitly: pyroute2's IPVSService would default to wlc
    flags = SVC_F_PERSISTENT if vs.timeout else 0
    return _svc_key(vs) + [
        ("IPVS_SVC_ATTR_SCHED_NAME", vs.scheduler),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": flags, "mask": 0xFFFF}),
        ("IPVS_SVC_ATTR_TIMEOUT", vs.timeout),
        # the whole address: a mask for IPv4, the prefix length 128 (a host-order u32, as
        # ipvsadm sends it; 128.0.0.0 is its bytes here) for IPv6
        ("IPVS_SVC_ATTR_NETMASK", "128.0.0.0" if ":" in vs.ip else "255.255.255.255"),
    ]


def _dest(ip: str, port: int, full: bool = True) -> list:
    attrs = [("IPVS_DEST_ATTR_ADDR_FAMILY", _af(ip)), ("IPVS_DEST_ATTR_ADDR", ip), ("IPVS_DEST_ATTR_PORT", port)]
    if full:  # masquerade (NAT) forwarding: pyroute2's IPVSDest would default to direct routing
        attrs += [("IPVS_DEST_ATTR_FWD_METHOD", FWD_MASQ), ("IPVS_DEST_ATTR_WEIGHT", 1), ("IPVS_DEST_ATTR_U_THRESH", 0), ("IPVS_DEST_ATTR_L_THRESH", 0)]
    return attrs


def _request(family: int, cmd: str, svc: list, dest: list | None = None) -> bytes:
    from pyroute2.netlink.generic.ipvs import ipvsmsg

    m = ipvsmsg()
    m["cmd"], m["version"] = CMD[cmd], 1
    m["attrs"] = [("IPVS_CMD_ATTR_SERVICE", {"attrs": svc})] + ([("IPVS_CMD_ATTR_DEST", {"attrs": dest})] if dest else [])
    m["header"]["type"], m["header"]["flags"] = family, 5  # NLM_F_REQUEST | NLM_F_ACK
    m.encode()
    return bytes(m.data)


def apply(ns: str, changes: Changes) -> None:
    """Make the changes in one pipelined batch (the kernel runs them in order):
    new virtual servers with their real servers, settings, real servers, removals."""
    if not len(changes):
        return
    from labctl.kernel.nl import Batch, bare_pyroute2

    bare_pyroute2()
    fam = _family_id(ns)
    b = Batch(ns, protocol=NETLINK_GENERIC)
    for vs in changes.add:
        b.add(_request(fam, "new-service", _svc_full(vs)), f"ipvsadm -A -{vs.proto[0]} {vs.address} -s {vs.scheduler}")
        for ip, port in vs.dests:
            b.add(_request(fam, "new-dest", _svc_key(vs), _dest(ip, port)), f"ipvsadm -a -{vs.proto[0]} {vs.address} -r {ip}:{port} -m")
    for vs in changes.set:
        b.add(_request(fam, "set-service", _svc_full(vs)), f"ipvsadm -E -{vs.proto[0]} {vs.address} -s {vs.scheduler}")
    for vs, (ip, port) in changes.add_dests:
        b.add(_request(fam, "new-dest", _svc_key(vs), _dest(ip, port)), f"ipvsadm -a -{vs.proto[0]} {vs.address} -r {ip}:{port} -m")
    for vs, (ip, port) in changes.remove_dests:
        b.add(_request(fam, "del-dest", _svc_key(vs), _dest(ip, port, full=False)), f"ipvsadm -d -{vs.proto[0]} {vs.address} -r {ip}:{port}")
    for vs in changes.remove:
        b.add(_request(fam, "del-service", _svc_key(vs)), f"ipvsadm -D -{vs.proto[0]} {vs.address}")
    b.commit()


def flush(ns: str) -> None:
    """Remove every virtual server (leaving IPVS mode)."""
    try:
        current = read(ns)
    except Exception:
        return  # no IPVS in this kernel: nothing to remove
    apply(ns, Changes(remove=list(current.values())))


def _ip(ns: str, *argv: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(run.in_netns(ns, ["ip", *argv]), input=input, capture_output=True, text=True)


def addresses(ns: str, six: bool = False) -> set[str] | None:
    """The addresses of one family on kube-ipvs0; None when the device does not exist."""
    p = _ip(ns, "-j", "-6" if six else "-4", "addr", "show", "dev", DEVICE)
    if p.returncode != 0:
        return None
    return {a["local"] for link in json.loads(p.stdout or "[]") for a in link.get("addr_info", []) if a.get("scope") != "link"}


def _plen(ip: str) -> str:
    return f"{ip}/128 nodad" if ":" in ip else f"{ip}/32"


def set_addresses(ns: str, add: list[str], remove: list[str], create: bool = False) -> None:
    """Add and remove kube-ipvs0's /32 (/128) addresses (making the device first), in one `ip -batch`."""
    lines = [f"link add {DEVICE} type dummy"] if create else []
    lines += [f"addr add {_plen(ip)} dev {DEVICE}" for ip in add]
    lines += [f"addr del {_plen(ip).split()[0]} dev {DEVICE}" for ip in remove]
    if not lines:
        return
    p = _ip(ns, "-batch", "-", input="\n".join(lines) + "\n")
    if p.returncode != 0:
        raise KernelError(f"`ip netns exec {ns} ip -batch -` ({DEVICE} addresses) failed: {p.stderr.strip()}")


def remove_device(ns: str) -> None:
    _ip(ns, "link", "del", DEVICE)
