"""FROM / TO arguments -> where to probe from and to. Pure.

    NS/POD, POD (namespace default), node/NAME, ext/NAME, or (TO only) an IPv4 address.
"""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass

from labctl import names
from labctl.errors import InvalidInput
from labctl.model.objects import Pod, Topology


@dataclass(frozen=True)
class Endpoint:
    label: str  # normalised: default/web-0, node/node1, ext/client, 10.1.2.3
    ip: str
    netns: str | None  # None for a bare address (no namespace to run in)
    pod: Pod | None = None

    @property
    def kind(self) -> str:
        if self.pod is not None:
            return "pod"
        return self.label.split("/", 1)[0] if "/" in self.label else "ip"


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def resolve(topo: Topology, text: str, *, role: str) -> Endpoint:
    lab = topo.lab.name
    if text.startswith("node/"):
        name = text[5:]
        for n in topo.lab.nodes:
            if n.name == name:
                return Endpoint(f"node/{name}", n.ip, names.node_netns(lab, name))
        raise InvalidInput(f"{role} {text!r}: no node named {name!r}" + _suggest(name, [n.name for n in topo.lab.nodes]))
    if text.startswith("ext/"):
        name = text[4:]
        for e in topo.lab.externals:
            if e.name == name:
                return Endpoint(f"ext/{name}", e.ip, names.external_netns(lab, name))
        raise InvalidInput(f"{role} {text!r}: no external named {name!r}" + _suggest(name, [e.name for e in topo.lab.externals]))
    if text.startswith("svc/"):
        raise InvalidInput(f"{role} {text!r}: this lab has no Services yet (they arrive with the services feature)")
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        pass
    else:
        if role == "FROM":
            raise InvalidInput(f"FROM {text!r}: probes run from a pod, node/NAME or ext/NAME, not from a bare address")
        for p in topo.pods:
            if p.ip == str(ip):
                return Endpoint(str(ip), str(ip), names.pod_netns(lab, p.namespace, p.name), p)
        return Endpoint(str(ip), str(ip), None)
    key = text if "/" in text else f"default/{text}"
    for p in topo.pods:
        if p.key == key:
            return Endpoint(p.key, p.ip, names.pod_netns(lab, p.namespace, p.name), p)
    raise InvalidInput(f"{role} {text!r}: no pod {key}" + _suggest(key, [p.key for p in topo.pods]), hint="targets: NS/POD, POD, node/NAME, ext/NAME or an IP")


def default_port(dst: Endpoint, proto: str) -> int | None:
    """A pod's first container port of the protocol, when --port is not given."""
    if dst.pod is None or proto == "icmp":
        return None
    for p in dst.pod.ports():
        if p.protocol.lower() == proto:
            return p.port
    return None
