"""The Lab's `expect:` lines: "FROM -> TO:PORT[/udp] allowed|denied", checked
by `labctl verify` against the kernel. Pure.
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


def check_expectations(topo: Topology, where: str) -> list[Problem]:
    """`expect:` lines must parse and name things the lab has."""
    out = []
    for i, text in enumerate(topo.lab.expect):
        try:
            src, dst, _port, _proto, _ok = parse_expectation(text)
            resolve(topo, src, role="FROM")
            resolve(topo, dst, role="TO")
        except (ValueError, InvalidInput) as e:
            out.append(Problem(where, f"spec.expect[{i}]", str(e.message if isinstance(e, InvalidInput) else e)))
    return out
