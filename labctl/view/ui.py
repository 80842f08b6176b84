"""labctl ui: a local web page for one lab, served from the process that runs it.

The page (ui.html, next to this file: plain HTML, CSS and JavaScript, nothing to
build or download) asks four things of the server, each answered by labctl's own
functions given by the caller: /api/status (status --json, polled: live),
/api/graph.svg (labctl graph), /api/verify (the verify matrix, every pair's
probes) and /api/trace?from=&to=&port=&proto= (labctl trace's JSON). Probing
calls run one at a time (a trace's monitors and logs are per node).

The server is the only side effect here; it listens where the user asked
(127.0.0.1:8080 by default) and stops on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from labctl.errors import LabError


def page() -> bytes:
    return resources.files("labctl.view").joinpath("ui.html").read_bytes()


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (or :PORT, or PORT) as --listen takes it."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = (host or "127.0.0.1").strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


class Api:
    """What the page can ask: the caller binds each to the lab."""

    def __init__(self, status: Callable[[], Any], graph: Callable[[], bytes], verify: Callable[[], Any], trace: Callable[[dict[str, str]], Any]):
        self.status, self.graph, self.verify, self.trace = status, graph, verify, trace
        self.probing = threading.Lock()


def _handler(api: Api):
    class Handler(BaseHTTPRequestHandler):
        server_version = "labctl-ui"

        def log_message(self, fmt, *args):  # quiet: the terminal shows where it listens, not every poll
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_GET(self):  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            try:
                if url.path in ("/", "/index.html"):
                    self._send(200, page(), "text/html; charset=utf-8")
                elif url.path == "/api/status":
                    self._json(200, api.status())
                elif url.path == "/api/graph.svg":
                    self._send(200, api.graph(), "image/svg+xml")
                elif url.path == "/api/verify":
                    with api.probing:
                        self._json(200, api.verify())
                elif url.path == "/api/trace":
                    with api.probing:
                        self._json(200, api.trace(query))
                else:
                    self._json(404, {"error": f"no such page: {url.path}"})
            except LabError as e:
                self._json(400 if e.exit_code == 2 else 500, {"error": str(e), "exit_code": e.exit_code})
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


def serve(api: Api, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Serve until interrupted; `ready(url)` once listening."""
    server = ThreadingHTTPServer((host, port), _handler(api))
    server.daemon_threads = True
    try:
        shown = f"[{host}]" if ":" in host else host
        ready(f"http://{shown}:{server.server_address[1]}/")
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
