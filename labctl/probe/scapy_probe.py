"""One probe on the real datapath, sent with scapy from inside a namespace.

The probing thread steps into the source namespace (setns is per thread) and
opens raw sockets there; they stay bound to it. Scapy builds the probe and
dissects what comes back, which decides the verdict, as the contract defines it:

    tcp   SYN -> SYN-ACK: open | RST: refused | ICMP unreachable: refused
          (port), blocked (administratively prohibited) | nothing: filtered
    udp   a datagram back: open | ICMP as for tcp | nothing: filtered
    icmp  echo reply: open | ICMP admin prohibited: blocked | nothing: filtered

For an open TCP or UDP port, the responder's JSON says who served and which
client address it saw (TCP through a real connection, UDP from the reply).
"""

from __future__ import annotations

import json
import random
import select
import socket
import struct
import time
from dataclasses import asdict, dataclass

from labctl.kernel import netns

# Sequence numbers (and source ports when the caller gives none) from the OS: the
# random module can be seeded, by test tools too. Callers take source ports from
# labctl.probe.ports, so a probe is a new flow, never one conntrack still remembers.
_rng = random.SystemRandom()
ICMP_UNREACH = 3
PORT_UNREACH = 3
PROHIBITED = {9: "net-prohibited", 10: "host-prohibited", 13: "admin-prohibited"}
UNREACH_NAMES = {0: "net-unreachable", 1: "host-unreachable", 2: "protocol-unreachable", 3: "port-unreachable"}


@dataclass
class ProbeResult:
    from_: str
    to: str
    target: str
    proto: str
    port: int | None
    verdict: str
    served_by: str | None = None
    client_ip_seen: str | None = None
    rtt_ms: float | None = None
    src_ip: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"from": d.pop("from_"), **d}


def _af(dst: str) -> int:
    return socket.AF_INET6 if ":" in dst else socket.AF_INET


def _source_ip(dst: str) -> str:
    """The address the kernel would send from, asked without sending anything."""
    with socket.socket(_af(dst), socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))
        return s.getsockname()[0]


def _classify_icmp(icmp) -> tuple[str, str]:
    code = int(icmp.code)
    if int(icmp.type) == ICMP_UNREACH:
        if code == PORT_UNREACH:
            return "refused", "icmp port-unreachable"
        if code in PROHIBITED:
            return "blocked", f"icmp {PROHIBITED[code]}"
        return "filtered", f"icmp {UNREACH_NAMES.get(code, f'unreachable code {code}')}"
    return "filtered", f"icmp type {int(icmp.type)} code {code}"


def _read_http_json(src_netns: str, dst: str, port: int, timeout: float, sport: int = 0) -> dict | None:
    """GET / over a real connection from the probe's own source port: the probe's
    SYN was answered and reset, so this is the same flow again and a load
    balancer that keeps per-client state (IPVS reuses the connection entry)
    sends it to the endpoint that answered the SYN, instead of the next one."""
    with netns.entered(src_netns):
        s = socket.socket(_af(dst), socket.SOCK_STREAM)
    with s:
        s.settimeout(timeout)
        if sport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", sport))
            except OSError:
                pass  # taken: any port will do
        try:
            s.connect((dst, port))
            host = f"[{dst}]" if ":" in dst else dst
            s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: labctl-probe\r\n\r\n".encode())
            data = b""
            while len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            return None
    _, _, body = data.partition(b"\r\n\r\n")
    return _json(body)


def _json(raw: bytes) -> dict | None:
    try:
        d = json.loads(raw.decode(errors="replace").strip() or "null")
    except json.JSONDecodeError:
        return None
    return d if isinstance(d, dict) else None


class _Wire:
    """Scapy builds and dissects; kernel raw sockets carry the packets.

    Sending: an IPPROTO_RAW socket (the packet goes through OUTPUT and
    POSTROUTING like any other, so NAT applies). Receiving: raw sockets for the
    probe's protocol and for ICMP, which get a copy of what is delivered to this
    namespace after netfilter, with NAT already reversed. A packet tap
    (AF_PACKET) would see replies before conntrack undoes a masquerade's port
    change (flannel masquerades node-to-pod traffic with --random-fully).
    """

    def __init__(self, proto: str):
        self.out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.out.setsockopt(socket.SOL_IP, socket.IP_HDRINCL, 1)
        numbers = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "icmp": socket.IPPROTO_ICMP}
        self.ins = [socket.socket(socket.AF_INET, socket.SOCK_RAW, numbers[proto])]
        if proto != "icmp":
            self.ins.append(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
        for s in self.ins:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def close(self) -> None:
        for s in [self.out, *self.ins]:
            s.close()

    def exchange(self, pkt, matches, timeout: float, dst: str = "", sport: int = 0):
        """Send pkt; return (reply, seconds) for the first packet `matches` accepts, or None.

        Time is the kernel's: each packet carries its receive timestamp
        (SO_TIMESTAMPNS), and a reply that arrived within `timeout` of the send
        counts even when this thread was not scheduled until later (a loaded
        machine, many probes in parallel); the round trip is measured the same way.

        Raw sockets see every packet of their protocol in the namespace, those of
        other probes running at the same time too: a packet from elsewhere that
        is not an ICMP error and not for our port is skipped before scapy parses it.
        """
        from scapy.layers.inet import IP

        src_bytes = socket.inet_aton(dst) if dst else b""
        sent = time.time()  # CLOCK_REALTIME, the clock of SO_TIMESTAMPNS
        self.out.sendto(bytes(pkt), (pkt[IP].dst, 0))
        deadline = sent + timeout
        last_look = False
        while True:
            left = deadline - time.time()
            if left <= 0:
                if last_look:
                    return None
                last_look, left = True, 0.0  # what arrived while we were not running
            ready, _, _ = select.select(self.ins, [], [], left)
            for s in ready:
                while True:
                    try:
                        data, anc, _, _ = s.recvmsg(65535, _TS_SPACE)
                    except BlockingIOError:
                        break
                    at = _stamp(anc)
                    if at > deadline:
                        continue
                    if src_bytes and len(data) >= 24 and data[9] in (6, 17):
                        ihl = (data[0] & 0x0F) * 4
                        if data[12:16] != src_bytes or struct.unpack_from("!H", data, ihl + 2)[0] != sport:
                            continue
                    reply = IP(data)
                    if matches(reply):
                        return reply, max(0.0, at - sent)
            if last_look:
                return None


_TS_SPACE = socket.CMSG_SPACE(16)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _stamp(anc) -> float:
    """The kernel's receive time of a packet (seconds, CLOCK_REALTIME); now when absent."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec + nsec / 1e9
    return time.time()


def _matcher(proto: str, src: str, dst: str, sport: int, dport: int | None, seq: int, six: bool = False):
    """Whether a packet is the answer to this probe: its reply, or an ICMP (ICMPv6) error
    quoting it."""
    from scapy.layers.inet import ICMP, TCP, UDP, IPerror, TCPerror, UDPerror
    from scapy.layers.inet6 import ICMPv6EchoReply, IPerror6

    def quoted(r):
        """The header an ICMP error quotes, when it is of a packet to dst; else None."""
        if six:
            icmp = _icmp6(r)
            if icmp is None or int(icmp.type) not in (1, 2, 3, 4) or not r.haslayer(IPerror6):
                return None
            inner = r[IPerror6]
        else:
            if not r.haslayer(ICMP) or int(r[ICMP].type) not in (3, 11, 12) or not r.haslayer(IPerror):
                return None
            inner = r[IPerror]
        return inner if inner.dst == dst else None

    def is_error_about_us(r) -> bool:
        inner = quoted(r)
        if inner is None:
            return False
        if proto == "tcp":
            return r.haslayer(TCPerror) and r[TCPerror].sport == sport and r[TCPerror].dport == dport
        if proto == "udp":
            return r.haslayer(UDPerror) and r[UDPerror].sport == sport and r[UDPerror].dport == dport
        return int(inner.nh) == 58 if six else (r.haslayer(ICMP) and int(inner.proto) == 1)

    def matches(r) -> bool:
        if r.dst != src:
            return False
        if is_error_about_us(r):
            return True
        if r.src != dst:
            return False
        if proto == "tcp":
            return r.haslayer(TCP) and r[TCP].sport == dport and r[TCP].dport == sport and r[TCP].ack == seq + 1
        if proto == "udp":
            return r.haslayer(UDP) and r[UDP].sport == dport and r[UDP].dport == sport
        if six:
            return r.haslayer(ICMPv6EchoReply) and r[ICMPv6EchoReply].id == sport
        return r.haslayer(ICMP) and int(r[ICMP].type) == 0 and r[ICMP].id == sport

    return matches


def probe(
    src_label: str,
    src_netns: str,
    dst: str,
    target: str,
    proto: str,
    port: int | None,
    timeout: float,
    fetch: bool = True,
    sport: int | None = None,
    seq: int | None = None,
) -> ProbeResult:
    """One probe; `fetch` False skips the real connection that reads the responder's JSON (TCP).
    `sport`: the source port (or ICMP id), from labctl.probe.ports; default random."""

    with netns.entered(src_netns):
        try:
            src_ip = _source_ip(dst)
        except OSError as e:
            return ProbeResult(src_label, dst, target, proto, port, "filtered", detail=f"no route: {e.strerror}")
        wire = _Wire6(proto) if ":" in dst else _Wire(proto)
    result = ProbeResult(src_label, dst, target, proto, port, "filtered", src_ip=src_ip)
    sport = sport or _rng.randint(33000, 60999)
    traced = seq is not None  # a trace's probe: its UDP payload starts with the seq, which its rules match
    seq = _rng.randint(0, 2**31) if seq is None else seq
    six = isinstance(wire, _Wire6)
    pkt = _packet(six, proto, src_ip, dst, sport, port, seq, traced)
    try:
        if six:
            got = wire.exchange(pkt, _matcher(proto, src_ip, dst, sport, port, seq, six=True), timeout)
        else:
            got = wire.exchange(pkt, _matcher(proto, src_ip, dst, sport, port, seq), timeout, dst if proto != "icmp" else "", sport)
    finally:
        wire.close()
    return _conclude(result, got, six, src_netns, dst, proto, port, timeout, fetch, sport)


def _packet(six: bool, proto: str, src_ip: str, dst: str, sport: int, port, seq: int, traced: bool):
    """The probe: a SYN, a datagram (a trace's starts with the seq its rules match) or an echo request."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP  # scapy is slow to import: only probes pay for it
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    ip = IPv6(src=src_ip, dst=dst) if six else IP(src=src_ip, dst=dst)
    if proto == "tcp":
        return ip / TCP(sport=sport, dport=port, flags="S", seq=seq, window=64240)
    if proto == "udp":
        return ip / UDP(sport=sport, dport=port) / ((seq.to_bytes(4, "big") if traced else b"") + b"labctl-probe\n")
    return ip / (ICMPv6EchoRequest(id=sport, seq=1) if six else ICMP(id=sport, seq=1))


def _conclude(result: ProbeResult, got, six: bool, src_netns: str, dst: str, proto: str, port, timeout: float, fetch: bool, sport: int) -> ProbeResult:
    """The verdict from what came back (or nothing), as the module's text says."""
    from scapy.layers.inet import ICMP, TCP, UDP

    if got is None:
        result.detail = f"no answer within {timeout:g} s"
        return result
    reply, seconds = got
    result.rtt_ms = round(seconds * 1000, 3)
    if six:
        icmp = _icmp6(reply)
        error = _classify_icmp6(icmp) if icmp is not None and int(icmp.type) != 129 else None
    else:
        error = _classify_icmp(reply[ICMP]) if reply.haslayer(ICMP) and int(reply[ICMP].type) != 0 else None
    if error is not None:
        result.verdict, result.detail = error[0], f"{error[1]} from {reply.src}"
        return result
    if proto == "tcp":
        flags = reply[TCP].flags
        if flags.S and flags.A:
            result.verdict = "open"
            if fetch:
                _fill(result, _read_http_json(src_netns, dst, port, timeout, sport))
        elif flags.R:
            result.verdict = "refused"
            result.detail = "tcp reset"
        else:
            result.detail = f"tcp flags {flags}"
    elif proto == "udp":
        result.verdict = "open"
        _fill(result, _json(bytes(reply[UDP].payload)))
    else:
        result.verdict = "open"
        result.detail = f"echo reply from {reply.src}"
    return result


def _fill(result: ProbeResult, info: dict | None) -> None:
    if not info:
        return
    result.served_by = info.get("pod")
    client = info.get("client")
    if isinstance(client, str):
        result.client_ip_seen = client.rsplit(":", 1)[0].strip("[]")


# -- IPv6 ------------------------------------------------------------------------------

ICMP6_UNREACH = 1
ICMP6_PORT_UNREACH = 4
ICMP6_PROHIBITED = {1: "admin-prohibited", 5: "source-policy-failed", 6: "reject-route"}
ICMP6_UNREACH_NAMES = {0: "no-route", 2: "beyond-scope", 3: "address-unreachable", 4: "port-unreachable"}
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)


def _classify_icmp6(icmp) -> tuple[str, str]:
    kind, code = int(icmp.type), int(icmp.code)
    if kind == ICMP6_UNREACH:
        if code == ICMP6_PORT_UNREACH:
            return "refused", "icmp6 port-unreachable"
        if code in ICMP6_PROHIBITED:
            return "blocked", f"icmp6 {ICMP6_PROHIBITED[code]}"
        return "filtered", f"icmp6 {ICMP6_UNREACH_NAMES.get(code, f'unreachable code {code}')}"
    return "filtered", f"icmp6 type {kind} code {code}"


class _Wire6:
    """_Wire for IPv6: the packet sent whole on an IPPROTO_RAW socket (Linux takes the
    IPv6 header from it), replies read on raw sockets of the probe's protocol and of
    ICMPv6. An IPv6 raw socket hands over the payload only: the header is made again
    from the source address and the packet's destination (IPV6_PKTINFO), after
    netfilter, NAT reversed, as for IPv4."""

    def __init__(self, proto: str):
        self.out = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        numbers = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "icmp": socket.IPPROTO_ICMPV6}
        self.ins = {numbers[proto]: socket.socket(socket.AF_INET6, socket.SOCK_RAW, numbers[proto])}
        if proto != "icmp":
            self.ins[socket.IPPROTO_ICMPV6] = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        for s in self.ins.values():
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)

    def close(self) -> None:
        for s in [self.out, *self.ins.values()]:
            s.close()

    def exchange(self, pkt, matches, timeout: float):
        from scapy.layers.inet6 import IPv6

        sent = time.time()
        self.out.sendto(bytes(pkt), (pkt[IPv6].dst, 0))
        deadline = sent + timeout
        last_look = False
        by_sock = {s: nh for nh, s in self.ins.items()}
        while True:
            left = deadline - time.time()
            if left <= 0:
                if last_look:
                    return None
                last_look, left = True, 0.0
            ready, _, _ = select.select(list(by_sock), [], [], left)
            for s in ready:
                while True:
                    try:
                        data, anc, _, addr = s.recvmsg(65535, _TS_SPACE + socket.CMSG_SPACE(20))
                    except BlockingIOError:
                        break
                    at = _stamp(anc)
                    if at > deadline:
                        continue
                    dst = next((socket.inet_ntop(socket.AF_INET6, d[:16]) for lv, k, d in anc if lv == socket.IPPROTO_IPV6 and k == IPV6_PKTINFO), "::")
                    reply = IPv6(src=addr[0].split("%")[0], dst=dst, nh=by_sock[s], plen=len(data)) / data
                    reply = IPv6(bytes(reply))
                    if matches(reply):
                        return reply, max(0.0, at - sent)
            if last_look:
                return None


def _icmp6(r):
    """The ICMPv6 message right after the IPv6 header, or None."""
    return r.payload if int(r.nh) == 58 and hasattr(r.payload, "type") else None
