"""A host's link impairment as the topology file (`link:`) and `labctl link`
give it: delay, jitter, loss and rate, parsed and checked. Pure; labctl.impair
renders it as `tc` commands and applies them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from labctl.model.errors import InvalidInput, short_repr

_TIME = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$")
_LOSS = re.compile(r"^(\d+(?:\.\d+)?)%$")
_BITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}


@dataclass(frozen=True)
class Impairment:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_bps: float = 0.0  # 0: no limit

    @property
    def empty(self) -> bool:
        return not (self.delay_ms or self.jitter_ms or self.loss_pct or self.rate_bps)

    @property
    def needs_netem(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct)

    def describe(self) -> str:
        parts = []
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:g}ms" + (f" ±{self.jitter_ms:g}ms" if self.jitter_ms else ""))
        if self.loss_pct:
            parts.append(f"loss {self.loss_pct:g}%")
        if self.rate_bps:
            parts.append(f"rate {_rate_text(self.rate_bps)}")
        return ", ".join(parts) or "none"


def _rate_text(bps: float) -> str:
    for unit, f in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= f and bps % f == 0:
            return f"{bps / f:g}{unit}"
    return f"{bps:g}bit"


def parse_time(field: str, text: str | None, flag: str = "--") -> float:
    if text is None:
        return 0.0
    m = _TIME.fullmatch(str(text).strip())
    if not m:
        raise InvalidInput(f"{flag}{field} {short_repr(text)}: a duration such as 20ms, 1.5ms, 500us or 1s")
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def parse_loss(text: str | None, flag: str = "--") -> float:
    if text is None:
        return 0.0
    m = _LOSS.fullmatch(str(text).strip())
    if not m or float(m.group(1)) > 100:
        raise InvalidInput(f"{flag}loss {short_repr(text)}: a percentage from 0% to 100%, such as 1% or 0.5%")
    return float(m.group(1))


def parse_rate(text: str | None, flag: str = "--") -> float:
    if text is None:
        return 0.0
    m = _RATE.fullmatch(str(text).strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise InvalidInput(f"{flag}rate {short_repr(text)}: a rate such as 10mbit, 512kbit or 1gbit (tc's units; kbps = kilobytes/s)")
    return float(m.group(1)) * _BITS[m.group(2)]


def parse(delay: str | None = None, jitter: str | None = None, loss: str | None = None, rate: str | None = None, flag: str = "--") -> Impairment:
    """The impairment the options (flag "--") or a topology's link fields (flag "") describe."""
    imp = Impairment(parse_time("delay", delay, flag), parse_time("jitter", jitter, flag), parse_loss(loss, flag), parse_rate(rate, flag))
    if imp.jitter_ms and not imp.delay_ms:
        raise InvalidInput(f"{flag}jitter needs {flag}delay (netem varies the delay by the jitter)")
    return imp


def from_spec(link: dict | None) -> Impairment:
    """A node's or external's `link:` field of the Lab document."""
    link = link or {}
    return parse(link.get("delay"), link.get("jitter"), link.get("loss"), link.get("rate"), flag="")
