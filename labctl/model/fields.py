"""Field checks as the Kubernetes API server makes them (apimachinery's
validation package): names, label keys and values, port names, CIDRs. Pure.

Every pattern is matched whole (re.fullmatch): `$` also matches before a
trailing newline, and "x\\n" is not a valid name. Functions return None when
the value is valid, else why not (values quoted short).
"""

from __future__ import annotations

import ipaddress
import re

from labctl.model.errors import Problem, short_repr

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LAB_NAME = re.compile(r"[a-z][a-z0-9-]{0,11}")
PROTOCOLS = ("TCP", "UDP", "SCTP")


def lab_name(value: object) -> str | None:
    """The rule of a Lab's metadata.name, and of every lab name a command is given."""
    if not isinstance(value, str) or not LAB_NAME.fullmatch(value):
        return f"{short_repr(value)} is not a lab name (a lower case letter, then up to 11 lower case letters, digits or '-')"
    return None


def dns1123_label(value: str) -> str | None:
    if len(value) > 63:
        return f"{short_repr(value)} is longer than 63 characters"
    if not DNS1123_LABEL.fullmatch(value):
        return f"{short_repr(value)} is not a DNS-1123 label (lower case letters, digits and '-', starting and ending with a letter or digit)"
    return None


def dns1123_subdomain(value: str) -> str | None:
    if len(value) > 253:
        return f"{short_repr(value)} is longer than 253 characters"
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        return f"{short_repr(value)} is not a DNS-1123 subdomain (lower case letters, digits, '-' and '.')"
    return None


def dns1035_label(value: str) -> str | None:
    if len(value) > 63 or not DNS1035_LABEL.fullmatch(value):
        return f"{short_repr(value)} is not a DNS-1035 label (lower case letters, digits and '-', starting with a letter)"
    return None


def port_name(value: str) -> str | None:
    if len(value) > 15:
        return f"port name {short_repr(value)} is longer than 15 characters"
    if not IANA_SVC_NAME.fullmatch(value) or "--" in value or not re.search("[a-z]", value):
        return f"port name {short_repr(value)} is not an IANA service name (lower case letters, digits and single '-', at least one letter)"
    return None


def label_key(key: object) -> str | None:
    """A qualified name: [prefix/]name, the prefix a DNS-1123 subdomain, the name up to 63 characters."""
    if not isinstance(key, str):
        return f"label key {short_repr(key)} must be a string"
    parts = key.split("/")
    if len(parts) > 2:
        return f"label key {short_repr(key)} has more than one '/'"
    prefix, name = (None, parts[0]) if len(parts) == 1 else parts
    if prefix is not None:
        if not prefix:
            return f"label key {short_repr(key)}: the prefix before '/' must be non-empty"
        if dns1123_subdomain(prefix):
            return f"label key prefix {short_repr(prefix)} is not a DNS-1123 subdomain"
    if not name:
        return f"label key {short_repr(key)}: the name part must be non-empty"
    if len(name) > 63 or not QUALIFIED_NAME.fullmatch(name):
        return f"label key {short_repr(key)} is not valid (name part: up to 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)"
    return None


def label_value(value: object) -> str | None:
    if not isinstance(value, str):
        return f"label value {short_repr(value)} must be a string"
    if len(value) > 63 or (value and not QUALIFIED_NAME.fullmatch(value)):
        return f"label value {short_repr(value)} is not valid (up to 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)"
    return None


def label_problems(labels: dict, where: str, path: str) -> list[Problem]:
    """Each key and value of a label map (also matchLabels and a service selector)."""
    out = []
    for key, value in labels.items():
        at = f"{path}.{key}" if isinstance(key, str) else path
        why = label_key(key) or label_value(value)
        if why:
            out.append(Problem(where, at, why))
    return out


def parse_cidr(value: str, where: str, path: str, problems: list[Problem], family: int | None = None):
    """An IPv4 or IPv6 CIDR without host bits (of `family` when given), or None with a problem added."""
    try:
        if not isinstance(value, str) or "/" not in value or value != value.strip():
            raise ValueError(value)
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        problems.append(Problem(where, path, f"{short_repr(value)} is not a CIDR (e.g. 10.244.0.0/16)"))
        return None
    if family is not None and loose.version != family:
        problems.append(Problem(where, path, f"{short_repr(value)} is not an IPv{family} CIDR"))
        return None
    if loose.network_address != ipaddress.ip_interface(value).ip:
        problems.append(Problem(where, path, f"{short_repr(value)} has host bits set; did you mean {loose}?"))
        return None
    return loose


def lb_pool_range(pool: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """spec.loadBalancerPool "first-last" as two addresses (ValueError when it is not)."""
    first, _, last = pool.partition("-")
    a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
    if a.version != b.version:
        raise ValueError(pool)
    return a, b
