"""The Lab's `expect:` lines, checked by `labctl verify` against the kernel. Pure.

- L4: "FROM -> TO:PORT[/udp] allowed|denied".
- L7: "FROM -> TO [METHOD] http(s)://HOST[:PORT]/PATH STATUS", e.g.
  "ext/client -> ingress https://shop.example/cart 200": one real HTTP/1.1
  request (HTTPS verified against the lab's CA), its status compared.
"""

from __future__ import annotations

import re

from labctl.model.errors import InvalidInput, Problem, short_repr
from labctl.model.objects import Topology
from labctl.model.targets import resolve

EXPECT = re.compile(r"(?P<src>\S+)\s*->\s*(?P<dst>\S+):(?P<port>[0-9]+)(?:/(?P<proto>tcp|udp))?\s+(?P<verdict>allowed|denied)", re.I)


def parse_expectation(text: str) -> tuple[str, str, int, str, bool]:
    m = EXPECT.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{short_repr(text)} is not `FROM -> TO:PORT[/udp] allowed|denied`")
    return m["src"], m["dst"], int(m["port"]), (m["proto"] or "tcp").upper(), m["verdict"].lower() == "allowed"


HTTP_EXPECT = re.compile(
    r"(?P<src>\S+)\s*->\s*(?P<dst>\S+)\s+(?:(?P<method>GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS)\s+)?"
    r"(?P<scheme>https?)://(?P<host>[^/\s:]+)(?::(?P<port>[0-9]+))?(?P<path>/\S*)?\s+(?P<status>[1-5][0-9][0-9])"
)


def parse_http_expectation(text: str) -> dict | None:
    """`FROM -> TO [METHOD] http(s)://HOST[:PORT]/PATH STATUS`: one real HTTP request from
    FROM to TO's address, with HOST as Host (and SNI), answered with STATUS. None: not this form."""
    m = HTTP_EXPECT.fullmatch(text.strip())
    if not m:
        return None
    https = m["scheme"] == "https"
    return {
        "src": m["src"],
        "dst": m["dst"],
        "method": m["method"] or "GET",
        "https": https,
        "host": m["host"],
        "port": int(m["port"]) if m["port"] else (443 if https else 80),
        "path": m["path"] or "/",
        "status": int(m["status"]),
    }


def check_expectations(topo: Topology, where: str) -> list[Problem]:
    """`expect:` lines must parse and name things the lab has."""
    out = []
    for i, text in enumerate(topo.lab.expect):
        try:
            http = parse_http_expectation(text)
            if http is not None:
                src, dst = http["src"], http["dst"]
            else:
                try:
                    src, dst, _port, _proto, _ok = parse_expectation(text)
                except ValueError:
                    raise ValueError(
                        f"{short_repr(text)} is not `FROM -> TO:PORT[/udp] allowed|denied` nor `FROM -> TO [METHOD] http(s)://HOST/PATH STATUS`"
                    ) from None
            resolve(topo, src, role="FROM")
            resolve(topo, dst, role="TO")
        except (ValueError, InvalidInput) as e:
            out.append(Problem(where, f"spec.expect[{i}]", str(e.message if isinstance(e, InvalidInput) else e)))
    return out
