"""Gateway API without root: CRD validation, route attachment and status as the
Gateway API conformance suite (Core HTTP profile) expects them, the precedence of
matches, and the nginx.conf rendered for a Gateway."""

from __future__ import annotations

import pytest

from labctl.addons.gateway import nginx
from labctl.model.gateway import World, intersect
from tests.helpers import dump, lab_doc, load, namespace, one, problems
from tests.l7 import APP, INFRA, LB, WEB, backend, base, gateway, grant, listener, route
from tests.l7 import route_rule as rule


def lab(*docs, **spec):
    for k, v in LB.items():
        spec.setdefault(k, v)
    return load(dump(lab_doc(**spec), *docs))


def status(topo) -> dict:
    return World.of(topo).status({})


def parent(topo, route_key, i=0) -> dict:
    r = next(r for r in status(topo)["httpRoutes"] if f"{r['namespace']}/{r['name']}" == route_key)
    return {c["type"]: (c["status"], c["reason"]) for c in r["parents"][i]["conditions"]}


def listeners(topo, gw_key) -> dict:
    g = next(g for g in status(topo)["gateways"] if f"{g['namespace']}/{g['name']}" == gw_key)
    return {li["name"]: (li["attachedRoutes"], {c["type"]: (c["status"], c["reason"]) for c in li["conditions"]}) for li in g["listeners"]}


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc, path, message",
    [
        (route("r", rules=[rule(backend("x"), matches=[{"path": {"type": "Exact", "value": "foo"}}])]), "spec.rules[0].matches[0].path.value", "absolute path"),
        (route("r", rules=[rule(backend("x"), matches=[{"path": {"value": "/a//b"}}])]), "spec.rules[0].matches[0].path.value", "'//'"),
        (route("r", rules=[rule({"name": "x"})]), "spec.rules[0].backendRefs[0].port", "Must have port for Service reference"),
        (
            route("r", rules=[rule(backend("x"), filters=[{"type": "RequestRedirect", "requestRedirect": {"hostname": "a.com"}}])]),
            "spec.rules[0]",
            "must not be used together with backendRefs",
        ),
        (
            route("r", rules=[rule(filters=[{"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}])]),
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            "301, 302",
        ),
        (
            route(
                "r",
                rules=[
                    rule(
                        backend("x"),
                        filters=[{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
                        matches=[{"path": {"type": "Exact", "value": "/a"}}],
                    )
                ],
            ),
            "spec.rules[0].filters[0].urlRewrite.path",
            "exactly one PathPrefix match",
        ),
        (route("r", hostnames=["10.0.0.1x", "Foo.com"]), "spec.hostnames[1]", "lower-case DNS name"),
        (gateway("g", [listener(), listener()]), "spec.listeners", "Listener name must be unique"),
        (gateway("g", [listener(protocol="HTTPS")]), "spec.listeners[0].tls", "tls must be specified"),
        (gateway("g", [listener(extra=1)]), "spec.listeners[0].extra", "unknown field"),
        (route("r", rules=[rule(backend("x"), matches=[{"method": "FETCH"}])]), "spec.rules[0].matches[0].method", "must be one of"),
    ],
)
def test_the_crds_refuse_what_their_schema_and_cel_rules_refuse(doc, path, message):
    found = problems(dump(lab_doc(**LB), namespace(INFRA), doc))
    assert any(path in p and message in p for p in found), found


def test_gateway_api_objects_need_the_lab_to_say_so_and_a_pool():
    assert "needs the Gateway API: set gatewayAPI: true" in one(dump(lab_doc(), namespace(INFRA), gateway("g")))
    assert "needs spec.loadBalancerPool" in one(dump(lab_doc(gatewayAPI=True), namespace(INFRA), gateway("g")))
    assert "namespace 'nowhere' is not defined" in one(dump(lab_doc(**LB), gateway("g", ns="nowhere")))


def test_each_gateway_gets_an_nginx_pod_and_a_loadbalancer_service():
    topo = lab(*base())
    gw = topo.service(f"{INFRA}/same-namespace-nginx")
    assert gw.type == "LoadBalancer" and gw.load_balancer_ip and [p.port for p in gw.ports] == [80]
    assert topo.pod(f"{INFRA}/same-namespace-nginx-0").labels["gateway.networking.k8s.io/gateway-name"] == "same-namespace"
    other = gateway("other-class", gatewayClassName="someone-else")
    other["spec"]["gatewayClassName"] = "someone-else"
    topo = lab(*base(), other)
    assert not any(p.name.startswith("other-class-nginx") for p in topo.pods), "a class of another controller gets nothing"
    assert status(topo)["gateways"][-1]["conditions"] == []


# -- attachment and status, as the conformance tests expect -------------------------------------


def test_routes_attach_as_allowed_routes_and_parent_refs_say():
    topo = lab(
        *base(),
        route("cross", parents=("backend-namespaces",), ns=WEB, rules=[rule(backend("web-backend"))]),  # HTTPRouteCrossNamespace
        route("invalid-cross", parents=("same-namespace",), ns=WEB, rules=[rule(backend("web-backend"))]),  # HTTPRouteInvalidCrossNamespaceParentRef
        route("no-section", parents=({"name": "same-namespace", "namespace": INFRA, "sectionName": "http1"},)),  # ...NotMatchingSectionName
        route("all", parents=("all-namespaces",), ns=APP, rules=[rule(backend("app-backend-v1"))]),
    )
    assert parent(topo, f"{WEB}/cross")["Accepted"] == ("True", "Accepted")
    assert parent(topo, f"{WEB}/invalid-cross")["Accepted"] == ("False", "NotAllowedByListeners")
    assert parent(topo, f"{INFRA}/no-section")["Accepted"] == ("False", "NoMatchingParent")
    assert parent(topo, f"{APP}/all")["Accepted"] == ("True", "Accepted")
    assert listeners(topo, f"{INFRA}/same-namespace")["http"][0] == 0, "refused routes are not counted"
    assert listeners(topo, f"{INFRA}/backend-namespaces")["http"][0] == 1


def test_hostname_intersection_and_attached_routes():
    """HTTPRouteHostnameIntersection and GatewayWithAttachedRoutes."""
    gw = gateway(
        "httproute-hostname-intersection",
        [
            listener("listener-1", hostname="very.specific.com"),
            listener("listener-2", hostname="*.wildcard.io"),
            listener("listener-3", hostname="*.anotherwildcard.io"),
        ],
    )
    topo = lab(
        *base(),
        gw,
        route("specific", parents=(gw["metadata"]["name"],), hostnames=["non.matching.com", "*.nonmatchingwildcard.io", "very.specific.com"]),
        route(
            "wildcard",
            parents=(gw["metadata"]["name"],),
            hostnames=["non.matching.com", "*.nonmatchingwildcard.io", "foo.wildcard.io", "bar.wildcard.io", "foo.bar.wildcard.io"],
        ),
        route("none", parents=(gw["metadata"]["name"],), hostnames=["specific.but.wrong.com", "wildcard.io"]),
    )
    assert parent(topo, f"{INFRA}/none")["Accepted"] == ("False", "NoMatchingListenerHostname")
    counts = {k: v[0] for k, v in listeners(topo, f"{INFRA}/httproute-hostname-intersection").items()}
    assert counts == {"listener-1": 1, "listener-2": 1, "listener-3": 0}
    assert intersect("*.wildcard.io", ("foo.bar.wildcard.io",)) == ("foo.bar.wildcard.io",), "a wildcard is a suffix: several labels"
    assert intersect("very.specific.com", ("*.specific.com",)) == ("very.specific.com",)
    assert intersect("*.specific.com", ("*.very.specific.com",)) == ("*.very.specific.com",)
    assert intersect("wildcard.io", ("*.wildcard.io",)) == ()


def test_backend_refs_resolve_only_to_services_and_granted_namespaces():
    topo = lab(
        *base(),
        route("missing", rules=[rule(backend("nonexistent"))]),  # HTTPRouteInvalidNonExistentBackendRef
        route("kind", rules=[rule({"group": "unknownkind.example.com", "kind": "NonExistent", "name": "x"})]),
        route("cross", rules=[rule(backend("web-backend", namespace=WEB))]),  # no ReferenceGrant
        route("granted", rules=[rule(backend("app-backend-v1", namespace=APP))]),
        grant(APP, INFRA),
        grant(WEB, INFRA, to_name="someone-else", name="wrong-name"),  # HTTPRouteInvalidReferenceGrant: wrong in one field
    )
    assert parent(topo, f"{INFRA}/missing")["ResolvedRefs"] == ("False", "BackendNotFound")
    assert parent(topo, f"{INFRA}/kind")["ResolvedRefs"] == ("False", "InvalidKind")
    assert parent(topo, f"{INFRA}/cross")["ResolvedRefs"] == ("False", "RefNotPermitted")
    assert parent(topo, f"{INFRA}/granted")["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert parent(topo, f"{INFRA}/missing")["Accepted"] == ("True", "Accepted"), "an unresolved backend does not make the route unaccepted"


def test_listener_conditions():
    """GatewayListenerUnsupportedProtocol, GatewayInvalidRouteKind, GatewayInvalidTLSConfiguration."""
    bad = gateway("unsupported", [listener("bad", protocol="INVALID")])
    mixed = gateway("mixed", [listener("bad", protocol="INVALID"), listener("good", port=8080)])
    kinds = gateway(
        "kinds",
        [
            listener("only-invalid", allowedRoutes={"kinds": [{"kind": "InvalidRoute"}]}),
            listener("both", port=81, allowedRoutes={"kinds": [{"kind": "InvalidRoute"}, {"kind": "HTTPRoute"}]}),
        ],
    )
    tls = gateway("tls", [listener("https", port=443, protocol="HTTPS", tls={"certificateRefs": [{"name": "missing"}]})])
    topo = lab(*base(), bad, mixed, kinds, tls)
    gws = {g["name"]: g for g in status(topo)["gateways"]}
    assert gws["unsupported"]["conditions"][0]["reason"] == "ListenersNotValid" and gws["unsupported"]["conditions"][0]["status"] == "False"
    assert gws["mixed"]["conditions"][0]["status"] == "True"
    assert listeners(topo, f"{INFRA}/unsupported")["bad"][1]["Accepted"] == ("False", "UnsupportedProtocol")
    k = {li["name"]: li for li in gws["kinds"]["listeners"]}
    assert k["only-invalid"]["supportedKinds"] == [] and k["both"]["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]
    assert listeners(topo, f"{INFRA}/kinds")["both"][1]["ResolvedRefs"] == ("False", "InvalidRouteKinds")
    assert listeners(topo, f"{INFRA}/tls")["https"][1]["ResolvedRefs"] == ("False", "InvalidCertificateRef")


# -- precedence, decided as the rendered maps decide it -------------------------------------------


def decide(topo, gw, host, path, method="GET", headers=None) -> str | int:
    r = nginx.route(topo, World.of(topo), f"{INFRA}/{gw}", 80, host, path, method, headers or {})
    if r["status"]:
        return r["status"]
    return r["backend"].split("/")[-1].split(":")[0]


def test_precedence_as_the_specification_orders_matches():
    path_order = route(
        "path-order",
        hostnames=["order.example"],
        rules=[
            rule(
                backend("infra-backend-v1"),
                matches=[{"path": {"type": "Exact", "value": "/match"}}, {"path": {"type": "PathPrefix", "value": "/match/prefix/any"}}],
            ),
            rule(
                backend("infra-backend-v2"),
                matches=[{"path": {"type": "Exact", "value": "/match/exact"}}, {"path": {"type": "PathPrefix", "value": "/match/prefix/one"}}],
            ),
            rule(
                backend("infra-backend-v3"),
                matches=[{"path": {"type": "Exact", "value": "/match/exact/one"}}, {"path": {"type": "PathPrefix", "value": "/match/"}}],
            ),
        ],
    )
    headers = route(
        "headers",
        hostnames=["headers.example"],
        rules=[
            rule(backend("infra-backend-v1"), matches=[{"headers": [{"name": "version", "value": "one"}]}]),
            rule(backend("infra-backend-v2"), matches=[{"headers": [{"name": "version", "value": "two"}]}]),
            rule(backend("infra-backend-v1"), matches=[{"headers": [{"name": "version", "value": "two"}, {"name": "color", "value": "orange"}]}]),
            rule(backend("infra-backend-v1"), matches=[{"headers": [{"name": "color", "value": "blue"}]}, {"headers": [{"name": "color", "value": "green"}]}]),
            rule(backend("infra-backend-v2"), matches=[{"headers": [{"name": "color", "value": "red"}]}, {"headers": [{"name": "color", "value": "yellow"}]}]),
        ],
    )
    query = route(
        "query",
        hostnames=["query.example"],
        rules=[
            rule(backend("infra-backend-v1"), matches=[{"queryParams": [{"name": "animal", "value": "whale"}]}]),
            rule(backend("infra-backend-v2"), matches=[{"queryParams": [{"name": "animal", "value": "dolphin"}]}]),
            rule(backend("infra-backend-v3"), matches=[{"queryParams": [{"name": "ANIMAL", "value": "Whale"}]}]),
        ],
    )
    method = route(
        "method",
        hostnames=["method.example"],
        rules=[rule(backend("infra-backend-v1"), matches=[{"method": "POST"}]), rule(backend("infra-backend-v2"), matches=[{"method": "GET"}])],
    )
    topo = lab(*base(), path_order, headers, query, method)
    cases = {
        ("order.example", "/match/exact/one"): "infra-backend-v3",
        ("order.example", "/match/exact"): "infra-backend-v2",
        ("order.example", "/match"): "infra-backend-v1",
        ("order.example", "/match/prefix/one/any"): "infra-backend-v2",
        ("order.example", "/match/prefix/any"): "infra-backend-v1",
        ("order.example", "/match/any"): "infra-backend-v3",
        ("query.example", "/?animal=whale"): "infra-backend-v1",
        ("query.example", "/?animal=dolphin&color=blue"): "infra-backend-v2",
        ("query.example", "/?ANIMAL=Whale"): "infra-backend-v3",
        ("query.example", "/?animal=whaledolphin"): 404,
        ("query.example", "/"): 404,
    }
    for (host, path), want in cases.items():
        assert decide(topo, "same-namespace", host, path) == want, (host, path)
    for hdrs, want in [
        ({"version": "one"}, "infra-backend-v1"),
        ({"version": "two"}, "infra-backend-v2"),
        ({"version": "two", "color": "orange"}, "infra-backend-v1"),
        ({"version": "two", "color": "blue"}, "infra-backend-v2"),
        ({"color": "orange"}, 404),
        ({"color": "green"}, "infra-backend-v1"),
        ({"color": "yellow"}, "infra-backend-v2"),
        ({"Version": "ONE"}, 404),
    ]:
        assert decide(topo, "same-namespace", "headers.example", "/", headers=hdrs) == want, hdrs
    assert decide(topo, "same-namespace", "method.example", "/", "POST") == "infra-backend-v1"
    assert decide(topo, "same-namespace", "method.example", "/", "HEAD") == 404


def test_the_rendered_conf_has_a_server_per_hostname_and_the_matches_in_order():
    topo = lab(
        *base(),
        route("r", hostnames=["a.example", "*.b.example"], rules=[rule(backend("infra-backend-v1"), matches=[{"path": {"type": "Exact", "value": "/x"}}])]),
    )
    conf = nginx.render(topo, World.of(topo), f"{INFRA}/same-namespace", "/run/x")
    assert "server_name a.example;" in conf and "server_name *.b.example;" in conf
    assert "listen 80 default_server;" in conf and 'map $uri $gwc_0 { "~^/x$" 1; default 0; }' in conf
    assert "location = /_ngf/none { internal; return 404; }" in conf
    assert nginx.generation(conf)


def test_the_models_issuer_is_the_labs_ca():
    from labctl import pki
    from labctl.model import gateway as G

    assert G.LAB_ISSUER == pki.ISSUER


def test_the_gateway_topology_loads_with_the_seeds_gateway_as_written():
    from labctl.model.load import load as load_file
    from tests.helpers import REPO

    topo = load_file(str(REPO / "topologies/gateway.yaml"))
    world = World.of(topo)
    assert [g.key for g in world.served()] == ["default/example-gateway"], "the seeds' class, declared for the lab's controller"
    assert topo.service("default/example-gateway-nginx").load_balancer_ip
    assert [p["conditions"][0]["reason"] for r in world.status({})["httpRoutes"] for p in r["parents"]] == ["Accepted"]


def test_conditions_carry_the_generation_a_spec_change_bumps():
    """HTTPRouteObservedGenerationBump / GatewayObservedGenerationBump: every condition
    carries observedGeneration, and a changed spec (not a re-applied one) bumps it."""
    docs = [*base(), route("r")]
    first = lab(*docs)
    again = load(dump(lab_doc(**LB), *docs), first)
    changed = load(dump(lab_doc(**LB), *base(), route("r", hostnames=["x.example"])), again)

    def gens(topo):
        st = status(topo)
        r = next(r for r in st["httpRoutes"] if r["name"] == "r")
        g = next(g for g in st["gateways"] if g["name"] == "same-namespace")
        return r["generation"], {c["observedGeneration"] for p in r["parents"] for c in p["conditions"]}, g["generation"]

    assert gens(first) == (1, {1}, 1) and gens(again) == (1, {1}, 1)
    assert gens(changed) == (2, {2}, 1), "only the route's spec changed"
