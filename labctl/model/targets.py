"""FROM / TO arguments -> where to probe from and to. Pure.

NS/POD, POD (namespace default), node/NAME, ext/NAME, or (TO only) an IPv4
address, svc/NS/NAME (its ClusterIP), svc/NS/NAME@nodeport (a node's
address and the NodePort; the node is --via, else the first),
svc/NS/NAME@lb (its LoadBalancer IP), `ingress` (the ingress controller's
Service) or gw/NS/NAME (a Gateway's Service, NGINX Gateway Fabric's
<name>-nginx).
"""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass

from labctl.model import family, names
from labctl.model.errors import InvalidInput
from labctl.model.objects import Pod, Service, Topology


@dataclass(frozen=True)
class Endpoint:
    label: str  # normalised: default/web-0, node/node1, ext/client, 10.1.2.3
    ip: str
    netns: str | None  # None for a bare address (no namespace to run in)
    pod: Pod | None = None
    service: Service | None = None
    access: str = ""  # for services: "" (ClusterIP), "nodeport" or "lb"

    @property
    def kind(self) -> str:
        if self.pod is not None:
            return "pod"
        if self.service is not None:
            return "service"
        return self.label.split("/", 1)[0] if "/" in self.label else "ip"


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _service(topo: Topology, text: str, role: str, via: str | None) -> Endpoint:
    ref, _, access = text[4:].partition("@")
    ns, _, name = ref.rpartition("/")
    key = f"{ns or 'default'}/{name}"
    try:
        svc = topo.service(key)
    except KeyError:
        raise InvalidInput(f"{role} {text!r}: no service {key}" + _suggest(key, [s.key for s in topo.services])) from None
    label = f"svc/{key}" + (f"@{access}" if access else "")
    if access == "":
        if not svc.proxied:
            what = "an ExternalName service" if svc.type == "ExternalName" else "a headless service"
            raise InvalidInput(f"{role} {text!r}: {key} is {what}: it has no ClusterIP to probe (probe its pods)")
        return Endpoint(label, svc.cluster_ip, None, service=svc)
    if access == "nodeport":
        if not svc.wants_node_ports:
            raise InvalidInput(f"{role} {text!r}: {key} is a {svc.type} service: it has no node ports")
        node = resolve(topo, via or f"node/{topo.lab.nodes[0].name}", role="--via")
        if not node.label.startswith("node/"):
            raise InvalidInput(f"--via {via!r}: a NodePort is reached through node/NAME")
        return Endpoint(label, node.ip, None, service=svc, access="nodeport")
    if access in ("lb", "loadbalancer"):
        if svc.type != "LoadBalancer" or not svc.load_balancer_ip:
            raise InvalidInput(f"{role} {text!r}: {key} has no LoadBalancer IP")
        return Endpoint(label, svc.load_balancer_ip, None, service=svc, access="lb")
    raise InvalidInput(f"{role} {text!r}: after @ comes nodeport or lb, not {access!r}")


def family_of_target(topo: Topology, text: str, fam: int | None) -> int | None:
    """The family a probe runs in: --family, else an address's, else None (the lab's first)."""
    try:
        literal = ipaddress.ip_address(text).version
    except ValueError:
        literal = None
    if fam is not None and literal is not None and fam != literal:
        raise InvalidInput(f"TO {text!r} is an IPv{literal} address, and --family says {fam}")
    fam = fam or literal
    if fam is not None and fam not in family.lab_families(topo.lab):
        raise InvalidInput(f"lab {topo.lab.name} has no IPv{fam} family (spec.ipFamilies: {', '.join(topo.lab.ip_families)})")
    return fam


def resolve(topo: Topology, text: str, *, role: str, via: str | None = None, fam: int | None = None) -> Endpoint:
    """FROM or TO as an Endpoint; `fam`: in that family's view of the lab (a service
    without an address in it is refused, naming its families)."""
    if fam is not None and family.lab_families(topo.lab) != (fam,):
        view = family.view(topo, fam)
        if text.startswith("svc/") and role == "TO":
            ref = text[4:].partition("@")[0]
            ns, _, name = ref.rpartition("/")
            key = f"{ns or 'default'}/{name}"
            if any(s.key == key for s in topo.services) and not any(s.key == key for s in view.services):
                fams = ", ".join(topo.service(key).ip_families or topo.lab.ip_families[:1])
                raise InvalidInput(f"TO {text!r}: {key} has no IPv{fam} address (its ipFamilies: {fams})")
        topo = view
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
    if text == "ingress" and topo.lab.ingress is not None:  # the controller Service's address
        if role != "TO":
            raise InvalidInput(f"{role} {text!r}: the ingress controller is something to probe, not to probe from")
        try:
            svc = topo.service("ingress-nginx/ingress-nginx-controller")
        except KeyError:  # a file with other problems: its Services are not allocated
            raise InvalidInput(f"{role} {text!r}: the ingress controller's Service is not made (see the other problems)") from None
        return _service(topo, f"svc/{svc.key}@lb" if svc.type == "LoadBalancer" else f"svc/{svc.key}@nodeport", role, via)
    if text.startswith("gw/"):  # a Gateway: its Service's LoadBalancer IP
        if role != "TO":
            raise InvalidInput(f"{role} {text!r}: a Gateway is something to probe, not to probe from")
        ns, _, name = text[3:].rpartition("/")
        key = f"{ns or 'default'}/{name}-nginx"
        if not any(s.key == key for s in topo.services):
            gws = [f"gw/{(d['metadata'].get('namespace') or 'default')}/{d['metadata']['name']}" for d in topo.documents if d.get("kind") == "Gateway"]
            raise InvalidInput(f"{role} {text!r}: no Gateway {ns or 'default'}/{name} served by the lab's GatewayClass" + _suggest(text, gws))
        from dataclasses import replace

        return replace(_service(topo, f"svc/{key}@lb", role, via), label=f"gw/{ns or 'default'}/{name}")
    if text.startswith("svc/"):
        if role != "TO":
            raise InvalidInput(f"{role} {text!r}: a service is something to probe, not to probe from")
        return _service(topo, text, role, via)
    try:
        ip = ipaddress.ip_address(text)
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
    """When --port is not given: a pod's first container port of the protocol,
    a service's first port of the protocol (its NodePort through @nodeport)."""
    if proto == "icmp":
        return None
    if dst.service is not None:
        for p in dst.service.ports:
            if p.protocol.lower() == proto:
                return p.node_port if dst.access == "nodeport" else p.port
        return None
    if dst.pod is None:
        return None
    for p in dst.pod.ports():
        if p.protocol.lower() == proto:
            return p.port
    return None
