"""The ingress controller's nginx.conf, rendered as ingress-nginx renders it, with
the corrections the Ingress specification needs. Pure.

- One `server` per host over every Ingress of the class, oldest first (for one
  host, path and pathType the older Ingress wins); rules without a host, and
  hosts no rule names, go to the catch-all `default_server`.
- A wildcard host `*.foo.com` covers one label, as the specification says: a
  regex server name `~^[^.]+\\.foo\\.com$` (nginx's own `*.foo.com` covers
  several). Exact names win over it, as in nginx.
- Exact `/p`: `location = /p`. Prefix `/p` (and `/p/`): element-wise, as
  `location /p/` plus `location = /p` (so `/pq` does not match, and no 301 adds a
  trailing slash); `/foo` and `/foo/` may coexist, the longer declared path
  wins. An Exact `/p/` that nobody's `/p` owns gets `location = /p { return 404; }`
  (nginx would answer 301). Exact beats Prefix on the same path.
  ImplementationSpecific is Prefix.
- Not matched: the host's Ingress defaultBackend if one of its Ingresses has
  one, else the defaultBackend of an Ingress with no rules (the oldest), else 404.
- Backends are the Service port's ready endpoints (pod IP:port, round robin),
  as ingress-nginx's default; no endpoint or no such Service: 503.
- Annotations (nginx.ingress.kubernetes.io/): `use-regex` and
  `rewrite-target` turn every path of the host into a case-insensitive regex
  prefix `~* "^path"` (longest first), and rewrite-target adds
  `rewrite "(?i)path" target break;` (capture groups such as `/$2` work); as
  in ingress-nginx, `/app1` then also matches `/APP1x`. `affinity: cookie`
  (`session-cookie-name`, default INGRESSCOOKIE): the first answer sets the
  cookie to the endpoint that served it, and a request carrying it goes back
  there (ingress-nginx does it in Lua, with a hash for the value). `limit-rps`: a
  `limit_req_zone` per Ingress on the client address, burst 5x, 503 beyond.
  `ssl-redirect: "true"` (a host with `tls`) and `force-ssl-redirect`: 308
  to HTTPS; no redirect otherwise (the specification and the conformance
  suite: ingress-nginx would redirect every host with `tls`).
- TLS: every server also listens on 443 with its host's certificate (an
  Ingress's `tls` naming the host: its Secret, or one issued from the lab's
  CA for `cert-manager.io/cluster-issuer: labctl-ca`), else ingress-nginx's
  self-signed fake certificate; SNI picks the server.
- The headers ingress-nginx sends the backend (X-Forwarded-For, X-Real-IP,
  X-Request-ID, X-Forwarded-Host/Port/Proto/Scheme, X-Scheme), HTTP/1.1.
- A status server on 127.0.0.1:10246 (ingress-nginx's status port) answers
  `/configuration/generation` with the generation of the configuration, so
  labctl knows when a reload is served.

Each block is commented with the object it came from.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from labctl.addons.nginxconf import proxy_defaults, sni_certificates
from labctl.model import family
from labctl.model import ingress as I
from labctl.model.objects import Service, Topology
from labctl.proxy.endpoints import PodIndex, endpoints

STATUS_PORT = 10246
GENERATION_PATH = "/configuration/generation"

HEADERS = (
    ("Host", "$http_host"),
    ("X-Request-ID", "$request_id"),
    ("X-Real-IP", "$remote_addr"),
    ("X-Forwarded-For", "$remote_addr"),
    ("X-Forwarded-Host", "$http_host"),
    ("X-Forwarded-Port", "$server_port"),
    ("X-Forwarded-Proto", "$scheme"),
    ("X-Forwarded-Scheme", "$scheme"),
    ("X-Scheme", "$scheme"),
    ("X-Original-Forwarded-For", "$http_x_forwarded_for"),
    ("Proxy", '""'),
)


@dataclass
class Target:
    """Where a location sends requests: an upstream, or a status code."""

    upstream: str | None
    status: int | None
    why: str  # the object and backend, for the comment
    sticky: str | None = None  # affinity: cookie: the cookie's name

    def lines(self) -> list[str]:
        if self.upstream and self.sticky:
            var = sticky_var(self.upstream, self.sticky)
            return [f"proxy_pass http://${var};", f"add_header Set-Cookie ${var}_set always;"]
        if self.upstream:
            return [f"proxy_pass http://{self.upstream};"]
        return [f"return {self.status};"]


def sticky_var(upstream: str, cookie: str) -> str:
    return "sticky_" + re.sub(r"[^A-Za-z0-9_]", "_", f"{upstream}_{cookie}")


KIND_RANK = {"filler": 0, "Prefix": 1, "Exact": 2}  # on one nginx location: Exact beats Prefix beats a filler


@dataclass
class Location:
    match: str  # "= /p", "/p/", "/"
    source: str  # the Ingress and the path it came from
    kind: str  # Exact | Prefix | filler (a 404 where nginx would answer 301)
    declared: int  # the declared path's length: the longer wins among Prefix paths
    ingress: I.Ingress | None = None
    backend: I.Backend | None = None

    def rank(self) -> tuple[int, int]:
        return (KIND_RANK[self.kind], self.declared)


@dataclass
class Server:
    names: list[str]  # nginx server_name values
    host: str | None
    locations: dict[str, Location] = field(default_factory=dict)
    fallback: tuple[I.Ingress, I.Backend] | None = None  # not matched: this default backend, else 404
    source: list[str] = field(default_factory=list)
    paths: list[tuple[I.Ingress, I.Path]] = field(default_factory=list)  # every path as declared, oldest first
    regex: bool = False  # an Ingress of the host has use-regex or rewrite-target: every path is a regex


ANNOTATION = "nginx.ingress.kubernetes.io/"
LIMIT_BURST_MULTIPLIER = 5  # ingress-nginx's limit-burst-multiplier


def annotation(ing: I.Ingress, name: str) -> str | None:
    return ing.annotations.get(ANNOTATION + name)


def rewrite_target(ing: I.Ingress, path: str) -> str | None:
    """ingress-nginx's needsRewrite: a rewrite-target other than the path itself."""
    target = annotation(ing, "rewrite-target")
    return target if target and target != path else None


def regex_mode(ing: I.Ingress, paths: list[I.Path]) -> bool:
    return annotation(ing, "use-regex") == "true" or any(rewrite_target(ing, p.path) for p in paths)


def rate_zone(ing: I.Ingress) -> tuple[str, int] | None:
    """limit-rps: (zone name, requests per second per client address)."""
    value = annotation(ing, "limit-rps")
    if value is None or not value.isdigit() or int(value) < 1:
        return None
    return f"{ing.namespace}_{ing.name}_rps", int(value)


def server_name(host: str) -> str:
    """A precise host as is; `*.foo.com` as a one-label regex."""
    if host.startswith("*."):
        return "~^[^.]+" + re.escape(host[1:]).replace("\\-", "-") + "$"
    return host


def upstream_name(namespace: str, service: str, port: int | str) -> str:
    return f"{namespace}-{service}-{port}"


class Renderer:
    def __init__(self, topo: Topology, class_name: str):
        self.topo = topo
        self.class_name = class_name
        self.index = PodIndex(topo.pods)
        self.services = {s.key: s for s in topo.services}
        self.upstreams: dict[str, tuple[str, list[str]]] = {}  # name -> (comment, servers)
        self.sticky: dict[tuple[str, str], list[str]] = {}  # (upstream, cookie) -> its endpoints

    def ingresses(self) -> list[I.Ingress]:
        classes = list(self.topo.ingress_classes)
        mine = [ing for ing in self.topo.ingresses if (c := I.served_class(ing, classes)) is not None and c.name == self.class_name]
        return sorted(mine, key=lambda i: i.order)

    def target(self, ing: I.Ingress, b: I.Backend) -> Target:
        why = f"{ing.key} -> {b.text()}"
        if b.service is None:
            return Target(None, 503, f"{why}: not a Service")
        svc: Service | None = self.services.get(f"{ing.namespace}/{b.service}")
        if svc is None:
            return Target(None, 503, f"{why}: no such Service")
        port = next((p for p in svc.ports if (p.port == b.port_number if b.port_number is not None else p.name == b.port_name)), None)
        if port is None:
            return Target(None, 503, f"{why}: the Service has no such port")
        eps = endpoints(self.topo, svc, port, self.index)
        if not eps:
            return Target(None, 503, f"{why}: no ready endpoints")
        name = upstream_name(ing.namespace, b.service, b.port_number if b.port_number is not None else b.port_name or "")
        self.upstreams[name] = (f"{ing.namespace}/{b.service} port {port.name or port.port}", [e.addr for e in eps])
        cookie = (annotation(ing, "session-cookie-name") or "INGRESSCOOKIE") if annotation(ing, "affinity") == "cookie" else None
        if cookie and not re.fullmatch(r"[A-Za-z0-9_]+", cookie):
            cookie = None  # nginx's $cookie_ variables take letters, digits and '_' only
        if cookie:
            self.sticky[(name, cookie)] = [e.addr for e in eps]
        return Target(name, None, why, cookie)

    def servers(self) -> tuple[Server, list[Server]]:
        catch_all = Server(["_"], None)
        hosts: dict[str, Server] = {}
        global_default: tuple[I.Ingress, I.Backend] | None = None
        for ing in self.ingresses():  # oldest first: on a tie the older stays
            if ing.default_backend is not None and not ing.rules and global_default is None:
                global_default = (ing, ing.default_backend)
                catch_all.source.append(f"defaultBackend of {ing.key}")
            for rule in ing.rules:
                server = catch_all if rule.host is None else hosts.setdefault(rule.host, Server([server_name(rule.host)], rule.host))
                if ing.key not in server.source:
                    server.source.append(ing.key)
                if ing.default_backend is not None and rule.host is not None and server.fallback is None:
                    server.fallback = (ing, ing.default_backend)
                if regex_mode(ing, list(rule.paths)):
                    server.regex = True
                for p in rule.paths:
                    self._add(server, ing, p)
                    if not any(q.path == p.path and q.path_type == p.path_type for _, q in server.paths):
                        server.paths.append((ing, p))
        for server in [catch_all, *hosts.values()]:
            if server.fallback is None:
                server.fallback = global_default
        return catch_all, list(hosts.values())

    def _add(self, server: Server, ing: I.Ingress, p: I.Path) -> None:
        source = f"{ing.key}: {p.path_type} {p.path}"
        if p.path_type == "Exact":
            self._put(server, Location(f"= {p.path}", source, "Exact", len(p.path), ing, p.backend))
            if p.path.endswith("/") and len(p.path) > 1:  # nginx would answer its path without the slash with 301
                bare = p.path.rstrip("/") or "/"
                self._put(server, Location(f"= {bare}", f"{source}: not its path without the slash", "filler", 0))
            return
        q = p.path.rstrip("/") or "/"  # Prefix (and ImplementationSpecific): element-wise
        for key in ["/"] if q == "/" else [f"{q}/", f"= {q}"]:
            self._put(server, Location(key, source, "Prefix", len(p.path), ing, p.backend))

    @staticmethod
    def _put(server: Server, loc: Location) -> None:
        old = server.locations.get(loc.match)
        if old is None or loc.rank() > old.rank():
            server.locations[loc.match] = loc


def _comment(text: str) -> str:
    return "# " + text.replace("\n", " ")


@dataclass
class Tls:
    """Certificate files: per host (from the Ingresses' `tls`), and the default one
    (ingress-nginx's fake certificate) for every other name."""

    default: tuple[str, str]
    hosts: dict[str, tuple[str, str]] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)  # host -> where its certificate came from


def tls_hosts(ing: I.Ingress) -> list[tuple[str, str | None]]:
    return [(h, secret) for hosts, secret in ing.tls for h in hosts]


def render(topo: Topology, class_name: str, runtime_dir: str, tls: Tls | None = None) -> str:
    """nginx.conf for the controller of `class_name`; `runtime_dir`: its pid file and temp
    files; `tls`: the certificates to serve HTTPS with (None: HTTP only)."""
    six = 6 in family.lab_families(topo.lab)
    r = Renderer(topo, class_name)
    catch_all, hosts = r.servers()
    out: list[str] = [
        f"# nginx.conf of ingress-nginx (IngressClass {class_name}), rendered by labctl from the lab's Ingresses",
        "user root;  # the workers read the certificates at each handshake (ssl_certificate with variables)",
        "worker_processes 1;",
        f"pid {runtime_dir}/nginx.pid;",
        "error_log stderr notice;",
        "events { worker_connections 1024; }",
        "http {",
        "    default_type text/plain;",
        "    access_log /dev/stdout;",
        "    server_tokens on;",
        "    server_names_hash_bucket_size 128;",
        "    map_hash_bucket_size 128;",
    ]
    out += proxy_defaults(runtime_dir, HEADERS)
    body: list[str] = []
    if tls is not None:
        out += sni_certificates("labctl", tls.hosts, tls.default)
    zones = {z for ing in r.ingresses() if (z := rate_zone(ing))}
    for name, rps in sorted(zones):
        out.append(f"    limit_req_zone $binary_remote_addr zone={name}:5m rate={rps}r/s;  # limit-rps")
    if zones:
        out.append("    limit_req_status 503;")

    with_tls = {h for ing in r.ingresses() for h, _ in tls_hosts(ing)}

    def limits(ing: I.Ingress, host: str | None = None) -> list[str]:
        """Per Ingress: limit-rps, and ssl-redirect (a host with tls) / force-ssl-redirect: 308 to HTTPS."""
        out = []
        z = rate_zone(ing)
        if z:
            out.append(f"limit_req zone={z[0]} burst={z[1] * LIMIT_BURST_MULTIPLIER} nodelay;")
        redirect = annotation(ing, "force-ssl-redirect") == "true" or (annotation(ing, "ssl-redirect") == "true" and host in with_tls)
        if redirect:
            out.append("if ($scheme = http) { return 308 https://$host$request_uri; }")
        return out

    def server_block(server: Server, default: bool) -> None:
        body.append("")
        body.append("    " + _comment(", ".join(server.source) if server.source else "no Ingress: every request gets 404"))
        body.append("    server {")
        body.append("        listen 80" + (" default_server;" if default else ";"))
        if six:  # ingress-nginx listens on [::] too where the cluster has IPv6
            body.append("        listen [::]:80" + (" default_server;" if default else ";"))
        if tls is not None:
            body.append("        listen 443 ssl" + (" default_server;" if default else ";"))
            if six:
                body.append("        listen [::]:443 ssl" + (" default_server;" if default else ";"))
            body.append(
                f"        {_comment('certificate: ' + tls.why.get(server.host or '', 'the fake default certificate (no Ingress names this host in tls)'))}"
            )
        body.append(f"        server_name {' '.join(server.names)};")
        if server.regex:
            # ingress-nginx's regex mode: every path of the host a case-insensitive regex
            # prefix `~* "^path"`, longest first (nginx takes the first regex that matches)
            for ing, p in sorted(server.paths, key=lambda x: -len(x[1].path)):
                t = r.target(ing, p.backend)
                body.append(f"        {_comment(f'{ing.key}: {p.path_type} {p.path} (use-regex / rewrite-target) -> {t.why}')}")
                extra = [f'rewrite "(?i){p.path}" {target} break;'] if (target := rewrite_target(ing, p.path)) else []
                body.append(f'        location ~* "^{p.path}" {{ {" ".join(limits(ing, server.host) + extra + t.lines())} }}')
        else:
            for key in sorted(server.locations, key=lambda k: (-len(k.lstrip("= ")), k)):
                loc = server.locations[key]
                t = r.target(loc.ingress, loc.backend) if loc.ingress and loc.backend else Target(None, 404, "no rule")
                body.append(f"        {_comment(loc.source + ' -> ' + t.why)}")
                body.append(f"        location {key} {{ {' '.join((limits(loc.ingress, server.host) if loc.ingress else []) + t.lines())} }}")
        if "/" not in server.locations:
            t = r.target(*server.fallback) if server.fallback else Target(None, 404, "no rule, no default backend")
            body.append(f"        {_comment('not matched: ' + t.why)}")
            body.append(f"        location / {{ {' '.join(t.lines())} }}")
        body.append("    }")

    server_block(catch_all, True)
    for server in sorted(hosts, key=lambda s: s.host or ""):
        server_block(server, False)
    for (name, cookie), servers in sorted(r.sticky.items()):
        # affinity: cookie, without ingress-nginx's Lua balancer: the cookie names the endpoint
        # that answered first ($upstream_addr); a request that carries it goes there again
        var = sticky_var(name, cookie)
        out.append("")
        out.append(f"    # affinity: cookie {cookie} for {name}")
        out.append(f"    map $cookie_{cookie} ${var} {{")
        out.append(f"        default {name};")
        out += [f'        "{addr}" {addr};' for addr in servers]
        out.append("    }")
        out.append(f"    map $cookie_{cookie} ${var}_set {{")
        out.append(f'        "" "{cookie}=$upstream_addr; Path=/; HttpOnly";')
        out.append('        default "";')
        out.append("    }")
    for name in sorted(r.upstreams):
        comment, servers = r.upstreams[name]
        out.append("")
        out.append("    " + _comment(comment))
        out.append(f"    upstream {name} {{")
        out += [f"        server {s};" for s in servers]
        out.append("    }")
    out += body
    generation = hashlib.sha1("\n".join(out + body).encode()).hexdigest()[:12]
    out += [
        "",
        "    # ingress-nginx's status port: what labctl waits on after a reload",
        "    server {",
        f"        listen 127.0.0.1:{STATUS_PORT};",
        f'        location = {GENERATION_PATH} {{ return 200 "{generation}\\n"; }}',
        "        location / { return 404; }",
        "    }",
        "}",
    ]
    return "\n".join(out) + "\n"


def generation(conf: str) -> str:
    m = re.search(r'return 200 "([0-9a-f]+)\\n";', conf)
    return m.group(1) if m else ""


def route(topo: Topology, class_name: str, host: str, path: str) -> dict:
    """Which location the controller's nginx.conf sends HOST and PATH to, decided as nginx
    decides it on what `render` writes (server by exact name, then one-label wildcard,
    else the catch-all; then `= p`, the longest prefix, or in regex mode the longest
    regex first). For `labctl explain`: the Ingress, its backend and what it answers."""
    r = Renderer(topo, class_name)
    catch_all, hosts = r.servers()
    name = host.split(":", 1)[0].lower()
    server = next((s for s in hosts if s.host == name), None)
    if server is None:
        server = next((s for s in hosts if s.host and s.host.startswith("*.") and re.fullmatch(server_name(s.host)[1:], name)), catch_all)
    path = path.split("?", 1)[0]
    chosen: tuple[str, I.Ingress | None, I.Backend | None] | None = None
    if server.regex:
        for ing, p in sorted(server.paths, key=lambda x: -len(x[1].path)):
            if re.match("(?i)" + p.path, path):
                chosen = (f"{ing.key}: {p.path_type} {p.path} (regex)", ing, p.backend)
                break
    else:
        exact = server.locations.get(f"= {path}")
        if exact is not None:
            chosen = (exact.source, exact.ingress, exact.backend)
        else:
            prefixes = [k for k in server.locations if not k.startswith("=") and path.startswith(k)]
            if prefixes:
                loc = server.locations[max(prefixes, key=len)]
                chosen = (loc.source, loc.ingress, loc.backend)
    if chosen is None:
        if server.fallback is not None:
            ing, backend = server.fallback
            chosen = (f"the default backend of {ing.key}", ing, backend)
        else:
            return {"server": server.host or "_", "location": None, "ingress": None, "backend": None, "status": 404, "endpoints": []}
    source, ing, backend = chosen
    if ing is None or backend is None:
        return {"server": server.host or "_", "location": source, "ingress": None, "backend": None, "status": 404, "endpoints": []}
    t = r.target(ing, backend)
    eps = r.upstreams.get(t.upstream, ("", []))[1] if t.upstream else []
    return {
        "server": server.host or "_",
        "location": source,
        "ingress": ing.key,
        "backend": t.why,
        "status": None if t.upstream else t.status,
        "endpoints": eps,
    }
