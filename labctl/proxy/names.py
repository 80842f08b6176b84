"""kube-proxy's chain names, computed as kube-proxy computes them, so a lab's
chains are named exactly like a real cluster's.

iptables: a role prefix + the first 16 characters of the base32 (RFC 4648)
encoding of sha256(servicePortName + protocol) (+ endpoint "ip:port" for
KUBE-SEP-). `default/kubernetes:https` + `tcp` gives KUBE-SVC-NPX46M4PTMTKRN6Y.

nftables: "<8 hash characters>-<ns>/<svc>/<proto>/<port name>", behind
service-, local-, external-, endpoint- (with "__<ip>/<port>") or affinity-.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache


def _b32(text: str, chars: int) -> str:
    """The first `chars` (a multiple of 8, up to 48) characters of base32(sha256(text)):
    encoding only the bytes they come from (5 per 8 characters) is the same text, faster."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[: chars * 5 // 8]).decode()


def port_name_string(namespace: str, name: str, port_name: str | None) -> str:
    """kube-proxy's ServicePortName.String(): ns/svc, plus :port when the port is named."""
    return f"{namespace}/{name}" + (f":{port_name}" if port_name else "")


def ipt_chain(prefix: str, spn: str, protocol: str) -> str:
    return prefix + _b32(spn + protocol, 16)


@lru_cache(maxsize=1 << 16)  # a service port's rules name each endpoint chain two or three times
def ipt_sep(spn: str, protocol: str, endpoint: str) -> str:
    return "KUBE-SEP-" + _b32(spn + protocol + endpoint, 16)


@lru_cache(maxsize=1 << 16)
def _nft_base(name: str) -> str:
    return _b32(name, 8) + "-" + name


def nft_base(namespace: str, svc: str, protocol: str, port_name: str | None) -> str:
    return _nft_base(f"{namespace}/{svc}/{protocol}/{port_name or ''}")


def nft_endpoint_base(namespace: str, svc: str, protocol: str, port_name: str | None, ip: str, port: int) -> str:
    """An IPv6 endpoint's colons become dots (a chain name may hold no colon), as kube-proxy spells it."""
    return _nft_base(f"{namespace}/{svc}/{protocol}/{port_name or ''}__{ip.replace(':', '.')}/{port}")
