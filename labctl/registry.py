"""The proxy modes, overlays and add-ons of labctl.model.registry, loaded by name."""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

from labctl.model import registry as names

if TYPE_CHECKING:
    from labctl.addons.base import AddOn
    from labctl.overlay.base import Overlay
    from labctl.proxy.mode import ProxyMode


@cache
def _load(module: str, attribute: str):
    return getattr(importlib.import_module(module), attribute)


def proxy_mode(name: str) -> "ProxyMode":
    return _load(names.PROXY_MODES[name], "MODE")


def proxy_modes() -> list["ProxyMode"]:
    return [proxy_mode(n) for n in names.PROXY_MODES]


def overlay(name: str) -> "Overlay":
    return _load(names.OVERLAYS[name], "OVERLAY")


def addon(name: str) -> "AddOn":
    return _load(names.ADDONS[name], "ADDON")


def addons() -> list["AddOn"]:
    return [addon(n) for n in names.ADDONS]
