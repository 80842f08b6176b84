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

    def http(self) -> dict:
        return {"status": self.status, "location": self.location, "response_headers": self.response_headers, "backend_saw": self.backend_saw, "tls": None}


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


def probe(src_netns: str, dst: str, port: int, path: str, host: str, method: str, headers: list[tuple[str, str]], timeout: float) -> HttpAnswer:
    with netns.entered(src_netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(timeout)
        t0 = time.monotonic()
        try:
            s.connect((dst, port))
        except ConnectionRefusedError:
            return HttpAnswer("refused", detail="tcp reset")
        except OSError as e:
            if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return HttpAnswer("blocked" if e.errno == errno.EHOSTUNREACH else "filtered", detail=str(e))
            return HttpAnswer("filtered", detail="no answer")
        rtt = (time.monotonic() - t0) * 1000
        src_ip = s.getsockname()[0]
        data = b""
        try:
            s.sendall(request_bytes(path, host, method, headers))
            while len(data) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            return HttpAnswer("open", rtt_ms=rtt, src_ip=src_ip, detail=f"connected, then {e}")
    status, resp_headers, body = parse_response(data)
    answer = HttpAnswer("open", status, (resp_headers.get("location") or [None])[0], resp_headers, rtt_ms=round(rtt, 3), src_ip=src_ip)
    try:
        echoed = json.loads(body.decode(errors="replace").strip() or "null")
    except json.JSONDecodeError:
        echoed = None
    if isinstance(echoed, dict) and "pod" in echoed:
        answer.backend_saw = echoed.get("request")
        answer.served_by = echoed.get("pod")
        answer.client_ip_seen = str(echoed.get("client", "")).rpartition(":")[0] or None
    return answer
