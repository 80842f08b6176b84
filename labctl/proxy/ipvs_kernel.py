"""The IPVS mode's side effects in one node: kube-ipvs0 and its addresses, and
the IPVS table through pyroute2's generic netlink API (in the node's
namespace). The rules and sets go through iptables-restore and ipset restore
like every other mode (see sync.py).

pyroute2's defaults are not kube-proxy's: IPVSDest forwards by direct routing
(fwd_method 3) and IPVSService schedules with wlc; both are given explicitly.
A changed virtual server is "set", never "update" (which pyroute2 maps to a
delete).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from contextlib import contextmanager
from typing import Iterator

from labctl.errors import HostLacks, KernelError
from labctl.kernel import netns
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


def _service(vs: VirtualServer):
    from pyroute2.ipvs import IPVSService

    flags = SVC_F_PERSISTENT if vs.timeout else 0
    return IPVSService(
        addr=vs.ip, port=vs.port, protocol=PROTO[vs.proto], sched_name=vs.scheduler,
        timeout=vs.timeout, flags={"flags": flags, "mask": 0xFFFF},
    )


def _dest(ip: str, port: int):
    from pyroute2.ipvs import IPVSDest

    return IPVSDest(addr=ip, port=port, fwd_method=FWD_MASQ, weight=1)


def read(ns: str, dests_of: set | None = None, assumed: dict | None = None) -> dict[tuple[str, str, int], VirtualServer]:
    """The node's IPVS table: every virtual server (one dump), with the real
    servers of those in `dests_of` (one dump each; None: all of them). The
    others get their real servers from `assumed` (what the last sync wrote),
    so a one-service change reads one service's real servers, not 10,000."""
    from pyroute2.ipvs import IPVSDest, IPVSService

    out = {}
    with _ipvs(ns) as s:
        for msg in s.service("dump"):
            svc = IPVSService.from_message(msg)
            if svc.get("fwmark") or svc.get("protocol") not in PROTO_NAME:
                continue
            key = (svc["addr"], PROTO_NAME[svc["protocol"]], svc["port"])
            if dests_of is None or key in dests_of or key not in (assumed or {}):
                dests = tuple(sorted((d["addr"], d["port"]) for d in map(IPVSDest.from_message, s.dest("dump", service=svc))))
            else:
                dests = assumed[key].dests
            flags = svc.get("flags", {})
            flags = flags.get("flags", 0) if isinstance(flags, dict) else flags
            vs = VirtualServer(*key, svc.get("sched_name", ""), svc.get("timeout", 0) if flags & SVC_F_PERSISTENT else 0, dests)
            out[vs.key] = vs
    return out


def apply(ns: str, changes: Changes) -> None:
    """Make the changes, in an order that never leaves a virtual server without its real servers for long."""
    if not len(changes):
        return
    with _ipvs(ns) as s:
        try:
            for vs in changes.add:
                svc = _service(vs)
                s.service("add", service=svc)
                for ip, port in vs.dests:
                    s.dest("add", service=svc, dest=_dest(ip, port))
            for vs in changes.set:
                s.service("set", service=_service(vs))
            for vs, (ip, port) in changes.add_dests:
                s.dest("add", service=_service(vs), dest=_dest(ip, port))
            for vs, (ip, port) in changes.remove_dests:
                s.dest("del", service=_service(vs), dest=_dest(ip, port))
            for vs in changes.remove:
                s.service("del", service=_service(vs))
        except Exception as e:  # NetlinkError: name the node and the operation's service
            raise KernelError(f"IPVS in {ns}: {e}") from e


def flush(ns: str) -> None:
    """Remove every virtual server (leaving IPVS mode)."""
    try:
        current = read(ns)
    except Exception:
        return  # no IPVS in this kernel: nothing to remove
    apply(ns, Changes(remove=list(current.values())))


def _ip(ns: str, *argv: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={netns.path(ns)}", "--", "ip", *argv], input=input, capture_output=True, text=True)


def addresses(ns: str) -> set[str] | None:
    """The addresses on kube-ipvs0; None when the device does not exist."""
    p = _ip(ns, "-j", "-4", "addr", "show", "dev", DEVICE)
    if p.returncode != 0:
        return None
    return {a["local"] for link in json.loads(p.stdout or "[]") for a in link.get("addr_info", [])}


def set_addresses(ns: str, add: list[str], remove: list[str], create: bool = False) -> None:
    """Add and remove kube-ipvs0's /32 addresses (making the device first), in one `ip -batch`."""
    lines = [f"link add {DEVICE} type dummy"] if create else []
    lines += [f"addr add {ip}/32 dev {DEVICE}" for ip in add]
    lines += [f"addr del {ip}/32 dev {DEVICE}" for ip in remove]
    if not lines:
        return
    p = _ip(ns, "-batch", "-", input="\n".join(lines) + "\n")
    if p.returncode != 0:
        raise KernelError(f"`ip netns exec {ns} ip -batch -` ({DEVICE} addresses) failed: {p.stderr.strip()}")


def remove_device(ns: str) -> None:
    _ip(ns, "link", "del", DEVICE)
