"""How addresses become ipset members. Pure."""

from __future__ import annotations


def hash_nets(cidr: str) -> list[str]:
    """A CIDR as hash:net members. A hash:net set cannot hold a /0 (`ipset add`
    refuses it, and kube-proxy's own add then fails, letting nothing in), so
    0.0.0.0/0 is stored as its two halves, which match the same addresses."""
    return ["0.0.0.0/1", "128.0.0.0/1"] if cidr.endswith("/0") else [cidr]
