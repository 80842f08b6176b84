"""`labctl probe --http`: one real HTTP/1.1 request from inside a namespace, and
what came back, including what the backend saw (the responder echoes the
request it received, so rewritten paths and added headers show)."""

from __future__ import annotations

import errno
import json
import socket
import time
from dataclasses import dataclass, field

from labctl.kernel import netns


@dataclass
class HttpAnswer:
    verdict: str  # open | refused | filtered (as the L4 probe's)
    status: int | None = None
    location: str | None = None
    response_headers: dict[str, list[str]] = field(default_factory=dict)
    backend_saw: dict | None = None
    served_by: str | None = None
    client_ip_seen: str | None = None
    rtt_ms: float | None = None
    src_ip: str | None = None
    detail: str | None = None
    tls: dict | None = None  # {verified, subject, issuer, san, error}

    def http(self) -> dict:
        return {"status": self.status, "location": self.location, "response_headers": self.response_headers, "backend_saw": self.backend_saw, "tls": self.tls}


def request_bytes(path: str, host: str, method: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: labctl-probe", "Accept: */*", "Connection: close"]
    given = {k.lower() for k, _ in headers}
    lines = [x for x in lines if x.split(":", 1)[0].lower() not in given or x.startswith(method)]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_response(data: bytes) -> tuple[int | None, dict[str, list[str]], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        body = _unchunk(body)
    return status, headers, body


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


@dataclass
class TlsOptions:
    sni: str
    cafile: str | None  # the lab's CA (None: verify nothing)


def _handshake(raw: socket.socket, opts: TlsOptions, verify: bool):
    import ssl

    ctx = ssl.create_default_context(cafile=opts.cafile) if verify else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(raw, server_hostname=opts.sni)


def _cert_info(der: bytes | None) -> dict:
    if not der:
        return {"subject": None, "issuer": None, "san": []}
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        san = []
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(), "san": list(san)}


def _connect(src_netns: str, dst: str, port: int, timeout: float) -> tuple[socket.socket | None, HttpAnswer | None, float]:
    """A TCP connection from inside the namespace, or the answer that says why not."""
    with netns.entered(src_netns):
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    t0 = time.monotonic()
    try:
        s.connect((dst, port))
    except ConnectionRefusedError:
        s.close()
        return None, HttpAnswer("refused", detail="tcp reset"), 0.0
    except OSError as e:
        s.close()
        if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return None, HttpAnswer("blocked" if e.errno == errno.EHOSTUNREACH else "filtered", detail=str(e)), 0.0
        return None, HttpAnswer("filtered", detail="no answer"), 0.0
    return s, None, (time.monotonic() - t0) * 1000


def probe(
    src_netns: str, dst: str, port: int, path: str, host: str, method: str, headers: list[tuple[str, str]], timeout: float, tls: TlsOptions | None = None
) -> HttpAnswer:
    """One request. With `tls`: the handshake is verified against the lab's CA and the SNI
    name; when that fails, the request is made anyway over a new unverified handshake (as
    `curl -k`), and the answer's `tls` says why."""
    s, failed, rtt = _connect(src_netns, dst, port, timeout)
    if s is None:
        return failed
    report = None
    conn: socket.socket = s
    if tls is not None and tls.cafile is None:  # --insecure: no verification at all
        try:
            conn = _handshake(s, tls, verify=False)
            report = {"verified": None, **_cert_info(conn.getpeercert(binary_form=True)), "error": None}
        except OSError as e:
            s.close()
            return HttpAnswer("open", rtt_ms=round(rtt, 3), detail=f"TLS handshake failed: {e}")
    elif tls is not None:
        try:
            conn = _handshake(s, tls, verify=True)
            report = {"verified": True, **_cert_info(conn.getpeercert(binary_form=True)), "error": None}
        except OSError as e:
            s.close()
            report = {"verified": False, "error": getattr(e, "verify_message", None) or str(e)}
            s, failed, rtt = _connect(src_netns, dst, port, timeout)
            if s is None:
                return failed
            try:
                conn = _handshake(s, tls, verify=False)
            except OSError as e2:
                s.close()
                answer = HttpAnswer("open", rtt_ms=round(rtt, 3), detail=f"TLS handshake failed: {e2}")
                answer.tls = {**report, "subject": None, "issuer": None, "san": []}
                return answer
            report.update(_cert_info(conn.getpeercert(binary_form=True)))
    with conn:
        answer = _exchange(conn, path, host, method, headers, rtt)
    answer.tls = report
    return answer


def _exchange(conn: socket.socket, path: str, host: str, method: str, headers: list[tuple[str, str]], rtt: float) -> HttpAnswer:
    src_ip = conn.getsockname()[0]
    data = b""
    try:
        conn.sendall(request_bytes(path, host, method, headers))
        while len(data) < 1 << 20:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        if not data:
            return HttpAnswer("open", rtt_ms=round(rtt, 3), src_ip=src_ip, detail=f"connected, then {e}")
    status, resp_headers, body = parse_response(data)
    answer = HttpAnswer("open", status, (resp_headers.get("location") or [None])[0], resp_headers, rtt_ms=round(rtt, 3), src_ip=src_ip)
    try:
        echoed = json.loads(body.decode(errors="replace").strip() or "null")
    except json.JSONDecodeError:
        echoed = None
    if isinstance(echoed, dict) and "pod" in echoed:
        answer.backend_saw = echoed.get("request")
        answer.served_by = echoed.get("pod")
        answer.client_ip_seen = str(echoed.get("client", "")).rpartition(":")[0].strip("[]") or None
    return answer
