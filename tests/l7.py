"""Ingress and Gateway API objects the unit and kernel tests share: builders for
Ingresses, and the Gateway API conformance suite's base objects
(conformance/base/manifests.yaml) with builders for Gateways, listeners,
HTTPRoutes and ReferenceGrants."""

from __future__ import annotations

from tests.helpers import namespace, pod, svc

# -- Ingress --------------------------------------------------------------------------------


def ingress(name, rules=None, default=None, namespace="default", **spec):
    body = dict(spec)
    if rules is not None:
        body["rules"] = rules
    if default is not None:
        body["defaultBackend"] = {"service": {"name": default, "port": {"number": 80}}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": namespace}, "spec": body}


def ingress_rule(host, *paths):
    r = {"http": {"paths": [{"path": p, "pathType": t, "backend": {"service": {"name": s, "port": {"number": 80}}}} for p, t, s in paths]}}
    if host:
        r["host"] = host
    return r


# -- Gateway API ----------------------------------------------------------------------------

INFRA = "gateway-conformance-infra"
APP = "gateway-conformance-app-backend"
WEB = "gateway-conformance-web-backend"
GW = "gateway.networking.k8s.io/v1"


def gateway(name, listeners=None, ns=INFRA, **spec):
    listeners = listeners or [{"name": "http", "port": 80, "protocol": "HTTP"}]
    return {
        "apiVersion": GW,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"gatewayClassName": "nginx", "listeners": listeners, **spec},
    }


def listener(name="http", port=80, protocol="HTTP", hostname=None, **more):
    out = {"name": name, "port": port, "protocol": protocol, **more}
    if hostname:
        out["hostname"] = hostname
    return out


def backend(name, port=8080, **more):
    return {"name": name, "port": port, **more}


def route_rule(*backends, matches=None, filters=None):
    out = {}
    if backends:
        out["backendRefs"] = list(backends)
    if matches is not None:
        out["matches"] = matches
    if filters is not None:
        out["filters"] = filters
    return out


def route(name, parents=("same-namespace",), rules=None, hostnames=None, ns=INFRA):
    refs = [p if isinstance(p, dict) else {"name": p, "namespace": INFRA} for p in parents]
    spec = {"parentRefs": refs, "rules": rules if rules is not None else [route_rule(backend("infra-backend-v1"))]}
    if hostnames:
        spec["hostnames"] = list(hostnames)
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def grant(ns, from_ns, to_kind="Service", to_name=None, from_kind="HTTPRoute", name="grant"):
    to = {"group": "", "kind": to_kind, **({"name": to_name} if to_name else {})}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": from_kind, "namespace": from_ns}], "to": [to]},
    }


def base(node="node2"):
    """conformance/base/manifests.yaml: the namespaces, Services and Gateways."""
    docs = [namespace(INFRA), namespace(APP, {"gateway-conformance": "backend"}), namespace(WEB, {"gateway-conformance": "backend"})]
    for ns, names in (
        (INFRA, ("infra-backend-v1", "infra-backend-v2", "infra-backend-v3")),
        (APP, ("app-backend-v1", "app-backend-v2")),
        (WEB, ("web-backend",)),
    ):
        for n in names:
            docs.append(pod(n, namespace=ns, labels={"app": n}, ports=(3000,), node=node))
            docs.append(svc(n, {"app": n}, namespace=ns, ports=((8080, 3000),)))
    docs.append(gateway("same-namespace"))
    docs.append(gateway("all-namespaces", [listener(allowedRoutes={"namespaces": {"from": "All"}})]))
    docs.append(
        gateway(
            "backend-namespaces",
            [listener(allowedRoutes={"namespaces": {"from": "Selector", "selector": {"matchLabels": {"gateway-conformance": "backend"}}}})],
        )
    )
    return docs


LB = {"loadBalancerPool": "10.10.20.200-10.10.20.230", "gatewayAPI": True}


def running(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
