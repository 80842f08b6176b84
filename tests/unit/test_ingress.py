"""Ingress and IngressClass, pure: the API server's validation, the lab's controller
objects, and the nginx.conf rendered for them."""

from __future__ import annotations

import re

import pytest

from labctl.addons.ingress import nginx
from tests.helpers import dump, lab_doc, load, one, pod, svc
from tests.l7 import ingress
from tests.l7 import ingress_rule as rule

LB = {"loadBalancerPool": "10.10.20.200-10.10.20.210"}


def backends(*names):
    docs = []
    for n in names:
        docs.append(pod(n, labels={"app": n}, ports=(80,)))
        docs.append(svc(n, {"app": n}, ports=((80, 80),)))
    return docs


def lab(*docs, **spec):
    spec.setdefault("ingress", {})
    return load(dump(lab_doc(**LB, **spec), *docs))


# -- the controller's objects ---------------------------------------------------------------


def test_spec_ingress_adds_the_controller_its_service_and_the_default_class():
    topo = lab(ingress={"replicas": 2})
    ctrl = [p for p in topo.pods if p.namespace == "ingress-nginx"]
    assert [p.name for p in ctrl] == ["ingress-nginx-controller-0", "ingress-nginx-controller-1"]
    assert {p.node for p in ctrl} == {"node1", "node2"} and ctrl[0].containers[0].command[0] == "nginx"
    s = topo.service("ingress-nginx/ingress-nginx-controller")
    assert s.type == "LoadBalancer" and s.load_balancer_ip == "10.10.20.200" and s.external_traffic_policy == "Local"
    assert [(p.name, p.port) for p in s.ports] == [("http", 80), ("https", 443)] and s.health_check_node_port
    assert [(c.name, c.controller, c.default) for c in topo.ingress_classes] == [("nginx", "k8s.io/ingress-nginx", True)]
    assert "ingress-nginx" in topo.namespaces
    assert "spec.ingress.service: LoadBalancer needs spec.loadBalancerPool" in one(dump(lab_doc(ingress={})))
    nodeport = load(dump(lab_doc(ingress={"service": "NodePort", "externalTrafficPolicy": "Cluster"})))
    assert nodeport.service("ingress-nginx/ingress-nginx-controller").type == "NodePort"


def test_the_controller_names_are_the_labs():
    taken = svc("ingress-nginx-controller", {"app": "x"}, namespace="ingress-nginx")
    assert "is the ingress controller's" in one(dump(lab_doc(**LB, ingress={}), taken))


# -- validation as the API server's ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,expect",
    [
        ({}, "spec: either `defaultBackend` or `rules` must be specified"),
        ({"rules": [rule("foo.com", ("foo", "Prefix", "a"))]}, "spec.rules[0].http.paths[0].path: 'foo' must be an absolute path"),
        ({"rules": [rule("foo.com", ("/a//b", "Exact", "a"))]}, "must not contain '//'"),
        ({"rules": [rule("foo.com", ("/a/..", "Prefix", "a"))]}, "must not end with '/..'"),
        ({"rules": [rule("foo.com", ("/a", "Regex", "a"))]}, "pathType: must be one of Exact, Prefix, ImplementationSpecific"),
        ({"rules": [rule("1.2.3.4", ("/", "Prefix", "a"))]}, "spec.rules[0].host: '1.2.3.4' must be a DNS name, not an IP address"),
        ({"rules": [rule("a.*.com", ("/", "Prefix", "a"))]}, "a wildcard '*' must be the whole first label"),
        ({"rules": [{"host": "a.com", "http": {"paths": []}}]}, "spec.rules[0].http.paths: must have at least one path"),
        (
            {"defaultBackend": {"service": {"name": "a", "port": {"name": "http", "number": 80}}}},
            "spec.defaultBackend.service.port: cannot set both port name & port number",
        ),
        ({"defaultBackend": {"service": {"name": "a", "port": {}}}}, "spec.defaultBackend.service.port: port name or number is required"),
    ],
)
def test_ingress_validation(spec, expect):
    msg = one(dump(lab_doc(**LB, ingress={}), {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"}, "spec": spec}))
    assert expect in msg


def test_path_type_is_required_and_classes_need_a_controller():
    doc = ingress("i", [rule("a.com", ("/", "Prefix", "a"))])
    del doc["spec"]["rules"][0]["http"]["paths"][0]["pathType"]
    assert "pathType" in one(dump(lab_doc(**LB, ingress={}), doc))
    bad = {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "c"}, "spec": {"controller": "nodomain"}}
    assert "spec.controller: 'nodomain' must be a domain-prefixed path" in one(dump(lab_doc(**LB, ingress={}), bad))


# -- nginx.conf ---------------------------------------------------------------------------------


def conf(*docs) -> str:
    return nginx.render(lab(*docs), "nginx", "/run/x")


def server(text: str, name: str) -> str:
    block = text.split(f"server_name {name};")[1]
    return block.split("\n    }")[0]


def test_path_types_render_with_the_specifications_semantics():
    """The ingress conformance suite's path_rules hosts, as nginx locations."""
    rules = [
        rule("exact-path-rules", ("/foo", "Exact", "foo-exact")),
        rule("prefix-path-rules", ("/foo", "Prefix", "foo-prefix"), ("/aaa/bbb", "Prefix", "aaa-slash-bbb-prefix"), ("/aaa", "Prefix", "aaa-prefix")),
        rule("mixed-path-rules", ("/foo", "Prefix", "foo-prefix"), ("/foo", "Exact", "foo-exact")),
        rule("trailing-slash-path-rules", ("/aaa/bbb/", "Prefix", "aaa-slash-bbb-slash-prefix"), ("/foo/", "Exact", "foo-slash-exact")),
    ]
    text = conf(
        *backends("foo-exact", "foo-prefix", "aaa-slash-bbb-prefix", "aaa-prefix", "aaa-slash-bbb-slash-prefix", "foo-slash-exact"), ingress("p", rules)
    )
    exact = server(text, "exact-path-rules")
    assert "location = /foo { proxy_pass http://default-foo-exact-80; }" in exact and "location / { return 404; }" in exact
    prefix = server(text, "prefix-path-rules")
    for loc in ("/foo/", "= /foo", "/aaa/bbb/", "= /aaa/bbb", "/aaa/", "= /aaa"):
        assert f"location {loc} {{" in prefix, loc
    assert "location /foo {" not in prefix, "element-wise: no plain nginx prefix (it would match /foobar)"
    mixed = server(text, "mixed-path-rules")
    assert "location = /foo { proxy_pass http://default-foo-exact-80; }" in mixed, "Exact beats Prefix on the same path"
    assert "location /foo/ { proxy_pass http://default-foo-prefix-80; }" in mixed
    trailing = server(text, "trailing-slash-path-rules")
    assert "location = /aaa/bbb { proxy_pass http://default-aaa-slash-bbb-slash-prefix-80; }" in trailing, "Prefix /aaa/bbb/ matches /aaa/bbb"
    assert "location = /foo { return 404; }" in trailing, "Exact /foo/: /foo is no match (and no 301)"


def test_hosts_wildcards_and_default_backends():
    text = conf(
        *backends("wild", "exact", "fallback", "catch"),
        ingress("w", [rule("*.foo.com", ("/", "Prefix", "wild")), rule("foo.bar.com", ("/", "Prefix", "exact"))]),
        ingress("d", default="catch"),
    )
    assert re.search(r"server_name ~\^\[\^\.\]\+\\\.foo\\\.com\$;", text), "a wildcard covers one label"
    assert "server_name foo.bar.com;" in text
    catch_all = text.split("listen 80 default_server;")[1].split("\n    }")[0]
    assert "location / { proxy_pass http://default-catch-80; }" in catch_all, "an Ingress with only a defaultBackend takes what no rule matches"


def test_the_older_ingress_wins_and_missing_backends_answer_503():
    text = conf(
        *backends("old", "new"),
        pod("idle", labels={"app": "idle"}),
        svc("idle", {"app": "nobody"}, ports=((80, 80),)),
        ingress("first", [rule("a.com", ("/x", "Prefix", "old"))]),
        ingress("second", [rule("a.com", ("/x", "Prefix", "new"), ("/gone", "Exact", "missing"), ("/idle", "Exact", "idle"))]),
    )
    a = server(text, "a.com")
    assert "location /x/ { proxy_pass http://default-old-80; }" in a
    assert "location = /gone { return 503; }" in a and "missing:80: no such Service" in a
    assert "location = /idle { return 503; }" in a and "no ready endpoints" in a
    assert "upstream default-old-80 {" in text and "upstream default-new-80" not in text, "upstreams only for what is served"


def test_a_class_the_lab_does_not_serve_is_left_out():
    other = {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "other"}, "spec": {"controller": "example.com/x"}}
    topo = lab(
        *backends("a"),
        other,
        ingress("mine", [rule("a.com", ("/", "Prefix", "a"))]),
        ingress("theirs", [rule("b.com", ("/", "Prefix", "a"))], ingressClassName="other"),
    )
    text = nginx.render(topo, "nginx", "/run/x")
    assert "server_name a.com;" in text and "b.com" not in text
    assert nginx.generation(text) and nginx.generation(text) != nginx.generation(conf(*backends("a")))


def test_the_ingress_topology_loads_with_the_seeds_ingress():
    from pathlib import Path

    from labctl.model.load import load as load_file

    topo = load_file(str(Path(__file__).parent.parent.parent / "topologies" / "ingress.yaml"))
    assert [i.key for i in topo.ingresses] == ["default/minimal-ingress"] and topo.lab.ingress is not None
    text = nginx.render(topo, "nginx", "/run/x")
    assert "location /app1/ { proxy_pass http://default-service1-80; }" in text


def test_rewrite_target_and_use_regex_as_ingress_nginx_renders_them():
    rw = ingress("rw", [rule("a.com", ("/something(/|$)(.*)", "ImplementationSpecific", "a"), ("/x", "Prefix", "b"))])
    rw["metadata"]["annotations"] = {"nginx.ingress.kubernetes.io/use-regex": "true", "nginx.ingress.kubernetes.io/rewrite-target": "/$2"}
    other = ingress("plain", [rule("a.com", ("/plain", "Exact", "a"))])
    text = conf(*backends("a", "b"), rw, other)
    a = server(text, "a.com")
    lines = [x.strip() for x in a.splitlines() if x.strip().startswith("location ~*")]
    assert lines[0] == 'location ~* "^/something(/|$)(.*)" { rewrite "(?i)/something(/|$)(.*)" /$2 break; proxy_pass http://default-a-80; }', "longest first"
    assert 'location ~* "^/plain" { proxy_pass http://default-a-80; }' in lines, "the whole host turns regex, other Ingresses' paths too"
    assert "location = /plain" not in a


def test_limit_rps_is_a_zone_per_ingress_with_a_burst():
    limited = ingress("lim", [rule("a.com", ("/", "Prefix", "a"))])
    limited["metadata"]["annotations"] = {"nginx.ingress.kubernetes.io/limit-rps": "3"}
    text = conf(*backends("a"), limited)
    assert "limit_req_zone $binary_remote_addr zone=default_lim_rps:5m rate=3r/s;" in text and "limit_req_status 503;" in text
    assert "location / { limit_req zone=default_lim_rps burst=15 nodelay; proxy_pass http://default-a-80; }" in server(text, "a.com")


def tls_secret(name, crt=b"x", key=b"y", namespace="default"):
    import base64

    data = {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(key).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": name, "namespace": namespace}, "data": data}


def test_tls_secrets_are_validated_as_the_api_server_does():
    s = tls_secret("t")
    del s["data"]["tls.key"]
    assert "data[tls.key]: is required for a Secret of type kubernetes.io/tls" in one(dump(lab_doc(), s))
    s = tls_secret("t")
    s["data"]["tls.crt"] = "not base64!"
    assert "data[tls.crt]: is not valid base64" in one(dump(lab_doc(), s))
    load(dump(lab_doc(), tls_secret("ok"), {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "plain"}, "stringData": {"a": "b"}}))


def test_tls_servers_listen_on_443_with_their_hosts_certificate_else_the_fake_one():
    secure = ingress(
        "s", [rule("secure.example", ("/", "Prefix", "a")), rule("plain.example", ("/", "Prefix", "a"))], tls=[{"hosts": ["secure.example"], "secretName": "t"}]
    )
    secure["metadata"]["annotations"] = {"nginx.ingress.kubernetes.io/ssl-redirect": "true"}
    topo = lab(*backends("a"), secure)
    tls = nginx.Tls(default=("/fake.crt", "/fake.key"), hosts={"secure.example": ("/s.crt", "/s.key")}, why={"secure.example": "Secret default/t"})
    text = nginx.render(topo, "nginx", "/run/x", tls)
    assert "listen 443 ssl;" in text and "listen 443 ssl default_server;" in text
    blocks = {b.split("server_name ")[1].split(";")[0]: b for b in text.split("    server {")[1:] if "server_name " in b}
    # one setting for every server, chosen by SNI (a certificate per server costs every reload)
    assert "map $ssl_server_name $labctl_certificate {\n        hostnames;\n        default /fake.crt;\n        secure.example /s.crt;\n    }" in text
    assert "ssl_certificate $labctl_certificate;" in text and "ssl_certificate_key $labctl_certificate_key;" in text
    assert "# certificate: Secret default/t" in blocks["secure.example"] and "# certificate: the fake default" in blocks["plain.example"]
    assert "if ($scheme = http) { return 308 https://$host$request_uri; }" in blocks["secure.example"], "ssl-redirect on a host with tls"
    assert "return 308" not in blocks["plain.example"], "no tls, no redirect"


def test_affinity_cookie_maps_the_cookie_to_the_endpoint():
    sticky = ingress("sticky", [rule("a.com", ("/", "Prefix", "a"))])
    sticky["metadata"]["annotations"] = {"nginx.ingress.kubernetes.io/affinity": "cookie"}
    topo = lab(*backends("a"), sticky)
    text = nginx.render(topo, "nginx", "/run/x")
    ip = topo.pod("default/a").ip
    assert f'map $cookie_INGRESSCOOKIE $sticky_default_a_80_INGRESSCOOKIE {{\n        default default-a-80;\n        "{ip}:80" {ip}:80;\n    }}' in text
    assert "location / { proxy_pass http://$sticky_default_a_80_INGRESSCOOKIE; add_header Set-Cookie $sticky_default_a_80_INGRESSCOOKIE_set always; }" in text


def test_the_older_ingress_is_the_one_made_first_whatever_the_file_order():
    """creationTimestamp as labctl stamps it: document order within one file, then the
    order of the changes; an `up` that lists an older Ingress later keeps it older."""
    first = lab(*backends("a", "b"), ingress("old", [rule("x.com", ("/", "Prefix", "a"))]))
    order, stamp = first.created["Ingress/default/old"][:2]
    assert stamp.endswith("Z") and "T" in stamp and order == len(first.documents) - 1, "the file's last document"
    later = load(
        dump(
            lab_doc(**LB, ingress={}),
            *backends("a", "b"),
            ingress("new", [rule("x.com", ("/", "Prefix", "b"))]),
            ingress("old", [rule("x.com", ("/", "Prefix", "a"))]),
        ),
        previous=first,
    )
    assert [i.name for i in later.ingresses] == ["old", "new"], "old was made first"
    assert later.created["Ingress/default/old"] == first.created["Ingress/default/old"]
    assert later.created["Ingress/default/new"][0] > later.created["Ingress/default/old"][0]
    assert "location / { proxy_pass http://default-a-80; }" in server(nginx.render(later, "nginx", "/run/x"), "x.com"), "the older wins the clash"


def test_l7_expect_lines_parse_and_are_checked_against_the_lab():
    from labctl.model.expect import parse_http_expectation

    assert parse_http_expectation("ext/client -> ingress https://shop.example/cart 200") == {
        "src": "ext/client",
        "dst": "ingress",
        "method": "GET",
        "https": True,
        "host": "shop.example",
        "port": 443,
        "path": "/cart",
        "status": 200,
    }
    assert parse_http_expectation("a -> ingress POST http://x.example:8080 404")["port"] == 8080
    assert parse_http_expectation("a -> b:80 allowed") is None
    lab(*backends("a"), expect=["default/a -> ingress http://x.example/ 404"], externals=[{"name": "client"}])
    msg = one(dump(lab_doc(**LB, ingress={}, expect=["a -> ingress http://x.example/"]), *backends("a")))
    assert "spec.expect[0]" in msg and "http(s)://HOST[:PORT]/PATH STATUS" in msg


def test_a_path_that_is_no_regex_is_refused_when_use_regex_makes_it_one():
    doc = ingress("r", [rule("a.com", ("/a(", "ImplementationSpecific", "a"))])
    doc["metadata"]["annotations"] = {"nginx.ingress.kubernetes.io/use-regex": "true"}
    msg = one(dump(lab_doc(**LB, ingress={}), doc))
    assert "spec.rules[0].http.paths[0].path: is not a regular expression, as use-regex / rewrite-target make it" in msg
    del doc["metadata"]["annotations"]
    load(dump(lab_doc(**LB, ingress={}), *backends("a"), doc))  # without the annotation it is a plain path


def test_route_decides_as_nginx_does_on_the_rendered_locations():
    """What `explain --http` says nginx picks: the ingress conformance suite's paths and hosts."""
    names = ("foo-exact", "foo-prefix", "aaa-slash-bbb-prefix", "aaa-prefix", "foo-slash-exact", "wild", "catch")
    topo = lab(
        *backends(*names),
        ingress(
            "p",
            [
                rule("mixed", ("/foo", "Prefix", "foo-prefix"), ("/foo", "Exact", "foo-exact")),
                rule("prefix", ("/aaa/bbb", "Prefix", "aaa-slash-bbb-prefix"), ("/aaa", "Prefix", "aaa-prefix")),
                rule("trailing", ("/foo/", "Exact", "foo-slash-exact")),
                rule("*.foo.com", ("/", "Prefix", "wild")),
                rule("gone", ("/", "Prefix", "no-such-service")),
            ],
        ),
        ingress("d", default="catch"),
    )

    def where(host, path):
        r = nginx.route(topo, "nginx", host, path)
        return r["status"] or r["backend"].split("-> ")[1].split(":")[0]

    assert where("mixed", "/foo") == "foo-exact" and where("mixed", "/foo/x") == "foo-prefix"
    assert where("prefix", "/aaa/bbb/c") == "aaa-slash-bbb-prefix" and where("prefix", "/aaa/bbbc") == "aaa-prefix"
    assert where("prefix", "/other") == "catch", "not matched: the defaultBackend of an Ingress without rules"
    assert where("trailing", "/foo/") == "foo-slash-exact" and where("trailing", "/foo") == 404
    assert where("a.foo.com", "/") == "wild" and where("a.b.foo.com", "/") == "catch", "one label, else the default backend"
    assert where("gone", "/") == 503
    r = nginx.route(topo, "nginx", "MIXED:8080", "/foo?x=1")
    ip = next(p.ip for p in topo.pods if p.key == "default/foo-exact")
    assert r["server"] == "mixed" and r["ingress"] == "default/p" and r["endpoints"] == [f"{ip}:80"], "the port and the query are ignored"
