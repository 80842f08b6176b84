"""Gateway API on real nginx, one pod per Gateway: the Core HTTP conformance tests'
scenarios (matching and precedence, hostnames, filters, backends, ReferenceGrant,
allowedRoutes), Extended method and query matching, redirects and rewrites, HTTPS
listeners with SNI, NetworkPolicy on the second hop, and reloads on change. Requests
are real HTTP/1.1 from an external host to each Gateway's LoadBalancer IP."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

import pytest

from labctl.probe import http
from tests.l7 import APP, INFRA, LB, WEB, backend, base, gateway, grant, listener, route, running
from tests.l7 import route_rule as rule

pytestmark = pytest.mark.kernel


def up(lab, *docs, **spec):
    for k, v in LB.items():
        spec.setdefault(k, v)
    spec.setdefault("externals", [{"name": "client"}])
    return lab.up(lab.doc(**spec), *docs)


def get(lab, gw, host, path="/", method="GET", headers=(), port=80, ns=INFRA):
    address = lab.topo.service(f"{ns}/{gw}-nginx").load_balancer_ip
    return http.probe(f"{lab.name}-client", address, port, path, host, method, list(headers), 3.0)


def who(answer) -> str | int:
    """The Service behind the pod that answered (pods are named after their Service), else the status."""
    return answer.served_by.split("/")[1] if answer.status == 200 and answer.served_by else answer.status


def path(kind, value):
    return {"path": {"type": kind, "value": value}}


def test_core_matching_as_the_conformance_tests_expect(lab):
    """HTTPRouteSimpleSameNamespace, ExactPathMatching, Matching, PathMatchOrder,
    HeaderMatching, MatchingAcrossRoutes, and Extended method and query matching: each
    scenario on its own hostname of the Gateway `same-namespace`."""
    v1, v2, v3 = backend("infra-backend-v1"), backend("infra-backend-v2"), backend("infra-backend-v3")
    routes = [
        route("exact", hostnames=["exact.example"], rules=[rule(v1, matches=[path("Exact", "/one")]), rule(v2, matches=[path("Exact", "/two")])]),
        route(
            "matching",
            hostnames=["matching.example"],
            rules=[
                rule(v1, matches=[path("PathPrefix", "/"), {"headers": [{"name": "version", "value": "one"}]}]),
                rule(v2, matches=[path("PathPrefix", "/v2"), {"headers": [{"name": "version", "value": "two"}]}]),
            ],
        ),
        route(
            "order",
            hostnames=["order.example"],
            rules=[
                rule(v1, matches=[path("Exact", "/match"), path("PathPrefix", "/match/prefix/any")]),
                rule(v2, matches=[path("Exact", "/match/exact"), path("PathPrefix", "/match/prefix/one")]),
                rule(v3, matches=[path("Exact", "/match/exact/one"), path("PathPrefix", "/match/")]),
            ],
        ),
        route(
            "headers",
            hostnames=["headers.example"],
            rules=[
                rule(v1, matches=[{"headers": [{"name": "version", "value": "one"}]}]),
                rule(v2, matches=[{"headers": [{"name": "version", "value": "two"}]}]),
                rule(v1, matches=[{"headers": [{"name": "version", "value": "two"}, {"name": "color", "value": "orange"}]}]),
                rule(v1, matches=[{"headers": [{"name": "color", "value": "blue"}]}, {"headers": [{"name": "color", "value": "green"}]}]),
                rule(v2, matches=[{"headers": [{"name": "color", "value": "red"}]}, {"headers": [{"name": "color", "value": "yellow"}]}]),
            ],
        ),
        route("across-1", hostnames=["example.com", "example.net"], rules=[rule(v1)]),
        route("across-2", hostnames=["example.com"], rules=[rule(v2, matches=[path("PathPrefix", "/v2"), {"headers": [{"name": "version", "value": "two"}]}])]),
        route("method", hostnames=["method.example"], rules=[rule(v1, matches=[{"method": "POST"}]), rule(v2, matches=[{"method": "GET"}])]),
        route(
            "query",
            hostnames=["query.example"],
            rules=[
                rule(v1, matches=[{"queryParams": [{"name": "animal", "value": "whale"}]}]),
                rule(v2, matches=[{"queryParams": [{"name": "animal", "value": "dolphin"}]}]),
                rule(v3, matches=[{"queryParams": [{"name": "ANIMAL", "value": "Whale"}]}]),
            ],
        ),
        route("simple", hostnames=["simple.example"]),
    ]
    up(lab, *base(), *routes)
    cases = [
        ("simple.example", "/", (), "infra-backend-v1"),
        ("exact.example", "/one", (), "infra-backend-v1"),
        ("exact.example", "/two", (), "infra-backend-v2"),
        ("exact.example", "/", (), 404),
        ("exact.example", "/one/example", (), 404),
        ("exact.example", "/two/", (), 404),
        ("exact.example", "/Two", (), 404),
        ("matching.example", "/", (), "infra-backend-v1"),
        ("matching.example", "/example", (), "infra-backend-v1"),
        ("matching.example", "/", (("version", "one"),), "infra-backend-v1"),
        ("matching.example", "/v2", (), "infra-backend-v2"),
        ("matching.example", "/v2/example", (), "infra-backend-v2"),
        ("matching.example", "/", (("version", "two"),), "infra-backend-v2"),
        ("matching.example", "/v2example", (), "infra-backend-v1"),
        ("matching.example", "/foo/v2/example", (), "infra-backend-v1"),
        ("order.example", "/match/exact/one", (), "infra-backend-v3"),
        ("order.example", "/match/exact", (), "infra-backend-v2"),
        ("order.example", "/match", (), "infra-backend-v1"),
        ("order.example", "/match/prefix/one/any", (), "infra-backend-v2"),
        ("order.example", "/match/prefix/any", (), "infra-backend-v1"),
        ("order.example", "/match/any", (), "infra-backend-v3"),
        ("headers.example", "/", (("Version", "one"),), "infra-backend-v1"),
        ("headers.example", "/", (("version", "two"),), "infra-backend-v2"),
        ("headers.example", "/", (("version", "two"), ("color", "orange")), "infra-backend-v1"),
        ("headers.example", "/", (("version", "two"), ("color", "blue")), "infra-backend-v2"),
        ("headers.example", "/", (("color", "orange"),), 404),
        ("headers.example", "/", (("color", "blue"),), "infra-backend-v1"),
        ("headers.example", "/", (("color", "green"),), "infra-backend-v1"),
        ("headers.example", "/", (("color", "red"),), "infra-backend-v2"),
        ("headers.example", "/", (("color", "yellow"),), "infra-backend-v2"),
        ("headers.example", "/", (("color", "purple"),), 404),
        ("headers.example", "/", (("version", "ONE"),), 404),
        ("headers.example", "/", (("some-other-header", "one"),), 404),
        ("example.com", "/", (), "infra-backend-v1"),
        ("example.net", "/", (), "infra-backend-v1"),
        ("example.com:8080", "/v2", (), "infra-backend-v2"),
        ("example.net", "/v2", (), "infra-backend-v1"),
        ("example.com", "/", (("version", "two"),), "infra-backend-v2"),
        ("query.example", "/?animal=whale", (), "infra-backend-v1"),
        ("query.example", "/?animal=dolphin", (), "infra-backend-v2"),
        ("query.example", "/?animal=whale&otherparam=irrelevant", (), "infra-backend-v1"),
        ("query.example", "/?ANIMAL=Whale", (), "infra-backend-v3"),
        ("query.example", "/?animal=whaledolphin", (), 404),
        ("query.example", "/", (), 404),
        ("unknown.example", "/", (), 404),
    ]
    wrong = [(h, p, hd, want, got) for h, p, hd, want in cases if (got := who(get(lab, "same-namespace", h, p, headers=hd))) != want]
    assert not wrong, wrong
    assert who(get(lab, "same-namespace", "method.example", "/", "POST")) == "infra-backend-v1"
    assert who(get(lab, "same-namespace", "method.example", "/", "GET")) == "infra-backend-v2"
    assert who(get(lab, "same-namespace", "method.example", "/", "HEAD")) == 404
    # explain agrees with nginx, and names the rule
    why = json.loads(
        lab.cli(
            "explain", "--lab", lab.name, "ext/client", f"gw/{INFRA}/same-namespace", "--http", "/", "--host", "headers.example", "-H", "color: red", "--json"
        ).stdout
    )
    assert why["to"] == f"gw/{INFRA}/same-namespace" and why["allowed"]
    assert why["http"]["route"]["route"] == f"{INFRA}/headers" and "rule 4" in why["http"]["route"]["location"]
    assert why["http"]["hops"][0]["endpoints"][0]["endpoint"] == f"{INFRA}/infra-backend-v2"


def test_listener_hostnames_pick_the_most_specific_listener(lab):
    """HTTPRouteListenerHostnameMatching and HTTPRouteHostnameIntersection."""
    gw = gateway(
        "httproute-listener-hostname-matching",
        [
            listener("listener-1", hostname="bar.com"),
            listener("listener-2", hostname="foo.bar.com"),
            listener("listener-3", hostname="*.bar.com"),
            listener("listener-4", hostname="*.foo.com"),
        ],
    )
    name = gw["metadata"]["name"]
    sect = lambda s: {"name": name, "namespace": INFRA, "sectionName": s}  # noqa: E731
    routes = [
        route("r1", parents=(sect("listener-1"),), rules=[rule(backend("infra-backend-v1"))]),
        route("r2", parents=(sect("listener-2"),), rules=[rule(backend("infra-backend-v2"))]),
        route("r3", parents=(sect("listener-3"), sect("listener-4")), rules=[rule(backend("infra-backend-v3"))]),
        route("wrong", parents=(name,), hostnames=["nothing.else.org"], rules=[rule(backend("infra-backend-v1"))]),
    ]
    up(lab, *base(), gw, *routes)
    cases = {
        "bar.com": "infra-backend-v1",
        "foo.bar.com": "infra-backend-v2",
        "baz.bar.com": "infra-backend-v3",
        "boo.bar.com": "infra-backend-v3",
        "multiple.prefixes.bar.com": "infra-backend-v3",
        "multiple.prefixes.foo.com": "infra-backend-v3",
        "foo.com": 404,
        "no.matching.host": 404,
        "nothing.else.org": 404,
    }
    got = {h: who(get(lab, name, h)) for h in cases}
    assert got == cases
    status = json.loads(lab.cli("status", "--lab", lab.name, "--json").stdout)
    routes_status = {r["name"]: r for r in status["httpRoutes"]}
    accepted = routes_status["wrong"]["parents"][0]["conditions"][0]
    assert (accepted["status"], accepted["reason"]) == ("False", "NoMatchingListenerHostname")
    g = next(g for g in status["gateways"] if g["name"] == name)
    assert [li["attachedRoutes"] for li in g["listeners"]] == [1, 1, 1, 1]
    assert g["addresses"] == [lab.topo.service(f"{INFRA}/{name}-nginx").load_balancer_ip]


def test_filters_header_modifiers_redirects_and_rewrites(lab):
    """HTTPRouteRequestHeaderModifier, ResponseHeaderModifier, RedirectHostAndStatus and
    the Extended redirect (scheme, port, path) and URLRewrite (path, host) tests."""
    v1 = backend("infra-backend-v1")
    modifier = {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {
            "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
            "add": [{"name": "X-Header-Add", "value": "add-appends-values"}],
            "remove": ["X-Header-Remove"],
        },
    }
    response = {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "X-Header-Add", "value": "header-val-$1"}]}}
    routes = [
        route("headers", hostnames=["headers.example"], rules=[rule(v1, filters=[modifier, response])]),
        route(
            "redirect",
            hostnames=["redirect.example"],
            rules=[
                rule(matches=[path("PathPrefix", "/hostname-redirect")], filters=[{"type": "RequestRedirect", "requestRedirect": {"hostname": "example.org"}}]),
                rule(matches=[path("PathPrefix", "/status-code-301")], filters=[{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}]),
                rule(matches=[path("PathPrefix", "/scheme")], filters=[{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]),
                rule(matches=[path("PathPrefix", "/port")], filters=[{"type": "RequestRedirect", "requestRedirect": {"port": 8083}}]),
                rule(
                    matches=[path("PathPrefix", "/prefix")],
                    filters=[
                        {"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/replacement-prefix"}}}
                    ],
                ),
                rule(
                    matches=[path("PathPrefix", "/full")],
                    filters=[
                        {"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/full-path-replacement"}}}
                    ],
                ),
            ],
        ),
        route(
            "rewrite",
            hostnames=["rewrite.example"],
            rules=[
                rule(
                    v1,
                    matches=[path("PathPrefix", "/prefix/one")],
                    filters=[{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/one"}}}],
                ),
                rule(
                    v1,
                    matches=[path("PathPrefix", "/strip-prefix")],
                    filters=[{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
                ),
                rule(
                    v1,
                    matches=[path("PathPrefix", "/full/one")],
                    filters=[{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"}}}],
                ),
                rule(v1, matches=[path("PathPrefix", "/host")], filters=[{"type": "URLRewrite", "urlRewrite": {"hostname": "rewrite.example.org"}}]),
            ],
        ),
    ]
    mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": backend("infra-backend-v2")}}
    routes.append(route("mirror", hostnames=["mirror.example"], rules=[rule(v1, filters=[mirror])]))
    up(lab, *base(), *routes)
    # RequestMirror: the answer is v1's, and v2 gets a copy (seen in conntrack on v2's node)
    v2 = lab.pod_ip(f"{INFRA}/infra-backend-v2")

    def copies() -> int:
        return lab.sh(lab.node_ns("node2"), "conntrack", "-L", "-p", "tcp", "-d", v2, "--dport", "3000", check=False).count("dport=3000")

    before = copies()
    assert who(get(lab, "same-namespace", "mirror.example", "/copy")) == "infra-backend-v1"
    deadline = time.monotonic() + 3
    while copies() != before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)  # the copy is nginx's subrequest, made alongside the answer
    assert copies() == before + 1
    got = get(
        lab,
        "same-namespace",
        "headers.example",
        "/",
        headers=[("x-header-set", "some-other-value"), ("x-header-add", "some-other-value"), ("X-Header-Remove", "r"), ("Keep", "k")],
    )
    saw = got.backend_saw["headers"]
    assert saw["x-header-set"] == ["set-overwrites-values"] and saw["x-header-add"] == ["some-other-value,add-appends-values"]
    assert "x-header-remove" not in saw and saw["keep"] == ["k"]
    assert get(lab, "same-namespace", "headers.example").backend_saw["headers"]["x-header-add"] == ["add-appends-values"]
    assert got.response_headers.get("x-header-add") == ["header-val-$1"], "a literal $ stays literal"
    redirects = {
        "/hostname-redirect": (302, "http://example.org/hostname-redirect"),
        "/status-code-301": (301, "http://redirect.example/status-code-301"),
        "/scheme": (302, "https://redirect.example/scheme"),
        "/port": (302, "http://redirect.example:8083/port"),
        "/prefix/one/two?q=1": (302, "http://redirect.example/replacement-prefix/one/two?q=1"),
        "/prefix": (302, "http://redirect.example/replacement-prefix"),
        "/full/x?q=1": (302, "http://redirect.example/full-path-replacement?q=1"),
    }
    for p, want in redirects.items():
        a = get(lab, "same-namespace", "redirect.example", p)
        assert (a.status, a.location) == want, p
    rewrites = {
        "/prefix/one/two": "/one/two",
        "/strip-prefix/three": "/three",
        "/strip-prefix": "/",
        "/full/one/two?x=1": "/one?x=1",
    }
    for p, want in rewrites.items():
        assert get(lab, "same-namespace", "rewrite.example", p).backend_saw["path"] == want, p
    host = get(lab, "same-namespace", "rewrite.example", "/host/x")
    assert host.backend_saw["host"] == "rewrite.example.org" and host.backend_saw["path"] == "/host/x"


def test_backends_weights_grants_and_errors(lab):
    """HTTPRouteWeight, InvalidNonExistentBackendRef, InvalidBackendRefUnknownKind,
    InvalidCrossNamespaceBackendRef, ReferenceGrant (and its deletion),
    PartiallyInvalidViaInvalidReferenceGrant, NoBackendRefs, and 503 without endpoints."""
    routes = [
        route(
            "weights",
            hostnames=["weights.example"],
            rules=[rule(backend("infra-backend-v1", weight=70), backend("infra-backend-v2", weight=30), backend("infra-backend-v3", weight=0))],
        ),
        route("missing", hostnames=["missing.example"], rules=[rule(backend("nonexistent"))]),
        route("kind", hostnames=["kind.example"], rules=[rule({"group": "unknownkind.example.com", "kind": "NonExistent", "name": "x"})]),
        route("cross", hostnames=["cross.example"], rules=[rule(backend("web-backend", namespace=WEB))]),
        route(
            "partly",
            hostnames=["partly.example"],
            rules=[rule(backend("app-backend-v1", namespace=APP)), rule(backend("web-backend", namespace=WEB), matches=[path("PathPrefix", "/v2")])],
        ),
        route("none", hostnames=["none.example"], rules=[rule(matches=[path("PathPrefix", "/empty")]), rule(backend("infra-backend-v1"))]),
    ]
    granted = grant(APP, INFRA)
    up(lab, *base(), *routes, granted)
    cases = {
        "missing.example": 500,
        "kind.example": 500,
        "cross.example": 500,
        "partly.example": "app-backend-v1",
        "none.example": "infra-backend-v1",
    }
    assert {h: who(get(lab, "same-namespace", h)) for h in cases} == cases
    assert get(lab, "same-namespace", "partly.example", "/v2").status == 500
    assert get(lab, "same-namespace", "none.example", "/empty").status == 500
    picks = Counter(who(get(lab, "same-namespace", "weights.example")) for _ in range(200))
    assert picks["infra-backend-v3"] == 0 and 110 <= picks["infra-backend-v1"] <= 170 and picks["infra-backend-v1"] + picks["infra-backend-v2"] == 200, picks
    # a grant for the web backend makes it served; deleting it brings the 500 back
    web = grant(WEB, INFRA, name="web")
    lab.cli("apply", "--lab", lab.name, "-f", "-", input=json.dumps(web))
    assert who(get(lab, "same-namespace", "cross.example")) == "web-backend"
    lab.cli("delete", "--lab", lab.name, "-f", "-", input=json.dumps(web))
    assert get(lab, "same-namespace", "cross.example").status == 500
    lab.cli("ready", "--lab", lab.name, f"{INFRA}/infra-backend-v1", "false")
    assert get(lab, "same-namespace", "none.example").status == 503, "no ready endpoints: 503"


def test_allowed_routes_from_other_namespaces(lab):
    """HTTPRouteCrossNamespace (Selector) and InvalidCrossNamespaceParentRef (Same)."""
    routes = [
        route("cross", parents=("backend-namespaces",), ns=WEB, rules=[rule(backend("web-backend"))]),
        route("invalid", parents=("same-namespace",), ns=WEB, hostnames=["invalid.example"], rules=[rule(backend("web-backend"))]),
        route("all", parents=("all-namespaces",), ns=APP, rules=[rule(backend("app-backend-v2"))]),
    ]
    up(lab, *base(), *routes)
    assert who(get(lab, "backend-namespaces", "any.example")) == "web-backend"
    assert who(get(lab, "all-namespaces", "any.example")) == "app-backend-v2"
    assert get(lab, "same-namespace", "invalid.example").status == 404, "a route the listener does not allow gets no traffic"


def test_https_listeners_with_sni_and_certificates_from_the_lab_ca(lab):
    """HTTPRouteHTTPSListener: a Secret's certificate per listener, one issued by the
    cert-manager annotation, an unknown name refused at the handshake."""
    from labctl import pki

    up(lab, *base())
    secrets = []
    for name in ("example.org", "second-example.org"):
        pair = pki.issue(lab.handle.dir.path / "ca", lab.name, [name])
        data = {"tls.crt": base64.b64encode(pair.cert.read_bytes()).decode(), "tls.key": base64.b64encode(pair.key.read_bytes()).decode()}
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": f"tls-{name.split('.')[0]}", "namespace": INFRA},
                "data": data,
            }
        )
    gw = gateway(
        "https",
        [
            listener("https", port=443, protocol="HTTPS", hostname="example.org", tls={"certificateRefs": [{"name": "tls-example"}]}),
            listener("second", port=443, protocol="HTTPS", hostname="second-example.org", tls={"certificateRefs": [{"name": "tls-second-example"}]}),
            listener("issued", port=443, protocol="HTTPS", hostname="issued.example", tls={"certificateRefs": [{"name": "issued-tls"}]}),
        ],
    )
    gw["metadata"]["annotations"] = {"cert-manager.io/cluster-issuer": "labctl-ca"}
    routes = [
        route("r1", parents=({"name": "https", "namespace": INFRA, "sectionName": "https"},), hostnames=["example.org"]),
        route("r2", parents=({"name": "https", "namespace": INFRA, "sectionName": "second"},), rules=[rule(backend("infra-backend-v2"))]),
        route("r3", parents=({"name": "https", "namespace": INFRA, "sectionName": "issued"},), rules=[rule(backend("infra-backend-v3"))]),
    ]
    up(lab, *base(), *secrets, gw, *routes)
    address = lab.topo.service(f"{INFRA}/https-nginx").load_balancer_ip
    ca = str(pki.ca(lab.handle.dir.path / "ca", lab.name).cert)

    def https(host, sni=None):
        return http.probe(f"{lab.name}-client", address, 443, "/", host, "GET", [], 3.0, http.TlsOptions(sni=sni or host, cafile=ca))

    for host, want in (("example.org", "infra-backend-v1"), ("second-example.org", "infra-backend-v2"), ("issued.example", "infra-backend-v3")):
        got = https(host)
        assert got.tls["verified"] and host in got.tls["san"] and who(got) == want, (host, got.tls, got.status)
    refused = https("unknown-example.org")
    assert refused.status is None and "unrecognized name" in refused.tls["error"], "no listener has the name: the handshake is refused"


def test_network_policy_on_the_second_hop_and_changes_reload(lab):
    """The backend's connection comes from the Gateway's nginx pod: a default-deny
    namespace refuses it until that pod is allowed; an invalid route is refused whole
    (exit 2) before nginx is touched."""
    from tests.helpers import np

    r = route("r", hostnames=["web.example"], rules=[rule(backend("web-backend", namespace=WEB))])
    g = grant(WEB, INFRA, name="web")
    deny = np("deny", ns=WEB)
    up(lab, *base(), r, g, deny)
    assert get(lab, "same-namespace", "web.example").status == 502
    why = json.loads(lab.cli("explain", "--lab", lab.name, "ext/client", f"gw/{INFRA}/same-namespace", "--http", "/", "--host", "web.example", "--json").stdout)
    assert not why["allowed"] and why["http"]["hops"][0]["endpoints"][0]["allowed"] is False
    allow = np("from-gateway", ns=WEB, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": INFRA}}}]}])
    lab.cli("apply", "--lab", lab.name, "-f", "-", input=json.dumps(allow))
    assert who(get(lab, "same-namespace", "web.example")) == "web-backend"
    conf_before = lab.sh(lab.pod_ns(f"{INFRA}/same-namespace-nginx-0"), "cat", "/etc/nginx/nginx.conf")
    bad = route("bad", hostnames=["bad.example"], rules=[rule(backend("x"), matches=[path("Exact", "no-slash")])])
    p = lab.cli("apply", "--lab", lab.name, "-f", "-", input=json.dumps(bad), check=False)
    assert p.returncode == 2 and "spec.rules[0].matches[0].path.value" in p.stderr
    assert lab.sh(lab.pod_ns(f"{INFRA}/same-namespace-nginx-0"), "cat", "/etc/nginx/nginx.conf") == conf_before
    new = route("new", hostnames=["new.example"], rules=[rule(backend("infra-backend-v2"))])
    lab.cli("apply", "--lab", lab.name, "-f", "-", input=json.dumps(new))
    assert who(get(lab, "same-namespace", "new.example")) == "infra-backend-v2", "apply returns once nginx serves the change"


def test_deleting_a_gateway_stops_its_nginx_and_removes_its_service(lab):
    import subprocess

    up(lab, *base())
    ns = lab.pod_ns(f"{INFRA}/all-namespaces-nginx-0")
    pids = [int(p) for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
    assert pids and any("nginx" in open(f"/proc/{p}/cmdline").read() for p in pids)
    kept = {p.key: (p.node, p.ip) for p in lab.topo.pods if "nginx" in p.name and "all-namespaces" not in p.name}
    gone = gateway("all-namespaces")
    lab.cli("delete", "--lab", lab.name, "-f", "-", input=json.dumps(gone))
    assert {p.key: (p.node, p.ip) for p in lab.topo.pods if "nginx" in p.name} == kept, "the other Gateways' pods stay where they are"
    assert not [p for p in pids if running(p)], "its nginx (master and worker) is stopped"
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    st = json.loads(lab.cli("status", "--lab", lab.name, "--json").stdout)
    assert f"{INFRA}/all-namespaces-nginx" not in [f"{s['namespace']}/{s['name']}" for s in st["services"]]
    assert [g["name"] for g in st["gateways"]] == ["same-namespace", "backend-namespaces"]
    assert who(get(lab, "same-namespace", "x.example")) == 404, "the other Gateways still serve"
