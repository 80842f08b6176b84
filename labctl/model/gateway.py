"""Gateway API (gateway.networking.k8s.io): GatewayClass, Gateway, HTTPRoute and
ReferenceGrant, as the CRDs validate them and as a conformant controller of the
Core HTTP profile attaches routes and writes status. Pure.

The Lab's `gatewayAPI: true` adds the GatewayClass `nginx` (controllerName
gateway.nginx.org/nginx-gateway-controller). Each Gateway of a class of ours
gets, as NGINX Gateway Fabric provisions them, its own nginx pod(s)
`<ns>/<gateway>-nginx-<i>` and LoadBalancer Service `<ns>/<gateway>-nginx`
(labctl.model.system); labctl.addons.gateway renders and serves them.

`World.of(topo)` reads the objects from the lab's documents (oldest first, by
creationTimestamp) and decides, as the specification says:
- per listener: Accepted (UnsupportedProtocol), ResolvedRefs
  (InvalidCertificateRef, RefNotPermitted, InvalidRouteKinds), Conflicted
  (ProtocolConflict), Programmed, supportedKinds, attachedRoutes;
- per Gateway: Accepted (ListenersNotValid, InvalidParameters), Programmed;
- per HTTPRoute and parentRef: Accepted (NoMatchingParent,
  NotAllowedByListeners, NoMatchingListenerHostname) and ResolvedRefs
  (BackendNotFound, InvalidKind, RefNotPermitted);
- which listeners each route is attached to, with the hostnames it serves there
  (route and listener hostnames intersected, a `*.` label a suffix match).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from labctl.model import fields as v
from labctl.model.errors import Problem

GROUP = "gateway.networking.k8s.io"
API_VERSIONS = (f"{GROUP}/v1", f"{GROUP}/v1beta1")
CONTROLLER_NAME = "gateway.nginx.org/nginx-gateway-controller"
CLASS = "nginx"
KINDS = ("GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant")
PROTOCOLS = ("HTTP", "HTTPS")  # the Core HTTP profile; TLS, TCP, UDP: UnsupportedProtocol
FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "RequestMirror")
GATEWAY_LABEL = "gateway.networking.k8s.io/gateway-name"
CERT_MANAGER_ANNOTATION = "cert-manager.io/cluster-issuer"
LAB_ISSUER = "labctl-ca"  # labctl.pki.ISSUER: the ClusterIssuer that is the lab's CA


def proxy_name(gateway: str) -> str:
    """NGINX Gateway Fabric's name for a Gateway's nginx Deployment and Service."""
    return f"{gateway}-nginx"


# -- the objects -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A parentRef, backendRef or certificateRef, defaults applied."""

    group: str
    kind: str
    namespace: str
    name: str
    section_name: str | None = None
    port: int | None = None
    weight: int = 1

    def text(self) -> str:
        kind = self.kind if not self.group else f"{self.kind}.{self.group}"
        return f"{kind} {self.namespace}/{self.name}" + (f":{self.port}" if self.port else "") + (f"/{self.section_name}" if self.section_name else "")


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    protocol: str
    hostname: str | None
    certificates: tuple[Ref, ...] = ()
    allowed_from: str = "Same"  # Same | All | Selector | None
    selector: Any = field(default=None, hash=False)  # allowedRoutes.namespaces.selector
    kinds: tuple[tuple[str, str], ...] | None = None  # allowedRoutes.kinds (group, kind); None: from the protocol


@dataclass(frozen=True)
class Gateway:
    namespace: str
    name: str
    class_name: str
    listeners: tuple[Listener, ...]
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    parameters: Any = field(default=None, hash=False)  # spec.infrastructure.parametersRef
    order: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Match:
    path_type: str = "PathPrefix"  # Exact | PathPrefix | RegularExpression
    path: str = "/"
    headers: tuple[tuple[str, str, str], ...] = ()  # (type, lower-case name, value); the first of a name counts
    query: tuple[tuple[str, str, str], ...] = ()  # (type, name, value)
    method: str | None = None


@dataclass(frozen=True)
class Filter:
    type: str
    spec: Any = field(hash=False)  # the filter's own object (requestHeaderModifier: {...})


@dataclass(frozen=True)
class RouteRule:
    index: int
    matches: tuple[Match, ...]
    filters: tuple[Filter, ...]
    backends: tuple[Ref, ...]
    name: str | None = None


@dataclass(frozen=True)
class HTTPRoute:
    namespace: str
    name: str
    parents: tuple[Ref, ...]
    hostnames: tuple[str, ...]
    rules: tuple[RouteRule, ...]
    order: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ReferenceGrant:
    namespace: str
    name: str
    sources: tuple[tuple[str, str, str], ...]  # from: (group, kind, namespace)
    targets: tuple[tuple[str, str, str | None], ...]  # to: (group, kind, name or None: all)

    def permits(self, group: str, kind: str, namespace: str, to_group: str, to_kind: str, to_name: str) -> bool:
        return (group, kind, namespace) in self.sources and any(g == to_group and k == to_kind and n in (None, to_name) for g, k, n in self.targets)


def _ns(d: dict[str, Any]) -> str:
    return (d.get("metadata") or {}).get("namespace") or "default"


def gateway_from_manifest(order: int, d: dict[str, Any]) -> Gateway:
    spec = d.get("spec") or {}
    ns = _ns(d)
    listeners = []
    for item in spec.get("listeners") or []:
        tls = item.get("tls") or {}
        allowed = item.get("allowedRoutes") or {}
        nss = allowed.get("namespaces") or {}
        kinds = allowed.get("kinds")
        listeners.append(
            Listener(
                name=item["name"],
                port=int(item["port"]),
                protocol=item["protocol"],
                hostname=item.get("hostname") or None,
                certificates=tuple(
                    Ref(c.get("group", ""), c.get("kind", "Secret"), c.get("namespace") or ns, c["name"]) for c in tls.get("certificateRefs") or []
                ),
                allowed_from=nss.get("from", "Same"),
                selector=nss.get("selector"),
                kinds=tuple((k.get("group", GROUP), k["kind"]) for k in kinds) if kinds is not None else None,
            )
        )
    return Gateway(
        namespace=ns,
        name=d["metadata"]["name"],
        class_name=spec.get("gatewayClassName", ""),
        listeners=tuple(listeners),
        annotations=dict(d["metadata"].get("annotations") or {}),
        parameters=(spec.get("infrastructure") or {}).get("parametersRef"),
        order=order,
    )


def _match(m: dict[str, Any]) -> Match:
    path = m.get("path") or {}
    headers, seen = [], set()
    for h in m.get("headers") or []:
        name = h["name"].lower()
        if name not in seen:  # "only the first entry with an equivalent name MUST be considered"
            seen.add(name)
            headers.append((h.get("type", "Exact"), name, h["value"]))
    query, seen = [], set()
    for q in m.get("queryParams") or []:
        if q["name"] not in seen:
            seen.add(q["name"])
            query.append((q.get("type", "Exact"), q["name"], q["value"]))
    return Match(path.get("type", "PathPrefix"), path.get("value", "/"), tuple(headers), tuple(query), m.get("method"))


def route_from_manifest(order: int, d: dict[str, Any]) -> HTTPRoute:
    spec = d.get("spec") or {}
    ns = _ns(d)
    rules = []
    for i, r in enumerate(spec.get("rules") or [{}]):
        filters = []
        for f in r.get("filters") or []:
            t = f.get("type", "")
            key = "urlRewrite" if t == "URLRewrite" else t[:1].lower() + t[1:]
            filters.append(Filter(t, f.get(key) or {}))
        backends = tuple(
            Ref(b.get("group", ""), b.get("kind", "Service"), b.get("namespace") or ns, b["name"], port=b.get("port"), weight=b.get("weight", 1))
            for b in r.get("backendRefs") or []
        )
        rules.append(RouteRule(i, tuple(_match(m) for m in r.get("matches") or [{}]), tuple(filters), backends, r.get("name")))
    parents = tuple(
        Ref(p.get("group", GROUP), p.get("kind", "Gateway"), p.get("namespace") or ns, p["name"], p.get("sectionName"), p.get("port"))
        for p in spec.get("parentRefs") or []
    )
    return HTTPRoute(ns, d["metadata"]["name"], parents, tuple(spec.get("hostnames") or ()), tuple(rules), order)


def mirror_ref(f: Filter, namespace: str) -> Ref:
    b = f.spec.get("backendRef") or {}
    return Ref(b.get("group", ""), b.get("kind", "Service"), b.get("namespace") or namespace, b.get("name", ""), port=b.get("port"))


def grant_from_manifest(d: dict[str, Any]) -> ReferenceGrant:
    spec = d.get("spec") or {}
    return ReferenceGrant(
        _ns(d),
        d["metadata"]["name"],
        tuple((f.get("group", ""), f.get("kind", ""), f.get("namespace", "")) for f in spec.get("from") or []),
        tuple((t.get("group", ""), t.get("kind", ""), t.get("name") or None) for t in spec.get("to") or []),
    )


# -- validation, as the CRDs' schemas and CEL rules ------------------------------------------

HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
SECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


STRINGS = frozenset(
    "name namespace group kind sectionName hostname type value method protocol gatewayClassName controllerName "
    "replaceFullPath replacePrefixMatch scheme mode description".split()
)
INTEGERS = frozenset("port weight statusCode percent".split())


class _Checker:
    """Field-by-field checks with the path of each problem; unknown fields refused."""

    def __init__(self, where: str):
        self.where = where
        self.problems: list[Problem] = []

    def bad(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.where, path, message))

    def obj(self, value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.bad(path, "must be an object")
            return {}
        for k in value:
            where = f"{path}.{k}" if path else k
            if k not in allowed:
                self.bad(where, f"unknown field {k!r}")
            elif k in STRINGS and value[k] is not None and not isinstance(value[k], str):
                self.bad(where, f"{value[k]!r} must be a string")
            elif k in INTEGERS and value[k] is not None and (not isinstance(value[k], int) or isinstance(value[k], bool)):
                self.bad(where, f"{value[k]!r} must be an integer")
        for k in required:
            if value.get(k) in (None, ""):
                self.bad(f"{path}.{k}" if path else k, "is required")
        return value

    def items(self, value: Any, path: str, most: int) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.bad(path, "must be a list")
            return []
        if len(value) > most:
            self.bad(path, f"must have at most {most} items")
        return value

    def text(self, value: Any, path: str, required: bool = False) -> bool:
        """A string field (required: non-empty). True when it is one."""
        if value is None or value == "":
            if required:
                self.bad(path, "is required")
            return False
        if not isinstance(value, str):
            self.bad(path, f"{value!r} must be a string")
            return False
        return True

    def enum(self, value: Any, path: str, options: tuple[str, ...]) -> None:
        if value is not None and value not in options:
            self.bad(path, f"must be one of {', '.join(options)}, not {value!r}")

    def name(self, value: Any, path: str, kind: str = "subdomain") -> None:
        if not isinstance(value, str) or not value:
            self.bad(path, "is required")
            return
        why = (
            v.dns1123_subdomain(value) if kind == "subdomain" else (None if SECTION_NAME.fullmatch(value) and len(value) <= 253 else "must be a DNS-1123 label")
        )
        if why:
            self.bad(path, why)

    def hostname(self, value: Any, path: str) -> None:
        if not isinstance(value, str) or len(value) > 253 or not HOSTNAME.match(value):
            self.bad(path, f"{value!r} must be a lower-case DNS name, optionally with a leading '*.' label (no IP address)")

    def port(self, value: Any, path: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            self.bad(path, f"{value!r} must be a port number 1-65535")


META = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation", "creationTimestamp")


def _meta(c: _Checker, d: dict[str, Any], namespaced: bool) -> None:
    meta = c.obj(d.get("metadata"), "metadata", META, ("name",))
    c.name(meta.get("name"), "metadata.name")
    if not namespaced and meta.get("namespace"):
        c.bad("metadata.namespace", "a GatewayClass is cluster-scoped: no namespace")


def _parent_ref(c: _Checker, p: Any, path: str) -> None:
    p = c.obj(p, path, ("group", "kind", "namespace", "name", "sectionName", "port"), ("name",))
    if p.get("sectionName") is not None:
        c.name(p["sectionName"], f"{path}.sectionName", "label")
    if p.get("port") is not None:
        c.port(p["port"], f"{path}.port")


def _backend_ref(c: _Checker, b: Any, path: str) -> None:
    b = c.obj(b, path, ("group", "kind", "namespace", "name", "port", "weight", "filters"), ("name",))
    if b.get("group", "") == "" and b.get("kind", "Service") == "Service" and b.get("port") is None:
        c.bad(f"{path}.port", "Must have port for Service reference")
    if b.get("port") is not None:
        c.port(b["port"], f"{path}.port")
    w = b.get("weight", 1)
    if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 1000000:
        c.bad(f"{path}.weight", f"{w!r} must be an integer 0-1000000")
    if b.get("filters"):
        c.bad(f"{path}.filters", "backendRef filters are not supported by labctl (Extended): put the filter on the rule")


def _path_value(c: _Checker, value: Any, path: str) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        c.bad(path, "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']")
        return
    for part in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if part in value:
            c.bad(path, f"must not contain {part!r} when type one of ['Exact', 'PathPrefix']")
    for end in ("/..", "/."):
        if value.endswith(end):
            c.bad(path, f"must not end with {end!r} when type one of ['Exact', 'PathPrefix']")
    if not PATH_CHARS.match(value):
        c.bad(path, "must only contain valid characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$)")


def _modifier(c: _Checker, m: Any, path: str) -> None:
    m = c.obj(m, path, ("set", "add", "remove"))
    for op in ("set", "add"):
        names = set()
        for i, h in enumerate(c.items(m.get(op), f"{path}.{op}", 16)):
            h = c.obj(h, f"{path}.{op}[{i}]", ("name", "value"), ("name",))
            if not isinstance(h.get("value"), str):
                c.bad(f"{path}.{op}[{i}].value", "is required")
            if isinstance(h.get("name"), str):
                if not HEADER_NAME.match(h["name"]):
                    c.bad(f"{path}.{op}[{i}].name", f"{h['name']!r} is not a header name")
                if h["name"].lower() in names:
                    c.bad(f"{path}.{op}", f"header {h['name']!r} is given twice (names are case-insensitive)")
                names.add(h["name"].lower())
    for i, name in enumerate(c.items(m.get("remove"), f"{path}.remove", 16)):
        if not isinstance(name, str) or not HEADER_NAME.match(name):
            c.bad(f"{path}.remove[{i}]", f"{name!r} is not a header name")


def _path_modifier(c: _Checker, m: Any, path: str, rule: dict[str, Any]) -> None:
    m = c.obj(m, path, ("type", "replaceFullPath", "replacePrefixMatch"), ("type",))
    c.enum(m.get("type"), f"{path}.type", ("ReplaceFullPath", "ReplacePrefixMatch"))
    if m.get("type") == "ReplaceFullPath" and not isinstance(m.get("replaceFullPath"), str):
        c.bad(path, "replaceFullPath must be specified when type is set to 'ReplaceFullPath'")
    if m.get("type") == "ReplacePrefixMatch":
        if not isinstance(m.get("replacePrefixMatch"), str):
            c.bad(path, "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'")
        matches = rule.get("matches") or [{}]
        if len(matches) != 1 or ((matches[0] or {}).get("path") or {}).get("type", "PathPrefix") != "PathPrefix":
            c.bad(path, "When using a filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified")
    for k in ("replaceFullPath", "replacePrefixMatch"):
        if isinstance(m.get(k), str) and m[k] and not m[k].startswith("/"):
            c.bad(f"{path}.{k}", "must be an absolute path")


def _filter(c: _Checker, f: Any, path: str, rule: dict[str, Any]) -> None:
    f = c.obj(
        f,
        path,
        ("type", "requestHeaderModifier", "responseHeaderModifier", "requestRedirect", "urlRewrite", "requestMirror", "extensionRef", "cors"),
        ("type",),
    )
    t = f.get("type") if isinstance(f.get("type"), str) else None
    c.enum(f.get("type"), f"{path}.type", (*FILTERS, "ExtensionRef", "CORS"))
    key = (t or "")[:1].lower() + (t or "")[1:]
    if t == "URLRewrite":
        key = "urlRewrite"
    if t in FILTERS and key not in f:
        c.bad(f"{path}.{key}", f"must be specified for {t} filter.type")
    for other in ("requestHeaderModifier", "responseHeaderModifier", "requestRedirect", "urlRewrite", "requestMirror", "extensionRef", "cors"):
        if other in f and other != key:
            c.bad(f"{path}.{other}", f"must be nil if the filter.type is not {other[:1].upper() + other[1:]}")
    if t in ("RequestHeaderModifier", "ResponseHeaderModifier"):
        _modifier(c, f.get(key), f"{path}.{key}")
    if t == "RequestRedirect":
        r = c.obj(f.get(key), f"{path}.{key}", ("scheme", "hostname", "path", "port", "statusCode"))
        c.enum(r.get("scheme"), f"{path}.{key}.scheme", ("http", "https"))
        if r.get("hostname") is not None:
            c.hostname(r["hostname"], f"{path}.{key}.hostname")
        if r.get("port") is not None:
            c.port(r["port"], f"{path}.{key}.port")
        if r.get("statusCode") is not None and r["statusCode"] not in (301, 302, 303, 307, 308):
            c.bad(f"{path}.{key}.statusCode", f"must be one of 301, 302, 303, 307, 308, not {r['statusCode']!r}")
        if r.get("path") is not None:
            _path_modifier(c, r["path"], f"{path}.{key}.path", rule)
    if t == "RequestMirror":
        r = c.obj(f.get(key), f"{path}.{key}", ("backendRef", "percent", "fraction"), ("backendRef",))
        b = c.obj(r.get("backendRef"), f"{path}.{key}.backendRef", ("group", "kind", "namespace", "name", "port"), ("name",))
        if b.get("group", "") == "" and b.get("kind", "Service") == "Service" and b.get("port") is None:
            c.bad(f"{path}.{key}.backendRef.port", "Must have port for Service reference")
        if r.get("percent") is not None and (not isinstance(r["percent"], int) or not 0 <= r["percent"] <= 100):
            c.bad(f"{path}.{key}.percent", f"{r['percent']!r} must be an integer 0-100")
        if r.get("fraction") is not None:
            c.bad(f"{path}.{key}.fraction", "give percent: labctl mirrors a whole percentage")
    if t == "URLRewrite":
        r = c.obj(f.get(key), f"{path}.{key}", ("hostname", "path"))
        if r.get("hostname") is not None:
            c.hostname(r["hostname"], f"{path}.{key}.hostname")
        if r.get("path") is not None:
            _path_modifier(c, r["path"], f"{path}.{key}.path", rule)


def _route_rule(c: _Checker, r: Any, path: str) -> None:
    r = c.obj(r, path, ("name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"))
    for i, m in enumerate(c.items(r.get("matches"), f"{path}.matches", 64)):
        mp = f"{path}.matches[{i}]"
        m = c.obj(m, mp, ("path", "headers", "queryParams", "method"))
        p = c.obj(m.get("path"), f"{mp}.path", ("type", "value"))
        c.enum(p.get("type"), f"{mp}.path.type", ("Exact", "PathPrefix", "RegularExpression"))
        if p.get("type", "PathPrefix") in ("Exact", "PathPrefix"):
            _path_value(c, p.get("value", "/"), f"{mp}.path.value")
        elif not isinstance(p.get("value"), str) or not p["value"]:
            c.bad(f"{mp}.path.value", "is required")
        else:
            try:
                re.compile(p["value"])
            except re.error as e:
                c.bad(f"{mp}.path.value", f"is not a regular expression: {e}")
        for what, most in (("headers", 16), ("queryParams", 16)):
            for j, h in enumerate(c.items(m.get(what), f"{mp}.{what}", most)):
                h = c.obj(h, f"{mp}.{what}[{j}]", ("type", "name", "value"), ("name",))
                c.enum(h.get("type"), f"{mp}.{what}[{j}].type", ("Exact", "RegularExpression"))
                if not isinstance(h.get("value"), str):
                    c.bad(f"{mp}.{what}[{j}].value", "is required")
                if isinstance(h.get("name"), str) and not HEADER_NAME.match(h["name"]):
                    c.bad(f"{mp}.{what}[{j}].name", f"{h['name']!r} is not a valid name")
        c.enum(m.get("method"), f"{mp}.method", METHODS)
    filters = c.items(r.get("filters"), f"{path}.filters", 16)
    for i, f in enumerate(filters):
        _filter(c, f, f"{path}.filters[{i}]", r)
    types = [f.get("type") for f in filters if isinstance(f, dict)]
    for t in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite"):
        if types.count(t) > 1:
            c.bad(f"{path}.filters", f"{t} filter cannot be repeated")
    if "RequestRedirect" in types and "URLRewrite" in types:
        c.bad(f"{path}.filters", "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both")
    backends = c.items(r.get("backendRefs"), f"{path}.backendRefs", 16)
    if "RequestRedirect" in types and backends:
        c.bad(f"{path}", "RequestRedirect filter must not be used together with backendRefs")
    for i, b in enumerate(backends):
        _backend_ref(c, b, f"{path}.backendRefs[{i}]")
    if r.get("timeouts") is not None or r.get("retry") is not None or r.get("sessionPersistence") is not None:
        c.bad(path, "timeouts, retry and sessionPersistence are Extended features labctl does not build")


def check(data: dict[str, Any], w: str) -> list[Problem]:
    """What the Gateway API's CRDs (schema and CEL rules) refuse, with field paths."""
    c = _Checker(w)
    kind = data.get("kind")
    c.obj(data, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    _meta(c, data, kind != "GatewayClass")
    spec = data.get("spec")
    if kind == "GatewayClass":
        s = c.obj(spec, "spec", ("controllerName", "parametersRef", "description"))
        c.text(s.get("controllerName"), "spec.controllerName", required=True)
        cn = s.get("controllerName")
        if isinstance(cn, str) and ("/" not in cn or len(cn) > 253):
            c.bad("spec.controllerName", f"{cn!r} must be a domain-prefixed path (such as 'example.com/bar')")
    elif kind == "Gateway":
        s = c.obj(spec, "spec", ("gatewayClassName", "listeners", "addresses", "infrastructure"))
        if c.text(s.get("gatewayClassName"), "spec.gatewayClassName", required=True):
            c.name(s["gatewayClassName"], "spec.gatewayClassName")
        listeners = c.items(s.get("listeners"), "spec.listeners", 64)
        if not listeners:
            c.bad("spec.listeners", "must have at least 1 item")
        names, combos = set(), set()
        for i, item in enumerate(listeners):
            lp = f"spec.listeners[{i}]"
            item = c.obj(item, lp, ("name", "hostname", "port", "protocol", "tls", "allowedRoutes"), ("name", "port", "protocol"))
            c.name(item.get("name"), f"{lp}.name", "label")
            name = item.get("name") if isinstance(item.get("name"), str) else None
            if name is not None and name in names:
                c.bad("spec.listeners", f"Listener name must be unique within the Gateway: {name!r} is given twice")
            names.add(name)
            c.port(item.get("port"), f"{lp}.port")
            proto = item.get("protocol")
            if proto is not None and not isinstance(proto, str):
                c.bad(f"{lp}.protocol", f"{proto!r} must be a string")
            elif proto is not None and (not re.fullmatch(r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(/[a-zA-Z0-9]+)?", proto)):
                c.bad(f"{lp}.protocol", f"{proto!r} is not a protocol name")
            if item.get("hostname") is not None:
                c.hostname(item["hostname"], f"{lp}.hostname")
                if proto in ("TCP", "UDP"):
                    c.bad(f"{lp}.hostname", "hostname must not be specified for protocols ['TCP', 'UDP']")
            combo = repr((item.get("port"), proto, item.get("hostname") or ""))
            if combo in combos:
                c.bad("spec.listeners", "Combination of port, protocol and hostname must be unique for each listener")
            combos.add(combo)
            if proto in ("HTTPS", "TLS") and not item.get("tls"):
                c.bad(f"{lp}.tls", "tls must be specified for protocols ['HTTPS', 'TLS']")
            if proto in ("HTTP", "TCP", "UDP") and item.get("tls"):
                c.bad(f"{lp}.tls", "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']")
            tls = c.obj(item.get("tls"), f"{lp}.tls", ("mode", "certificateRefs", "options", "frontendValidation"))
            c.enum(tls.get("mode"), f"{lp}.tls.mode", ("Terminate", "Passthrough"))
            if tls.get("mode") == "Passthrough" and proto == "HTTPS":
                c.bad(f"{lp}.tls.mode", "Passthrough is for TLS listeners; HTTPS terminates")
            for j, ref in enumerate(c.items(tls.get("certificateRefs"), f"{lp}.tls.certificateRefs", 64)):
                c.obj(ref, f"{lp}.tls.certificateRefs[{j}]", ("group", "kind", "namespace", "name"), ("name",))
            ar = c.obj(item.get("allowedRoutes"), f"{lp}.allowedRoutes", ("namespaces", "kinds"))
            nss = c.obj(ar.get("namespaces"), f"{lp}.allowedRoutes.namespaces", ("from", "selector"))
            c.enum(nss.get("from"), f"{lp}.allowedRoutes.namespaces.from", ("All", "Same", "Selector", "None"))
            if nss.get("from") == "Selector" and not nss.get("selector"):
                c.bad(f"{lp}.allowedRoutes.namespaces.selector", "is required when from is Selector")
            if nss.get("selector") is not None:
                from labctl.model.policy import selector_problems

                c.problems += selector_problems(nss["selector"], w, f"{lp}.allowedRoutes.namespaces.selector")
            for j, k in enumerate(c.items(ar.get("kinds"), f"{lp}.allowedRoutes.kinds", 8)):
                c.obj(k, f"{lp}.allowedRoutes.kinds[{j}]", ("group", "kind"), ("kind",))
        infra = c.obj(s.get("infrastructure"), "spec.infrastructure", ("labels", "annotations", "parametersRef"))
        if infra.get("parametersRef") is not None:
            c.obj(infra["parametersRef"], "spec.infrastructure.parametersRef", ("group", "kind", "name"), ("kind", "name"))
        if s.get("addresses"):
            c.bad("spec.addresses", "static Gateway addresses are an Extended feature labctl does not build: the Service's LoadBalancer IP is the address")
    elif kind == "HTTPRoute":
        s = c.obj(spec, "spec", ("parentRefs", "hostnames", "rules"))
        for i, p in enumerate(c.items(s.get("parentRefs"), "spec.parentRefs", 32)):
            _parent_ref(c, p, f"spec.parentRefs[{i}]")
        for i, h in enumerate(c.items(s.get("hostnames"), "spec.hostnames", 16)):
            c.hostname(h, f"spec.hostnames[{i}]")
        rules = c.items(s.get("rules"), "spec.rules", 16)
        for i, r in enumerate(rules):
            _route_rule(c, r, f"spec.rules[{i}]")
    elif kind == "ReferenceGrant":
        s = c.obj(spec, "spec", ("from", "to"), ("from", "to"))
        for what in ("from", "to"):
            items = c.items(s.get(what), f"spec.{what}", 16)
            if not items:
                c.bad(f"spec.{what}", "must have at least 1 item")
            for i, x in enumerate(items):
                keys = ("group", "kind", "namespace") if what == "from" else ("group", "kind", "name")
                x = c.obj(x, f"spec.{what}[{i}]", keys, ("kind",) + (("namespace",) if what == "from" else ()))
                if not isinstance(x.get("group"), str):
                    c.bad(f"spec.{what}[{i}].group", 'is required ("" for the core group)')
    return c.problems


# -- the lab's class, and the world as the controller sees it ----------------------------------


@dataclass
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""

    def to_json(self, generation: int = 1) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": "True" if self.status else "False",
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": generation,
        }


def _cond(type_: str, ok: bool, reason_ok: str, reason_bad: str | None = None, message: str = "") -> Condition:
    return Condition(type_, ok, reason_ok if ok else (reason_bad or reason_ok), message)


@dataclass
class ListenerState:
    listener: Listener
    conditions: list[Condition]
    supported_kinds: list[tuple[str, str]]
    attached: list[str] = field(default_factory=list)  # routes (ns/name) accepted on it
    certificates: list[Ref] = field(default_factory=list)  # usable certificateRefs

    @property
    def usable(self) -> bool:
        """Serves traffic: accepted, not conflicted."""
        c = {x.type: x for x in self.conditions}
        return c["Accepted"].status and not c["Conflicted"].status


@dataclass
class GatewayState:
    gateway: Gateway
    ours: bool
    conditions: list[Condition]
    listeners: list[ListenerState]


@dataclass
class Attachment:
    """A route attached to a listener, with the hostnames it serves there (None: any)."""

    route: HTTPRoute
    gateway: str
    listener: Listener
    hostnames: tuple[str, ...] | None


@dataclass
class ParentState:
    ref: Ref
    conditions: list[Condition]


@dataclass
class RouteState:
    route: HTTPRoute
    parents: list[ParentState]
    backends: dict[tuple[int, int], str | None]  # (rule, backendRef index) -> None if resolved, else the reason


def hostname_matches(pattern: str, host: str) -> bool:
    """A listener or route hostname against a concrete host: `*.x` is a suffix match."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def intersect(listener: str | None, route: tuple[str, ...]) -> tuple[str, ...] | None:
    """The hostnames a route serves on a listener; None: any host; () no intersection."""
    if not route:
        return (listener,) if listener else None
    if not listener:
        return route
    out = []
    for h in route:
        if h == listener:
            out.append(h)
        elif not h.startswith("*.") and hostname_matches(listener, h):
            out.append(h)  # the listener's wildcard covers the route's host
        elif h.startswith("*.") and not listener.startswith("*.") and hostname_matches(h, listener):
            out.append(listener)  # the route's wildcard covers the listener's host
        elif h.startswith("*.") and listener.startswith("*."):
            if listener.endswith(h[1:]):
                out.append(listener)
            elif h.endswith(listener[1:]):
                out.append(h)
    return tuple(dict.fromkeys(out))


class World:
    """The Gateway API objects of a lab and what a conformant controller decides about them."""

    def __init__(self, lab: Any, documents, created: dict[str, list], namespaces: dict[str, dict[str, str]], services: set[str]):
        from labctl.model.ingress import created_key, tls_secrets

        order = lambda d, i: created.get(created_key(d), [i])[0]  # noqa: E731
        self.generations = {created_key(d): (v[2] if len(v) > 2 else 1) for d in documents if (v := created.get(created_key(d)))}
        docs = list(documents)
        self.classes: dict[str, str] = {CLASS: CONTROLLER_NAME} if getattr(lab, "gateway_api", False) else {}
        for d in docs:
            if d.get("kind") == "GatewayClass" and getattr(lab, "gateway_api", False):
                self.classes.setdefault(d["metadata"]["name"], (d.get("spec") or {}).get("controllerName", ""))
        self.gateways = sorted((gateway_from_manifest(order(d, i), d) for i, d in enumerate(docs) if d.get("kind") == "Gateway"), key=lambda g: g.order)
        self.routes = sorted((route_from_manifest(order(d, i), d) for i, d in enumerate(docs) if d.get("kind") == "HTTPRoute"), key=lambda r: r.order)
        self.grants = [grant_from_manifest(d) for d in docs if d.get("kind") == "ReferenceGrant"]
        self.secrets = tls_secrets(docs)
        self.namespaces = namespaces
        self.services = services
        self.gateway_states: dict[str, GatewayState] = {}
        self.route_states: dict[str, RouteState] = {}
        self.attachments: list[Attachment] = []
        for gw in self.gateways:
            self.gateway_states[gw.key] = self._gateway(gw)
        for route in self.routes:
            self.route_states[route.key] = self._route(route)

    @staticmethod
    def of(topo: Any) -> "World":
        return World(topo.lab, topo.documents, topo.created, topo.namespaces, {s.key for s in topo.services})

    def ours(self, gw: Gateway) -> bool:
        return self.classes.get(gw.class_name) == CONTROLLER_NAME

    def served(self) -> list[Gateway]:
        """The Gateways this lab's controller provisions (a class of ours)."""
        return [g for g in self.gateways if self.ours(g)]

    def granted(self, from_kind: str, from_ns: str, to_kind: str, to_ns: str, to_name: str) -> bool:
        if from_ns == to_ns:
            return True
        return any(g.namespace == to_ns and g.permits(GROUP, from_kind, from_ns, "", to_kind, to_name) for g in self.grants)

    def _gateway(self, gw: Gateway) -> GatewayState:
        ours = self.ours(gw)
        states = []
        by_port: dict[int, set[str]] = {}
        for li in gw.listeners:
            by_port.setdefault(li.port, set()).add(li.protocol)
        for li in gw.listeners:
            conds = []
            proto_ok = li.protocol in PROTOCOLS
            conds.append(_cond("Accepted", proto_ok, "Accepted", "UnsupportedProtocol", "" if proto_ok else f"protocol {li.protocol} is not supported"))
            conflict = len(by_port[li.port] & set(PROTOCOLS)) > 1 and proto_ok
            conds.append(
                _cond("Conflicted", conflict, "ProtocolConflict", message="HTTP and HTTPS on one port")
                if conflict
                else Condition("Conflicted", False, "NoConflicts")
            )
            default_kinds = [(GROUP, "HTTPRoute")] if proto_ok else []
            kinds = default_kinds if li.kinds is None else [k for k in li.kinds if k == (GROUP, "HTTPRoute")]
            resolved, reason, message = True, "ResolvedRefs", ""
            if li.kinds is not None and len(kinds) != len(li.kinds):
                resolved, reason, message = False, "InvalidRouteKinds", "only HTTPRoute is supported"
            usable = []
            if li.protocol == "HTTPS":
                for ref in li.certificates:
                    if ref.group != "" or ref.kind != "Secret":
                        resolved, reason, message = False, "InvalidCertificateRef", f"{ref.text()}: not a core Secret"
                    elif not self.granted("Gateway", gw.namespace, "Secret", ref.namespace, ref.name):
                        resolved, reason, message = (
                            False,
                            "RefNotPermitted",
                            f"{ref.text()}: no ReferenceGrant in {ref.namespace} lets Gateways of {gw.namespace} use it",
                        )
                    elif not self._usable_secret(ref):
                        resolved, reason, message = (
                            False,
                            "InvalidCertificateRef",
                            f"{ref.text()}: no such Secret of type kubernetes.io/tls with a usable certificate",
                        )
                    else:
                        usable.append(ref)
                if not li.certificates and not self._issued(gw):
                    resolved, reason, message = False, "InvalidCertificateRef", "no certificateRefs"
            conds.append(Condition("ResolvedRefs", resolved, reason, message))
            programmed = proto_ok and not conflict and ours
            conds.append(_cond("Programmed", programmed, "Programmed", "Invalid"))
            states.append(ListenerState(li, conds, kinds, certificates=usable))
        if not ours:
            return GatewayState(gw, False, [], states)
        valid = any(s.usable for s in states)
        if gw.parameters is not None:
            gconds = [
                Condition(
                    "Accepted", False, "InvalidParameters", f"parametersRef {gw.parameters.get('kind')}/{gw.parameters.get('name')} is not a kind labctl knows"
                )
            ]
        else:
            gconds = [_cond("Accepted", valid, "Accepted", "ListenersNotValid", "" if valid else "no listener is valid")]
        gconds.append(_cond("Programmed", gconds[0].status, "Programmed", "Invalid"))
        return GatewayState(gw, True, gconds, states)

    def _issued(self, gw: Gateway) -> bool:
        return gw.annotations.get(CERT_MANAGER_ANNOTATION) == LAB_ISSUER

    def _usable_secret(self, ref: Ref) -> bool:
        """A TLS Secret whose data holds a PEM certificate and key (the proxy checks them whole)."""
        pair = self.secrets.get(f"{ref.namespace}/{ref.name}")
        return pair is not None and b"-----BEGIN CERTIFICATE-----" in pair[0] and b"PRIVATE KEY-----" in pair[1]

    def _allowed(self, li: Listener, gw: Gateway, route_ns: str) -> bool:
        if li.allowed_from == "All":
            return True
        if li.allowed_from == "Same":
            return route_ns == gw.namespace
        if li.allowed_from == "Selector":
            from labctl.model.policy import selector

            return selector(li.selector).matches(self.namespaces.get(route_ns, {"kubernetes.io/metadata.name": route_ns}))
        return False

    def _route(self, route: HTTPRoute) -> RouteState:
        parents = []
        for ref in route.parents:
            if ref.group != GROUP or ref.kind != "Gateway":
                continue
            state = self.gateway_states.get(f"{ref.namespace}/{ref.name}")
            if state is None or not state.ours:
                continue  # no controller of ours is this parent's: no status from us
            gw = state.gateway
            candidates = [
                s
                for s in state.listeners
                if (ref.section_name is None or s.listener.name == ref.section_name) and (ref.port is None or s.listener.port == ref.port)
            ]
            if not candidates:
                parents.append(ParentState(ref, [Condition("Accepted", False, "NoMatchingParent", f"no listener {ref.section_name or ref.port} on {gw.key}")]))
                continue
            allowed = [s for s in candidates if s.usable and (GROUP, "HTTPRoute") in s.supported_kinds and self._allowed(s.listener, gw, route.namespace)]
            if not allowed:
                parents.append(
                    ParentState(ref, [Condition("Accepted", False, "NotAllowedByListeners", f"no listener of {gw.key} allows routes from {route.namespace}")])
                )
                continue
            attached = [(s, hosts) for s in allowed if (hosts := intersect(s.listener.hostname, route.hostnames)) != ()]
            if not attached:
                parents.append(ParentState(ref, [Condition("Accepted", False, "NoMatchingListenerHostname", "no hostname intersects a listener's")]))
                continue
            for s, hosts in attached:
                if route.key not in s.attached:
                    s.attached.append(route.key)
                    self.attachments.append(Attachment(route, gw.key, s.listener, hosts))
            parents.append(ParentState(ref, [Condition("Accepted", True, "Accepted")]))
        backends: dict[tuple[int, int], str | None] = {}
        for rule in route.rules:
            for i, b in enumerate(rule.backends):
                backends[(rule.index, i)] = self._resolve(route, b)
            for j, f in enumerate(rule.filters):
                if f.type == "RequestMirror":
                    b = mirror_ref(f, route.namespace)
                    backends[(rule.index, 1000 + j)] = self._resolve(route, b)
        bad = next((r for r in backends.values() if r), None)
        resolved = Condition("ResolvedRefs", bad is None, "ResolvedRefs" if bad is None else bad)
        for p in parents:
            p.conditions.append(resolved)
        return RouteState(route, parents, backends)

    def _resolve(self, route: HTTPRoute, b: Ref) -> str | None:
        """None when a backendRef resolves, else the ResolvedRefs reason."""
        if b.group != "" or b.kind != "Service":
            return "InvalidKind"
        if not self.granted("HTTPRoute", route.namespace, "Service", b.namespace, b.name):
            return "RefNotPermitted"
        if f"{b.namespace}/{b.name}" not in self.services:
            return "BackendNotFound"
        return None

    # -- status, as the contract's keys ------------------------------------------------------

    def status(self, addresses: dict[str, str | None]) -> dict[str, Any]:
        """`gateways` and `httpRoutes` of `status --json` (`addresses`: Gateway -> its Service's LoadBalancer IP)."""
        gws = []
        for gw in self.gateways:
            st = self.gateway_states[gw.key]
            addr = addresses.get(gw.key)
            gen = self.generations.get(f"Gateway/{gw.key}", 1)
            gws.append(
                {
                    "namespace": gw.namespace,
                    "name": gw.name,
                    "class": gw.class_name,
                    "addresses": [addr] if addr and st.ours else [],
                    "generation": gen,
                    "conditions": [c.to_json(gen) for c in st.conditions],
                    "listeners": [
                        {
                            "name": s.listener.name,
                            "port": s.listener.port,
                            "protocol": s.listener.protocol,
                            "hostname": s.listener.hostname,
                            "attachedRoutes": len(s.attached),
                            "supportedKinds": [{"group": g, "kind": k} for g, k in s.supported_kinds],
                            "conditions": [c.to_json(gen) for c in s.conditions],
                        }
                        for s in (st.listeners if st.ours else [])
                    ],
                }
            )
        routes = []
        for route in self.routes:
            st = self.route_states[route.key]
            gen = self.generations.get(f"HTTPRoute/{route.key}", 1)
            routes.append(
                {
                    "namespace": route.namespace,
                    "name": route.name,
                    "hostnames": list(route.hostnames),
                    "generation": gen,
                    "parents": [
                        {
                            "namespace": p.ref.namespace,
                            "name": p.ref.name,
                            "sectionName": p.ref.section_name,
                            "controllerName": CONTROLLER_NAME,
                            "conditions": [c.to_json(gen) for c in p.conditions],
                        }
                        for p in st.parents
                    ],
                }
            )
        return {"gateways": gws, "httpRoutes": routes}


# -- the lab's part: validation of spec.gatewayAPI and the objects it adds ----------------------


def check_lab(spec: Any, documents, where_of) -> list[Problem]:
    """Gateway API objects need `gatewayAPI: true`; a Gateway of ours needs a LoadBalancer pool."""
    from labctl.model.objects import DEFAULT_NAMESPACES

    out = []
    known = set(DEFAULT_NAMESPACES) | {(d.get("metadata") or {}).get("name") for _, d in documents if d.get("kind") == "Namespace"}
    for i, d in documents:
        ns = (d.get("metadata") or {}).get("namespace") or "default"
        if not isinstance(ns, str):
            continue  # refused by the kind's own checks
        if d.get("kind") in KINDS and d.get("kind") != "GatewayClass" and ns not in known:
            out.append(Problem(where_of(i), "metadata.namespace", f"namespace {ns!r} is not defined: add a Namespace document for it"))
        if d.get("kind") in KINDS and not getattr(spec, "gateway_api", False):
            out.append(Problem(where_of(i), "kind", f"{d['kind']} needs the Gateway API: set gatewayAPI: true in the Lab's spec"))
        elif d.get("kind") == "Gateway" and not spec.load_balancer_pool:
            out.append(Problem(where_of(i), "spec", "a Gateway gets a LoadBalancer Service: the Lab needs spec.loadBalancerPool"))
    return out
