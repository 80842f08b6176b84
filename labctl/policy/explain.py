"""`labctl explain FROM TO`: which policies decide a connection, and where in the
kernel. Pure: from the applied topology, as plain data the CLI prints.

To a pod: the engine's verdict for each side (egress of FROM, ingress of TO),
the policies that isolate and allow, and the node, chain and ipset that decide
it. To a service: the path the lab's proxy mode gives it on FROM's node
(ProxyMode.explain), then each endpoint's verdict (policies see the pod after
the service's DNAT).
"""

from __future__ import annotations

from typing import Any

from labctl import registry
from labctl.model import names
from labctl.model.errors import InvalidInput
from labctl.model.objects import Topology
from labctl.model.targets import Endpoint, default_port
from labctl.policy.engine import Engine
from labctl.policy.rules import CHAIN, ISOLATED, policy_chain, set_name6
from labctl.proxy.endpoints import service_ports


def explain(topo: Topology, a: Endpoint, b: Endpoint, port: int | None, proto: str) -> dict[str, Any]:
    """The explanation of FROM `a` -> TO `b` (resolved targets), as `explain --json` prints it."""
    return _to_service(topo, a, b, port, proto) if b.service is not None else _to_pod(topo, a, b, port, proto)


def _head(a: Endpoint, b: Endpoint, port: int, proto: str, allowed: bool) -> dict[str, Any]:
    return {"from": a.label, "to": b.label, "ip": b.ip, "port": port, "proto": proto, "allowed": allowed}


def _to_pod(topo: Topology, a: Endpoint, b: Endpoint, port: int | None, proto: str) -> dict[str, Any]:
    port = port or default_port(b, proto if proto != "sctp" else "tcp")
    if port is None:
        raise InvalidInput(f"TO {b.label!r} declares no {proto} port: give --port")
    engine = Engine(topo)
    d = engine.check(engine.party(a.ip), engine.party(b.ip), port, proto.upper())
    by_key = {p.key: p for p in topo.policies}

    def side(s, pod) -> dict[str, Any]:
        kernel = []
        if pod is not None and not s.note and s.isolated_by:
            node = names.node_netns(topo.lab.name, pod.node)
            chains = " | ".join(f"{k} -> {policy_chain(by_key[k], s.direction)}" for k in s.isolated_by)
            six = ":" in topo.lab.pod_network  # the IPv6 family's view: ip6tables, its own sets
            iso = set_name6(ISOLATED[s.direction]) if six else ISOLATED[s.direction]
            kernel = [f"{node}: {'ip6tables ' if six else ''}filter {CHAIN[s.direction]} (the pod is in ipset {iso}): {chains}"]
        where = pod.node if pod is not None else None
        return {"isolatedBy": s.isolated_by, "allowedBy": s.allowed_by, "explanation": s.explain(), "kernel": kernel, "node": where}

    return {
        **_head(a, b, port, proto, d.allowed),
        "egress": side(d.egress, a.pod),
        "ingress": side(d.ingress, b.pod),
    }


def _to_service(topo: Topology, a: Endpoint, b: Endpoint, port: int | None, proto: str) -> dict[str, Any]:
    assert b.service is not None
    port = port or default_port(b, proto)
    infos = [i for i in service_ports(topo, only={b.service.key}) if i.port.port == port and i.proto == proto]
    if not infos:
        raise InvalidInput(f"TO {b.label!r} has no {proto} port {port}")
    info = infos[0]
    node = a.pod.node if a.pod else (a.label[5:] if a.label.startswith("node/") else topo.lab.nodes[0].name)
    if b.access == "lb" and a.pod is None and not a.label.startswith("node/"):
        from labctl.proxy.lb import speaker

        node = speaker(topo, b.service) or node  # from outside: the node that answers ARP for the LoadBalancer IP
    engine = Engine(topo)
    verdicts = []
    usable = info.cluster(node)  # topology hints: the endpoints this node's rules list
    for ep in usable:
        d = engine.check(engine.party(a.ip), engine.party(ep.ip), ep.port, proto.upper())
        verdicts.append({"endpoint": ep.pod, "address": ep.addr, "allowed": d.allowed, "explanation": [d.egress.explain(), d.ingress.explain()]})
    out = {
        **_head(a, b, port, proto, any(v["allowed"] for v in verdicts)),
        "service": {
            "node": node,
            "proxyMode": topo.lab.proxy_mode,
            "kernel": registry.proxy_mode(topo.lab.proxy_mode).explain(info, node),
            "endpoints": verdicts,
        },
    }
    if len(usable) != len(info.endpoints):
        zone = info.node_zones.get(node, "")
        out["service"]["topology"] = f"node {node} (zone {zone}) uses the {len(usable)} of {len(info.endpoints)} endpoints hinted for it"
    return out


def explain_http(
    topo: Topology,
    a: Endpoint,
    b: Endpoint,
    path: str,
    host: str | None,
    https: bool,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    port: int | None = None,
) -> dict[str, Any]:
    """An HTTP request from `a` to an L7 proxy's Service `b` (the ingress controller, a
    Gateway): hop 1 is the connection to the proxy (kube-proxy's rules, as to any
    Service); then the route the proxy's nginx.conf picks for HOST and PATH; hop 2 is
    each proxy pod's new connection to the backend's endpoints (policies see the proxy
    pod as the client)."""
    assert b.service is not None
    port = port or (443 if https else 80)
    hop1 = _to_service(topo, a, b, port, "tcp")
    route, proxies = l7_route(topo, b.service, port, host or b.ip, path, method, headers or {})
    by_ip = {p.ip: p.key for p in topo.pods}
    engine = Engine(topo)
    hop2 = []
    for proxy in proxies:
        verdicts = []
        for addr in route["endpoints"]:
            ip, _, p = addr.rpartition(":")
            d = engine.check(engine.party(proxy.ip), engine.party(ip), int(p), "TCP")
            verdicts.append({"endpoint": by_ip.get(ip), "address": addr, "allowed": d.allowed, "explanation": [d.egress.explain(), d.ingress.explain()]})
        hop2.append({"proxy": proxy.key, "ip": proxy.ip, "endpoints": verdicts})
    served = hop1["allowed"] and route["status"] is None and any(v["allowed"] for h in hop2 for v in h["endpoints"])
    return {
        **{k: v for k, v in hop1.items() if k != "allowed"},
        "allowed": served,
        "http": {"host": host or b.ip, "path": path, "route": route, "hops": hop2},
    }


def l7_route(topo: Topology, svc, port: int, host: str, path: str, method: str, headers: dict[str, str]) -> tuple[dict[str, Any], list]:
    """What the proxy behind Service `svc` does with HOST and PATH, and its pods."""
    from labctl.addons.ingress import controllers, nginx

    if topo.lab.ingress is not None and svc.key == "ingress-nginx/ingress-nginx-controller":
        return nginx.route(topo, topo.lab.ingress.class_name, host, path), controllers(topo)
    from labctl.addons import gateway
    from labctl.addons.gateway import nginx as gw_nginx
    from labctl.model.gateway import World

    world = World.of(topo)
    for gw in world.served():
        if gateway.service_key(gw.key) == svc.key:
            return gw_nginx.route(topo, world, gw.key, port, host, path, method, headers), gateway.proxies(topo, gw.key)
    raise InvalidInput(f"TO svc/{svc.key} is not an L7 proxy: --http explains requests to `ingress` or gw/NS/NAME")
