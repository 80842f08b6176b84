"""Ingress on real nginx in the controller pods: the ingress conformance suite's
scenarios (path_rules, host_rules, default_backend, ingress_class), both hops
seen from the client and from the backend, reloads on every change, and a clean
`down`. Requests are real HTTP/1.1 from an external host to the controller
Service's LoadBalancer IP."""

from __future__ import annotations

import json
import subprocess

import pytest

from labctl.probe import http
from tests.helpers import pod, svc
from tests.l7 import ingress, running
from tests.l7 import ingress_rule as rule

pytestmark = pytest.mark.kernel

BACKENDS = ("foo-exact", "foo-prefix", "aaa-slash-bbb-prefix", "aaa-prefix", "aaa-slash-bbb-slash-prefix", "foo-slash-exact", "wildcard-foo-com", "foo-bar-com")


def backends(names=BACKENDS, node="node2"):
    docs = []
    for n in names:
        docs.append(pod(n, labels={"app": n}, ports=(8080,), node=node))
        docs.append(svc(n, {"app": n}, ports=((8080, 8080),)))
    return docs


def path_and_host_rules():
    p = lambda path, kind, s: (path, kind, s)  # noqa: E731
    return ingress(
        "conformance",
        [
            rule("exact-path-rules", p("/foo", "Exact", "foo-exact")),
            rule("prefix-path-rules", p("/foo", "Prefix", "foo-prefix"), p("/aaa/bbb", "Prefix", "aaa-slash-bbb-prefix"), p("/aaa", "Prefix", "aaa-prefix")),
            rule("mixed-path-rules", p("/foo", "Prefix", "foo-prefix"), p("/foo", "Exact", "foo-exact")),
            rule("trailing-slash-path-rules", p("/aaa/bbb/", "Prefix", "aaa-slash-bbb-slash-prefix"), p("/foo/", "Exact", "foo-slash-exact")),
            rule("*.foo.com", p("/", "Prefix", "wildcard-foo-com")),
            rule("foo.bar.com", p("/", "Prefix", "foo-bar-com")),
        ],
    )


def for_8080(doc):
    for r in doc["spec"].get("rules", []):
        for path in r["http"]["paths"]:
            path["backend"]["service"]["port"]["number"] = 8080
    if "defaultBackend" in doc["spec"]:
        doc["spec"]["defaultBackend"]["service"]["port"]["number"] = 8080
    return doc


def up(lab, *docs, **spec):
    spec.setdefault("ingress", {})
    spec.setdefault("externals", [{"name": "client"}])
    spec.setdefault("loadBalancerPool", "10.10.20.200-10.10.20.210")
    return lab.up(lab.doc(**spec), *docs)


def get(lab, host, path="/", method="GET", headers=()):
    address = lab.topo.service("ingress-nginx/ingress-nginx-controller").load_balancer_ip
    return http.probe(f"{lab.name}-client", address, 80, path, host, method, list(headers), 3.0)


def test_path_and_host_rules_as_the_conformance_suite_expects(lab):
    up(lab, *backends(), for_8080(path_and_host_rules()))
    cases = [
        ("exact-path-rules", "/foo", "foo-exact"),  # P1
        ("exact-path-rules", "/foo/", 404),  # P2
        ("exact-path-rules", "/FOO", 404),  # P3
        ("exact-path-rules", "/bar", 404),  # P4
        ("prefix-path-rules", "/foo", "foo-prefix"),  # P5
        ("prefix-path-rules", "/foo/", "foo-prefix"),  # P6
        ("prefix-path-rules", "/FOO", 404),  # P7
        ("prefix-path-rules", "/aaa/bbb", "aaa-slash-bbb-prefix"),  # P8
        ("prefix-path-rules", "/aaa/bbb/ccc", "aaa-slash-bbb-prefix"),  # P9
        ("prefix-path-rules", "/aaa/ccc", "aaa-prefix"),  # P10
        ("prefix-path-rules", "/aaaccc", 404),  # P11
        ("mixed-path-rules", "/foo", "foo-exact"),  # P12
        ("trailing-slash-path-rules", "/aaa/bbb", "aaa-slash-bbb-slash-prefix"),  # P13
        ("trailing-slash-path-rules", "/aaa/bbb/", "aaa-slash-bbb-slash-prefix"),  # P14
        ("trailing-slash-path-rules", "/foo", 404),  # P15: no 301 to /foo/
        ("foo.bar.com", "/", "foo-bar-com"),  # H2: served over HTTP, no redirect
        ("subdomain.bar.com", "/", 404),  # H3
        ("bar.foo.com", "/", "wildcard-foo-com"),  # H4
        ("baz.bar.foo.com", "/", 404),  # H5: a wildcard covers one label
        ("foo.com", "/", 404),  # H6
        ("FOO.BAR.COM:8080", "/", "foo-bar-com"),  # the Host header's case and port do not matter
    ]
    wrong = []
    for host, path, want in cases:
        got = get(lab, host, path)
        seen = got.served_by.split("/")[1] if got.served_by else got.status
        if seen != want:
            wrong.append(f"{host}{path}: {seen} (want {want})")
    assert not wrong, wrong
    h4 = get(lab, "bar.foo.com")
    assert h4.backend_saw["host"] == "bar.foo.com" and h4.backend_saw["proto"] == "HTTP/1.1"


def test_default_backend_takes_every_method_host_and_path(lab):
    up(lab, *backends(["echo-service"]), for_8080(ingress("default", default="echo-service")))
    for method, host, path in [
        ("GET", "my-host", "/"),
        ("GET", "my-host", "/sub-path"),
        ("POST", "some-host", "/"),
        ("PUT", "", "/resource"),
        ("DELETE", "some-host", "/resource"),
        ("PATCH", "my-host", "/resource"),
    ]:
        got = get(lab, host or lab.topo.service("ingress-nginx/ingress-nginx-controller").load_balancer_ip, path, method)
        assert (got.status, got.served_by) == (200, "default/echo-service"), (method, host, path, got)
        assert (got.backend_saw["method"], got.backend_saw["path"], got.backend_saw["proto"]) == (method, path, "HTTP/1.1")
        assert {"date", "server", "content-type", "content-length"} <= set(got.response_headers)


def test_both_hops_client_to_controller_then_controller_to_pod(lab):
    """externalTrafficPolicy Local keeps the client's address for X-Forwarded-For; the
    backend's connection comes from the controller pod (a new connection, L7)."""
    up(lab, *backends(["web"]), for_8080(ingress("web", [rule("web.example", ("/", "Prefix", "web"))])))
    got = get(lab, "web.example", "/x?y=1", headers=[("X-Custom", "1")])
    client = lab.topo.lab.externals[0].ip
    controller = lab.topo.pod("ingress-nginx/ingress-nginx-controller-0").ip
    assert got.status == 200 and got.client_ip_seen == controller, "hop 2: a new connection from the controller pod"
    saw = got.backend_saw["headers"]
    assert saw["x-forwarded-for"] == [client] and saw["x-real-ip"] == [client], "hop 1 kept the client's address"
    assert saw["x-custom"] == ["1"] and got.backend_saw["path"] == "/x?y=1" and saw["x-forwarded-host"] == ["web.example"]
    conf = lab.sh(lab.pod_ns("ingress-nginx/ingress-nginx-controller-0"), "cat", "/etc/nginx/nginx.conf")
    assert "# default/web: Prefix / -> default/web -> web:8080" in conf, "labctl exec ... cat /etc/nginx/nginx.conf shows where each block came from"


def test_changes_reload_nginx_and_endpoints_follow_readiness(lab):
    docs = [*backends(["a", "b"]), for_8080(ingress("one", [rule("x.example", ("/a", "Prefix", "a"))]))]
    up(lab, *docs)
    assert get(lab, "x.example", "/b").status == 404
    result = lab.cli("apply", "--lab", lab.name, "-f", "-", input=json.dumps(for_8080(ingress("two", [rule("x.example", ("/b", "Prefix", "b"))]))))
    assert result.returncode == 0
    assert get(lab, "x.example", "/b").served_by == "default/b", "apply returns once nginx serves the new configuration"
    lab.cli("ready", "--lab", lab.name, "b", "false")
    assert get(lab, "x.example", "/b").status == 503, "no ready endpoint: 503"
    lab.cli("delete", "--lab", lab.name, "-f", "-", input=json.dumps(for_8080(ingress("two", [rule("x.example", ("/b", "Prefix", "b"))]))))
    assert get(lab, "x.example", "/b").status == 404


def test_an_ingress_of_another_class_gets_no_address_and_no_route(lab):
    other = {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "other"}, "spec": {"controller": "example.com/other"}}
    invalid = for_8080(ingress("invalid", [rule("c.example", ("/", "Prefix", "a"))], ingressClassName="some-invalid-class-name"))
    theirs = for_8080(ingress("theirs", [rule("d.example", ("/", "Prefix", "a"))], ingressClassName="other"))
    up(lab, *backends(["a"]), other, invalid, theirs, for_8080(ingress("mine", [rule("e.example", ("/", "Prefix", "a"))])))
    st = json.loads(lab.cli("status", "--lab", lab.name, "--json").stdout)
    addresses = {i["name"]: i["address"] for i in st["ingresses"]}
    lb = lab.topo.service("ingress-nginx/ingress-nginx-controller").load_balancer_ip
    assert addresses == {"invalid": None, "theirs": None, "mine": lb}
    assert {(c["name"], c["default"]) for c in st["ingressClasses"]} == {("nginx", True), ("other", False)}
    assert {i["name"]: (i["hosts"], i["tls"]) for i in st["ingresses"]}["mine"] == ("e.example", False)
    table = [line.split() for line in lab.cli("status", "--lab", lab.name).stdout.splitlines() if line.startswith("default ") and "example" in line]
    assert ["default", "mine", "nginx", "e.example", lb, "80"] in table, table
    assert get(lab, "c.example").status == 404 and get(lab, "d.example").status == 404 and get(lab, "e.example").served_by == "default/a"


def test_down_stops_nginx_and_leaves_no_host_nginx(lab):
    up(lab, *backends(["a"]))
    pids = [
        int(x)
        for x in subprocess.run(["ip", "netns", "pids", lab.pod_ns("ingress-nginx/ingress-nginx-controller-0")], capture_output=True, text=True).stdout.split()
    ]
    [master] = [p for p in pids if "nginx: master process" in open(f"/proc/{p}/cmdline").read()]
    workers = [int(x) for x in open(f"/proc/{master}/task/{master}/children").read().split()]
    assert workers and master in lab.owned_pids(), "nginx's master is the controller pod's recorded process"
    lab.down()
    assert not [p for p in [master, *workers] if running(p)], "down stopped nginx's master and workers"
    root = subprocess.run(["ss", "-Hltn", "sport = :80"], capture_output=True, text=True).stdout
    assert not root.strip(), "nothing listens on the host's port 80"


def test_the_seeds_annotations_rewrite_target_use_regex_and_limit_rps(lab):
    rw = for_8080(ingress("rewrite", [rule("rewrite.bar.com", ("/something(/|$)(.*)", "ImplementationSpecific", "a"))]))
    rw["metadata"]["annotations"] = {"nginx.ingress.kubernetes.io/use-regex": "true", "nginx.ingress.kubernetes.io/rewrite-target": "/$2"}
    root = for_8080(ingress("minimal", [rule("example.com", ("/app1", "Prefix", "a"))]))
    root["metadata"]["annotations"] = {"nginx.ingress.kubernetes.io/rewrite-target": "/", "nginx.ingress.kubernetes.io/limit-rps": "1"}
    up(lab, *backends(["a"]), rw, root)
    assert get(lab, "rewrite.bar.com", "/something/new").backend_saw["path"] == "/new", "capture group $2"
    assert get(lab, "rewrite.bar.com", "/something").backend_saw["path"] == "/"
    got = get(lab, "example.com", "/APP1/x?q=1")
    assert got.status == 200 and got.backend_saw["path"] == "/?q=1", "regex mode is case-insensitive; rewrite-target / replaces the whole path"
    statuses = [get(lab, "example.com", "/app1").status for _ in range(12)]
    # the request above and the next five fit rate 1 with burst 5 (ingress-nginx's 5x); then 503, at once
    assert statuses[:5] == [200] * 5 and statuses[6:] == [503] * 6, f"limit-rps 1, burst 5: {statuses}"


def test_tls_from_a_secret_from_the_lab_ca_and_the_fake_certificate(lab, tmp_path):
    """HTTPS with SNI: a Secret's certificate (made here from the lab's CA), one issued by
    the cert-manager annotation, the fake certificate for an unknown name (verification
    fails, as with ingress-nginx), and ssl-redirect's 308."""
    import base64

    from labctl import pki

    up(lab, *backends(["a"]))  # the lab exists: its CA can issue the Secret's certificate
    pair = pki.issue(lab.handle.dir.path / "ca", lab.name, ["secret.example"])
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "secret-tls"},
        "data": {"tls.crt": base64.b64encode(pair.cert.read_bytes()).decode(), "tls.key": base64.b64encode(pair.key.read_bytes()).decode()},
    }
    given = for_8080(ingress("given", [rule("secret.example", ("/", "Prefix", "a"))], tls=[{"hosts": ["secret.example"], "secretName": "secret-tls"}]))
    given["metadata"]["annotations"] = {"nginx.ingress.kubernetes.io/ssl-redirect": "true"}
    issued = for_8080(ingress("issued", [rule("issued.example", ("/", "Prefix", "a"))], tls=[{"hosts": ["issued.example"], "secretName": "issued-tls"}]))
    issued["metadata"]["annotations"] = {"cert-manager.io/cluster-issuer": "labctl-ca"}
    up(lab, *backends(["a"]), secret, given, issued)
    address = lab.topo.service("ingress-nginx/ingress-nginx-controller").load_balancer_ip
    ca = str(pki.ca(lab.handle.dir.path / "ca", lab.name).cert)

    def https(host, sni=None):
        return http.probe(f"{lab.name}-client", address, 443, "/", host, "GET", [], 3.0, http.TlsOptions(sni=sni or host, cafile=ca))

    for host in ("secret.example", "issued.example"):
        got = https(host)
        assert got.status == 200 and got.tls["verified"] and host in got.tls["san"], (host, got.tls)
        assert got.backend_saw["headers"]["x-forwarded-proto"] == ["https"]
    unknown = https("secret.example", sni="nobody.example")
    assert unknown.tls["verified"] is False and "Fake Certificate" in unknown.tls["subject"], unknown.tls
    assert unknown.status == 200, "the request is made anyway (curl -k), routed by its Host header"
    plain = get(lab, "secret.example", "/x?y=1")
    assert (plain.status, plain.location) == (308, "https://secret.example/x?y=1"), "ssl-redirect: 308 to HTTPS"
    assert get(lab, "issued.example").status == 200, "no ssl-redirect asked: HTTP is served (no implicit redirect)"
    out = lab.cli("ca", "--lab", lab.name, "--json").stdout
    assert json.loads(out)["path"] == ca


def test_network_policy_applies_to_the_second_hop(lab):
    """The backend's connection comes from the controller pod: a default-deny ingress
    policy in the backend's namespace refuses it (nginx answers 502, the connection being
    rejected) until the ingress-nginx namespace is allowed."""
    from tests.helpers import namespace, np

    app = [namespace("app"), pod("web", namespace="app", labels={"app": "web"}, ports=(8080,), node="node2")]
    app.append(svc("web", {"app": "web"}, namespace="app", ports=((8080, 8080),)))
    route = for_8080(ingress("web", [rule("web.example", ("/", "Prefix", "web"))], namespace="app"))
    deny = np("deny", ns="app")
    up(lab, *app, route, deny)
    assert get(lab, "web.example").status == 502
    # explain says why, hop by hop: the client reaches the controller, the controller is refused
    why = json.loads(lab.cli("explain", "--lab", lab.name, "ext/client", "ingress", "--http", "/x", "--host", "web.example", "--json").stdout)
    assert why["service"]["endpoints"][0]["allowed"] and not why["allowed"]
    assert why["http"]["route"]["ingress"] == "app/web" and why["http"]["route"]["endpoints"] == [f"{lab.pod_ip('app/web')}:8080"]
    [hop2] = why["http"]["hops"]
    assert hop2["proxy"] == "ingress-nginx/ingress-nginx-controller-0"
    assert [(v["endpoint"], v["allowed"]) for v in hop2["endpoints"]] == [("app/web", False)]
    assert "app/deny" in hop2["endpoints"][0]["explanation"][1]
    allow = np("from-ingress", ns="app", ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]}])
    up(lab, *app, route, deny, allow)
    assert get(lab, "web.example").served_by == "app/web"
    why = json.loads(lab.cli("explain", "--lab", lab.name, "ext/client", "ingress", "--http", "/x", "--host", "web.example", "--json").stdout)
    assert why["allowed"] and why["http"]["hops"][0]["endpoints"][0]["allowed"]
    assert "app/from-ingress" in why["http"]["hops"][0]["endpoints"][0]["explanation"][1]
    text = lab.cli("explain", "--lab", lab.name, "ext/client", "ingress", "--http", "/nothing", "--host", "other.example").stdout
    assert "answers 404" in text and "hop 1" in text


def test_affinity_cookie_sends_a_client_back_to_the_same_pod(lab):
    web = [pod(f"w{i}", labels={"app": "web"}, ports=(8080,), node=f"node{i % 2 + 1}") for i in range(3)]
    sticky = for_8080(ingress("sticky", [rule("s.example", ("/", "Prefix", "web"))]))
    sticky["metadata"]["annotations"] = {"nginx.ingress.kubernetes.io/affinity": "cookie", "nginx.ingress.kubernetes.io/session-cookie-name": "route"}
    up(lab, *web, svc("web", {"app": "web"}, ports=((8080, 8080),)), sticky)
    first = get(lab, "s.example")
    [cookie] = first.response_headers["set-cookie"]
    name, _, value = cookie.split(";")[0].partition("=")
    assert name == "route" and value == f"{lab.topo.pod(first.served_by).ip}:8080"
    again = {get(lab, "s.example", headers=[("Cookie", f"route={value}")]).served_by for _ in range(6)}
    assert again == {first.served_by}, "the cookie's endpoint, every time"
    assert len({get(lab, "s.example").served_by for _ in range(9)}) > 1, "without it: round robin"


def test_a_run_killed_between_the_new_config_and_the_reload_is_completed_by_the_next(lab):
    import os

    from tests.helpers import labctl_cmd

    docs = [*backends(["a"]), for_8080(ingress("one", [rule("k.example", ("/", "Prefix", "a"))]))]
    up(lab, *docs)
    more = for_8080(ingress("two", [rule("k2.example", ("/", "Prefix", "a"))]))
    env = dict(os.environ, LABCTL_FAILPOINT="ingress-config:0")
    killed = subprocess.run([*labctl_cmd(), "apply", "--lab", lab.name, "-f", "-"], input=json.dumps(more), env=env, capture_output=True, text=True)
    assert killed.returncode == -9
    assert get(lab, "k2.example").status == 404, "the file is new, nginx still serves the old text"
    lab.cli("apply", "--lab", lab.name, "-f", "-", input=json.dumps(more))
    assert get(lab, "k2.example").served_by == "default/a", "the next command sees nginx serve another text than the file's, and reloads"


def test_verify_checks_l7_expect_lines(lab):
    docs = [*backends(["a"]), for_8080(ingress("k", [rule("k.example", ("/", "Prefix", "a"))]))]
    lines = ["ext/client -> ingress http://k.example/x 200", "ext/client -> ingress POST http://none.example/ 404"]
    up(lab, *docs, expect=lines)
    out = json.loads(lab.cli("verify", "--lab", lab.name, "--json").stdout)
    assert out["mismatches"] == [] and out["checked"] >= 2
    up(lab, *docs, expect=[*lines, "ext/client -> ingress http://k.example/ 503"])
    bad = lab.cli("verify", "--lab", lab.name, "--json", check=False)
    assert bad.returncode == 1
    [m] = json.loads(bad.stdout)["mismatches"]
    assert (m["proto"], m["expected"], m["observed"]) == ("http", "503", "200") and "served by default/a" in m["detail"]


def test_removing_spec_ingress_stops_the_controller(lab):
    docs = [*backends(["a"]), for_8080(ingress("k", [rule("k.example", ("/", "Prefix", "a"))]))]
    up(lab, *docs)
    ns = lab.pod_ns("ingress-nginx/ingress-nginx-controller-0")
    [master] = [
        int(p)
        for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        if "master" in open(f"/proc/{p}/cmdline").read()
    ]
    lab.up(lab.doc(externals=[{"name": "client"}], loadBalancerPool="10.10.20.200-10.10.20.210"), *docs)
    assert not running(master) and ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    st = json.loads(lab.cli("status", "--lab", lab.name, "--json").stdout)
    [k] = st["ingresses"]
    assert (k["name"], k["class"], k["address"], k["hosts"]) == ("k", None, None, "k.example") and k["creationTimestamp"].endswith("Z")
    assert st["ingressClasses"] == [] and st["ingress"] is None
