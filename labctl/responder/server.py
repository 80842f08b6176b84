"""The responder: one process per lab answering on every pod's container ports
(and, as a layer-2 speaker, ARP for LoadBalancer IPs on the nodes that announce them).

A thousand pods must not mean a thousand interpreters. setns() is per thread
and a socket stays in the namespace it was created in, so this one process
steps into each pod's namespace, opens its listening sockets there, steps back
and serves them all from one epoll loop:

- TCP: an HTTP/1.1 server (Date and Server headers, then the connection is
  closed); any request gets 200 and a JSON body naming the pod, the client
  address as the pod saw it (so NAT is visible) and the request it received
  (method, path, host, proto, headers: what a proxy in between changed).
- UDP: every datagram is answered with the same JSON.
- DNS: on the cluster DNS pod's port 53 (UDP and TCP), the cluster zone's
  records (labctl.addons.dns.server; dnspython is imported only then), forwarding
  other names from a thread inside the pod's namespace.

It reads its configuration from <statedir>/responder.json and is told to
reload it over a unix socket (<statedir>/responder.sock): `ping`, `reload`,
each answered `ok ...` or `error ...` once done, so callers synchronise on the
answer rather than on time. Only the standard library and labctl.kernel.netns
are imported at start, to start fast.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from labctl.kernel import netns
from labctl.responder import arp, ndp

PROTOCOL = 6  # bumped whenever the config or the control protocol changes
IDLE_REPLY = 1.0  # answer a TCP client that sent no complete request after this long
MAX_REQUEST = 8192


@dataclass
class Binding:
    pod: str
    node: str
    ip: str
    port: int
    proto: str  # TCP | UDP
    dns: bool = False  # the cluster DNS pod's port 53: answered by the DNS server
    health: tuple[str, str, int] | None = None  # a node's health check node port: (namespace, service, local endpoints)
    ips: tuple[str, ...] = ()  # every address of the pod (a dual-stack lab's), the first being ip

    def body(self, client: tuple, request: dict | None = None) -> bytes:
        host = unmapped(client[0])
        six = ":" in host
        ip = next((a for a in self.ips if (":" in a) == six), self.ip)
        answer = {
            "pod": self.pod,
            "node": self.node,
            "ip": ip,
            "port": self.port,
            "protocol": self.proto,
            "client": f"[{host}]:{client[1]}" if six else f"{host}:{client[1]}",
        }
        if request is not None:
            answer["request"] = request
        return json.dumps(answer).encode()


def unmapped(host: str) -> str:
    """An IPv4 client seen by a dual-stack socket (::ffff:10.0.0.1) as its IPv4 address."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def parse_request(raw: bytes) -> dict | None:
    """The HTTP request a client sent, as the contract's `request` object: method, path,
    host, proto and headers (lower-case name -> list of values, in order). None when
    what came is no HTTP request (a bare TCP probe)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
    lines = head.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return {"method": parts[0], "path": parts[1], "host": (headers.get("host") or [""])[0], "proto": parts[2], "headers": headers}


def http_answer(body: bytes) -> bytes:
    """An HTTP/1.1 200 with the headers an HTTP server sends (Date, Server), then closed."""
    from email.utils import formatdate

    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        "Server: labctl-responder\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body) + 1}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body + b"\n"


@dataclass
class Conn:
    sock: socket.socket
    binding: Binding
    peer: tuple[str, int]
    since: float
    inbuf: bytearray = field(default_factory=bytearray)
    out: bytes | None = None
    open_: bool = True  # DNS over TCP: a connection carries queries until the client closes it


class Responder:
    def __init__(self, statedir: str):
        self.statedir = statedir
        self.config_path = os.path.join(statedir, "responder.json")
        self.control_path = os.path.join(statedir, "responder.sock")
        self.sel = selectors.DefaultSelector()
        self.sockets: dict[tuple[str, int, str], tuple[socket.socket, Binding]] = {}
        self.conns: dict[int, Conn] = {}
        self.speakers: dict[str, tuple[socket.socket, bytes, set[str]]] = {}  # node netns -> ARP socket, MAC, IPs
        self.speakers6: dict[str, tuple[socket.socket, bytes, set[str]]] = {}  # node netns -> NDP socket, MAC, IPv6 LoadBalancer IPs
        self.dns = None  # labctl.addons.dns.server.Answerer, when the lab has a cluster DNS
        self.dns_netns: str | None = None
        self.forwarded: queue.SimpleQueue = queue.SimpleQueue()  # (Conn or (sock, peer), reply) from forwarding threads
        self.wake_r, self.wake_w = socket.socketpair()
        self.running = True

    # -- configuration -------------------------------------------------------

    def reload(self) -> str:
        with open(self.config_path) as f:
            config = json.load(f)
        wanted: dict[tuple[str, int, str], tuple[str, Binding]] = {}
        dns_ports = set()
        for pod in config["pods"]:
            for port, proto in pod["ports"]:
                b = Binding(pod["key"], pod["node"], pod["ip"], port, proto, dns=[port, proto] in (pod.get("dns") or []), ips=tuple(pod.get("ips") or ()))
                wanted[(pod["key"], port, proto)] = (pod["netns"], b)
                if b.dns:
                    dns_ports.add((pod["key"], port, proto))
                    self.dns_netns = pod["netns"]
        for hc in config.get("healthchecks") or []:
            health = (hc["namespace"], hc["name"], hc["local"])
            b = Binding(f"hc/{hc['node']}/{hc['port']}", hc["node"], hc["ip"], hc["port"], "TCP", health=health)
            wanted[(b.pod, b.port, "TCP")] = (hc["netns"], b)
        if config.get("dns"):
            from labctl.addons.dns.server import Answerer

            self.dns = Answerer(config["dns"])
        else:
            self.dns = None
        for key in [k for k in self.sockets if k not in wanted]:
            sock, _ = self.sockets.pop(key)
            self.sel.unregister(sock)
            sock.close()
        # Connections of pods that are gone are closed too: they pin the namespace.
        gone = {k[0] for k in wanted}
        for conn in list(self.conns.values()):
            if conn.binding.pod not in gone:
                self._close(conn)
        errors = []
        by_ns: dict[str, list[tuple[tuple[str, int, str], Binding]]] = {}
        for key, (ns, b) in wanted.items():
            if key in self.sockets:
                self.sockets[key][1].ip = b.ip
                self.sockets[key][1].dns = b.dns
                self.sockets[key][1].health = b.health
                continue
            by_ns.setdefault(ns, []).append((key, b))
        for ns, items in by_ns.items():
            try:
                with netns.entered(ns):
                    opened = [(key, b, self._listen(b)) for key, b in items]
            except OSError as e:
                errors.append(f"{ns}: {e}")
                continue
            for key, b, sock in opened:
                self.sockets[key] = (sock, b)
                self.sel.register(sock, selectors.EVENT_READ, ("listen" if b.proto == "TCP" else "udp", b))
        errors += self._announce(config.get("announce") or {})
        if errors:
            return "error " + "; ".join(errors[:5])
        return f"ok {len(self.sockets)}"

    def _announce(self, wanted: dict[str, list[str]]) -> list[str]:
        """Answer ARP for LoadBalancer IPs on the nodes that announce them (NDP for IPv6 ones)."""
        errors = []
        for six, speakers, proto, role in ((False, self.speakers, arp, "arp"), (True, self.speakers6, ndp, "ndp")):
            mine = {ns: [ip for ip in ips if (":" in ip) == six] for ns, ips in wanted.items()}
            errors += self._speak({ns: ips for ns, ips in mine.items() if ips}, speakers, proto, role)
        return errors

    def _speak(self, wanted: dict[str, list[str]], speakers: dict, proto, role: str) -> list[str]:
        """One family's speakers (`proto`: labctl.responder.arp or .ndp): made where an IP is
        announced, closed where none is any more, every new IP announced at once."""
        errors = []
        for ns in [n for n in speakers if n not in wanted]:
            sock, _, _ = speakers.pop(ns)
            self.sel.unregister(sock)
            sock.close()
        for ns, ips in wanted.items():
            if ns not in speakers:
                try:
                    with netns.entered(ns):
                        sock, mac = proto.open_speaker()
                except OSError as e:
                    errors.append(f"{ns}: {role.upper()} speaker: {e}")
                    continue
                speakers[ns] = (sock, mac, set())
                self.sel.register(sock, selectors.EVENT_READ, (role, ns))
            sock, mac, current = speakers[ns]
            for ip in set(ips) - current:
                proto.announce(sock, mac, ip)
            current.clear()
            current.update(ips)
        return errors

    @staticmethod
    def _listen(b: Binding) -> socket.socket:
        kind = socket.SOCK_STREAM if b.proto == "TCP" else socket.SOCK_DGRAM
        try:  # one socket for both families (IPv4 clients as ::ffff:a.b.c.d), as a server on [::] is
            sock = socket.socket(socket.AF_INET6, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            where = "::"
        except OSError:  # a kernel without IPv6
            sock = socket.socket(socket.AF_INET, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            where = "0.0.0.0"
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((where, b.port))
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock

    # -- serving -------------------------------------------------------------

    def _accept(self, sock: socket.socket, b: Binding) -> None:
        while True:
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            c = Conn(conn, b, peer, time.monotonic())
            self.conns[conn.fileno()] = c
            self.sel.register(conn, selectors.EVENT_READ, ("conn", c))

    def _read(self, c: Conn) -> None:
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        if not data:
            self._close(c)
            return
        c.inbuf += data
        if c.binding.dns and self.dns is not None:
            self._read_dns(c)
            return
        if b"\r\n\r\n" in c.inbuf or b"\n\n" in c.inbuf or len(c.inbuf) >= MAX_REQUEST:
            self._respond(c)

    def _respond(self, c: Conn) -> None:
        if c.binding.health is not None:
            from labctl.responder import healthcheck

            c.out = healthcheck.response(*c.binding.health)
        else:
            c.out = http_answer(c.binding.body(c.peer, parse_request(bytes(c.inbuf))))
        self.sel.modify(c.sock, selectors.EVENT_WRITE, ("conn", c))
        self._write(c)

    def _write(self, c: Conn) -> None:
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        c.out = c.out[n:]
        if not c.out and c.binding.dns:
            c.out = None
            self.sel.modify(c.sock, selectors.EVENT_READ, ("conn", c))
            return
        if not c.out:
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._close(c)

    def _close(self, c: Conn) -> None:
        self.conns.pop(c.sock.fileno(), None)
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _udp(self, sock: socket.socket, b: Binding) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if b.dns and self.dns is not None:
                reply = self._dns(data, False, (sock, peer))
                if reply is None:
                    continue
            else:
                reply = b.body(peer) + b"\n"
            try:
                sock.sendto(reply, peer)
            except OSError:
                pass

    # -- DNS -----------------------------------------------------------------

    def _dns(self, wire: bytes, tcp: bool, back) -> bytes | None:
        """The answer to send now, or None (dropped, or forwarded: the answer
        comes back through self.forwarded to `back`, a Conn or (socket, peer))."""
        from labctl.addons.dns.server import FORWARD

        answerer = self.dns
        reply = answerer.handle(wire, tcp)
        if reply is not FORWARD:
            return reply  # type: ignore[return-value]

        def ask() -> None:
            try:
                with netns.entered(self.dns_netns):
                    answer = answerer.forward(wire, tcp)
            except Exception as e:  # the thread must hand something back
                print(f"dns forward: {e}", flush=True)
                return
            self.forwarded.put((back, answer))
            try:
                self.wake_w.send(b"x")
            except OSError:
                pass

        threading.Thread(target=ask, daemon=True).start()
        return None

    def _forwarded(self) -> None:
        try:
            self.wake_r.recv(4096)
        except OSError:
            pass
        while True:
            try:
                back, answer = self.forwarded.get_nowait()
            except queue.Empty:
                return
            if isinstance(back, Conn):
                if back.sock.fileno() in self.conns:
                    self._send_dns(back, answer)
            else:
                sock, peer = back
                try:
                    sock.sendto(answer, peer)
                except OSError:
                    pass

    def _read_dns(self, c: Conn) -> None:
        """DNS over TCP: two-byte length, message; as many as the client sends."""
        while len(c.inbuf) >= 2:
            (n,) = struct.unpack("!H", c.inbuf[:2])
            if len(c.inbuf) < 2 + n:
                return
            wire = bytes(c.inbuf[2 : 2 + n])
            del c.inbuf[: 2 + n]
            c.since = time.monotonic()
            reply = self._dns(wire, True, c)
            if reply is not None:
                self._send_dns(c, reply)

    def _send_dns(self, c: Conn, reply: bytes) -> None:
        c.out = (c.out or b"") + struct.pack("!H", len(reply)) + reply
        self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("conn", c))

    def _control(self, server: socket.socket) -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                cmd = conn.recv(256).decode().strip()
                if cmd == "ping":
                    reply = f"ok {len(self.sockets)} protocol={PROTOCOL}"
                elif cmd == "reload":
                    reply = self.reload()
                elif cmd == "stop":
                    self.running = False
                    reply = "ok"
                else:
                    reply = f"error unknown command {cmd!r}"
            except Exception as e:  # the responder must outlive a bad request
                reply = f"error {type(e).__name__}: {e}"
            try:
                conn.sendall(reply.encode() + b"\n")
            except OSError:
                pass

    def _sweep(self) -> None:
        now = time.monotonic()
        for c in list(self.conns.values()):
            if c.binding.dns:
                if now - c.since > 10 * IDLE_REPLY:
                    self._close(c)
                continue
            if c.out is None and now - c.since > IDLE_REPLY:
                self._respond(c)
            elif now - c.since > 10 * IDLE_REPLY:
                self._close(c)

    def serve(self) -> None:
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        server.bind(self.control_path)
        server.listen(16)
        self.sel.register(server, selectors.EVENT_READ, ("control", None))
        self.wake_r.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("forwarded", None))
        print(f"responder for {self.statedir}: {self.reload()}", flush=True)
        while self.running:
            for key, events in self.sel.select(timeout=0.25 if self.conns else None):
                role, obj = key.data
                if role == "listen":
                    self._accept(key.fileobj, obj)
                elif role == "udp":
                    self._udp(key.fileobj, obj)
                elif role == "conn":
                    if events & selectors.EVENT_WRITE:
                        self._write(obj)
                    else:
                        self._read(obj)
                elif role == "arp":
                    sock, mac, ips = self.speakers[obj]
                    arp.answer(sock, mac, ips)
                elif role == "ndp":
                    sock, mac, ips = self.speakers6[obj]
                    ndp.answer(sock, mac, ips)
                elif role == "control":
                    self._control(key.fileobj)
                elif role == "forwarded":
                    self._forwarded()
            if self.conns:
                self._sweep()
        server.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m labctl.responder STATEDIR", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    r = Responder(argv[0])
    try:
        with open(r.config_path) as f:
            preload = json.load(f).get("preload") or []
    except (OSError, ValueError):
        preload = []
    for module in preload:  # add-ons' imports (dnspython, ~80 ms) happen while the lab is built, not on reload
        if isinstance(module, str) and module.startswith("labctl."):
            threading.Thread(target=__import__, args=(module,), daemon=True).start()

    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    r.serve()
    return 0
