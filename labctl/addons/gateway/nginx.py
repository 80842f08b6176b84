"""A Gateway's nginx.conf, as NGINX Gateway Fabric lays it out, without njs. Pure.

- One `server` per listener port and hostname: the hostnames a route serves
  on a listener (route and listener hostnames intersected); nginx's own
  `*.example.com` server names are the Gateway API's suffix wildcards, and
  nginx prefers an exact name, then the longest wildcard, as the
  specification's "most specific listener" does. Each port has a default
  server: the routes of a listener without hostname, else 404 (HTTP) or a
  refused handshake (HTTPS). The Host header's port is ignored.
- Matching: every match of every route attached there, sorted as the
  specification orders them (hostname, Exact path, longest PathPrefix,
  method, most headers, most query parameters, oldest route, name, rule
  order). Each condition is one `map` to 1/0 (a path, a method, a header: its
  name case-insensitive, its value exact; a query parameter: its name and
  value exact); a last `map` over the server's conditions tries the matches
  in that order, and the first that holds sends the request to its rule's
  internal location (`rewrite ... last`). NGINX Gateway Fabric does this step
  in njs; no match answers 404.
- A rule's location: RequestHeaderModifier as `proxy_set_header`,
  ResponseHeaderModifier as `proxy_hide_header`/`add_header`, URLRewrite
  (hostname; ReplaceFullPath; ReplacePrefixMatch through a `map` of the
  request URI), RequestRedirect as `return` with the Location the
  specification's port rules give; backendRefs as one upstream per Service
  port listing its ready endpoints, weights as `split_clients`; an invalid or
  missing backend answers 500 (for its share), a Service without ready
  endpoints 503, a rule with neither backends nor a redirect 500.
- A status server on 127.0.0.1:10246 answers the configuration's generation.
Each block is commented with the object it came from.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from labctl.addons.ingress.nginx import GENERATION_PATH, STATUS_PORT
from labctl.addons.nginxconf import proxy_defaults, sni_certificates
from labctl.model import family
from labctl.model import gateway as G
from labctl.model.objects import Topology
from labctl.proxy.endpoints import PodIndex, endpoints

HEADERS = (
    ("Host", "$http_host"),
    ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
    ("X-Real-IP", "$remote_addr"),
    ("X-Forwarded-Proto", "$scheme"),
    ("X-Forwarded-Host", "$host"),
    ("X-Forwarded-Port", "$server_port"),
)


def rx(text: str) -> str:
    """A literal for a PCRE inside an nginx string: letters, digits and '/-_' as they
    are, everything else as \\xHH (nothing nginx's parser or PCRE would read)."""
    out = []
    for c in text:
        if c.isascii() and (c.isalnum() or c in "/-_"):
            out.append(c)
        elif ord(c) < 256:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\x{{{ord(c):x}}}")
    return "".join(out)


def user_rx(text: str) -> str:
    """A user's regular expression inside an nginx double-quoted string."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def value(text: str) -> str:
    """A user's header value as an nginx string: `$` through a variable (nginx has no escape for it)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "${gw_dollar}") + '"'


def header_var(name: str) -> str | None:
    var = "http_" + name.lower().replace("-", "_")
    return var if re.fullmatch(r"[a-z0-9_]+", var) else None


@dataclass
class Choice:
    """One match of one rule, on one server."""

    route: G.HTTPRoute
    rule: G.RouteRule
    match: G.Match
    host: str | None  # the route hostname that covers the server (None: any host)
    index: int  # the match's index in its rule

    def rank(self) -> tuple:
        m = self.match
        host = self.host or ""
        wild = host.startswith("*.")
        kind = {"Exact": 2, "PathPrefix": 1}.get(m.path_type, 0)
        return (
            -(0 if wild else len(host)),
            -len(host),
            -kind,
            -len(m.path),
            -(m.method is not None),
            -len(m.headers),
            -len(m.query),
            self.route.order,
            self.route.key,
            self.rule.index,
            self.index,
        )

    def text(self) -> str:
        m = self.match
        parts = [f"{m.path_type} {m.path}"]
        parts += [f"method {m.method}"] if m.method else []
        parts += [f"header {n}{'=' if t == 'Exact' else '~'}{x}" for t, n, x in m.headers]
        parts += [f"query {n}{'=' if t == 'Exact' else '~'}{x}" for t, n, x in m.query]
        return f"HTTPRoute {self.route.key} rule {self.rule.index} match {self.index}: " + ", ".join(parts)


@dataclass
class Server:
    port: int
    protocol: str
    hostname: str | None  # None: the port's default server
    choices: list[Choice] = field(default_factory=list)
    listeners: list[str] = field(default_factory=list)


def servers(world: G.World, gw_key: str) -> list[Server]:
    """Every server of a Gateway's nginx, each with its matches in precedence order."""
    state = world.gateway_states[gw_key]
    usable = {s.listener.name: s for s in state.listeners if s.usable}
    protocol = {s.listener.port: s.listener.protocol for s in usable.values()}
    out: dict[tuple[int, str | None], Server] = {}
    for port, proto in sorted(protocol.items()):
        out[(port, None)] = Server(port, proto, None)
    atts = [a for a in world.attachments if a.gateway == gw_key and a.listener.name in usable]
    for a in atts:
        for h in a.hostnames or ():
            out.setdefault((a.listener.port, h), Server(a.listener.port, a.listener.protocol, h))
    for s in state.listeners:
        if s.listener.name in usable and s.listener.hostname:
            out.setdefault((s.listener.port, s.listener.hostname), Server(s.listener.port, s.listener.protocol, s.listener.hostname))
    for (port, host), server in out.items():
        for a in atts:
            if a.listener.port != port:
                continue
            if a.hostnames is None:
                covering: str | None = None
            elif host is None:
                continue
            else:
                found = [
                    e
                    for e in a.hostnames
                    if e == host
                    or (e.startswith("*.") and G.hostname_matches(e, host.removeprefix("*.") if host.startswith("*.") else host) and len(e) <= len(host))
                ]
                if not found:
                    continue
                covering = max(found, key=lambda e: (not e.startswith("*."), len(e)))
            if a.listener.name not in server.listeners:
                server.listeners.append(a.listener.name)
            for rule in a.route.rules:
                for i, m in enumerate(rule.matches):
                    server.choices.append(Choice(a.route, rule, m, covering, i))
        server.choices.sort(key=Choice.rank)
    return sorted(out.values(), key=lambda s: (s.port, s.hostname is not None, s.hostname or ""))


# -- conditions ------------------------------------------------------------------------------


def conditions(m: G.Match) -> list[tuple]:
    """The match as conditions (each one nginx `map`); PathPrefix / is no condition."""
    out: list[tuple] = []
    if not (m.path_type == "PathPrefix" and m.path.rstrip("/") == ""):
        out.append(("path", m.path_type, m.path))
    if m.method:
        out.append(("method", m.method))
    out += [("header", t, n, x) for t, n, x in m.headers]
    out += [("query", t, n, x) for t, n, x in m.query]
    return out


def condition_map(cond: tuple, var: str) -> list[str]:
    kind = cond[0]
    if kind == "path":
        _, t, p = cond
        if t == "Exact":
            key = f"~^{rx(p)}$"
        elif t == "PathPrefix":
            key = f"~^{rx(p.rstrip('/'))}(/|$)"  # element-wise; a trailing / is ignored
        else:
            key = f"~^(?:{user_rx(p)})"
        source = "$uri"
    elif kind == "method":
        key, source = f"~^{cond[1]}$", "$request_method"
    elif kind == "header":
        _, t, n, x = cond
        hv = header_var(n)
        if hv is None:
            return [f"    map $host ${var} {{ default 0; }}  # header {n}: no nginx variable can read it"]
        source = f"${hv}"
        key = f"~^{rx(x)}$" if t == "Exact" else f"~{user_rx(x)}"
    else:
        _, t, n, x = cond
        source = "$args"
        # the first value of the parameter (names and values exact, as the request spells them)
        key = f"~(?:^|&){rx(n)}={rx(x)}(?:&|$)" if t == "Exact" else f"~(?:^|&){rx(n)}=(?:{user_rx(x)})(?:&|$)"
    return [f'    map {source} ${var} {{ "{key}" 1; default 0; }}']


def matches_python(cond: tuple, path: str, method: str, headers: dict[str, str], query: str) -> bool:
    """The same condition in Python (for `labctl explain`)."""
    kind = cond[0]
    if kind == "path":
        _, t, p = cond
        if t == "Exact":
            return path == p
        if t == "PathPrefix":
            q = p.rstrip("/")
            return path == q or path.startswith(q + "/")
        return re.match(p, path) is not None
    if kind == "method":
        return method.upper() == cond[1]
    if kind == "header":
        _, t, n, x = cond
        got = headers.get(n)
        return got is not None and (got == x if t == "Exact" else re.search(x, got) is not None)
    _, t, n, x = cond
    for part in query.split("&") if query else []:
        k, _, val = part.partition("=")
        if k == n:
            return val == x if t == "Exact" else re.fullmatch(x, val) is not None
    return False


# -- rules -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a rule's location does: its lines and a text for explain."""

    lines: list[str]
    summary: str
    status: int | None  # what the proxy answers itself (redirect, 500, 503), else None
    backends: list[tuple[str, int, list[str]]] = field(default_factory=list)  # (text, weight, endpoints)
    extra: list[str] = field(default_factory=list)  # more locations of the server (mirrors)


class Renderer:
    def __init__(self, topo: Topology, world: G.World, gw_key: str):
        self.topo = topo
        self.world = world
        self.gw_key = gw_key
        self.index = PodIndex(topo.pods)
        self.services = {s.key: s for s in topo.services}
        self.maps: list[str] = []
        self.upstreams: dict[str, tuple[str, list[str]]] = {}
        self.cond_vars: dict[tuple, str] = {}
        self.rule_vars: dict[tuple, int] = {}
        self.defined: set[str] = set()

    def define(self, var: str, lines: list[str]) -> None:
        """Global maps once, however many servers use the rule."""
        if var not in self.defined:
            self.defined.add(var)
            self.maps += lines

    def cond_var(self, cond: tuple) -> str:
        if cond not in self.cond_vars:
            var = f"gwc_{len(self.cond_vars)}"
            self.cond_vars[cond] = var
            self.maps.append(f"    # {' '.join(str(x) for x in cond)}")
            self.maps += condition_map(cond, var)
        return self.cond_vars[cond]

    def _id(self, route: G.HTTPRoute, rule: G.RouteRule) -> int:
        return self.rule_vars.setdefault((route.key, rule.index), len(self.rule_vars))

    def backend(self, route: G.HTTPRoute, rule: G.RouteRule, i: int, ref: G.Ref) -> tuple[str, list[str], str]:
        """(upstream name or "500"/"503", endpoints, text); `i` >= 1000: a mirror filter's."""
        reason = self.world.route_states[route.key].backends.get((rule.index, i))
        if reason:
            return "500", [], f"{ref.text()}: {reason} (500)"
        svc = self.services.get(f"{ref.namespace}/{ref.name}")
        port = next((p for p in svc.ports if p.port == ref.port), None) if svc else None
        if svc is None or port is None:
            return "500", [], f"{ref.text()}: the Service has no port {ref.port} (500)"
        eps = endpoints(self.topo, svc, port, self.index)
        if not eps:
            return "503", [], f"{ref.text()}: no ready endpoints (503)"
        name = f"{ref.namespace}_{ref.name}_{ref.port}".replace("-", "_").replace(".", "_")
        self.upstreams[name] = (ref.text(), [e.addr for e in eps])
        return name, [e.addr for e in eps], ref.text()

    def plan(self, server: Server, route: G.HTTPRoute, rule: G.RouteRule) -> Plan:
        k = self._id(route, rule)
        lines: list[str] = []
        headers = [list(h) for h in HEADERS]

        def set_header(name: str, val: str) -> None:
            for h in headers:
                if h[0].lower() == name.lower():
                    h[1] = val
                    return
            headers.append([name, val])

        filters = {f.type: f.spec for f in rule.filters}
        unsupported = [f.type for f in rule.filters if f.type not in G.FILTERS]
        if unsupported:
            return Plan(["return 500;"], f"filter {unsupported[0]} is not built by labctl (500)", 500)
        mod = filters.get("RequestHeaderModifier") or {}
        for h in mod.get("set") or []:
            set_header(h["name"], value(h["value"]))
        for j, h in enumerate(mod.get("add") or []):
            hv = header_var(h["name"])
            if hv is None:
                set_header(h["name"], value(h["value"]))
                continue
            var = f"gw_add_{k}_{j}"
            v = value(h["value"])[1:-1]
            self.define(var, [f'    map ${hv} ${var} {{ "" "{v}"; default "${hv},{v}"; }}  # add {h["name"]}'])
            set_header(h["name"], f"${var}")
        for name in mod.get("remove") or []:
            set_header(name, '""')
        rewrite = filters.get("URLRewrite") or {}
        if rewrite.get("hostname"):
            set_header("Host", rewrite["hostname"])
        resp = filters.get("ResponseHeaderModifier") or {}
        for h in resp.get("set") or []:
            lines += [f"proxy_hide_header {h['name']};", f"add_header {h['name']} {value(h['value'])} always;"]
        for h in resp.get("add") or []:
            lines.append(f"add_header {h['name']} {value(h['value'])} always;")
        for name in resp.get("remove") or []:
            lines.append(f"proxy_hide_header {name};")

        def uri(modifier: dict[str, Any] | None) -> str:
            if not modifier:
                return "$request_uri"
            if modifier.get("type") == "ReplaceFullPath":
                return value(modifier["replaceFullPath"])[1:-1] + "$is_args$args"
            prefix = rule.matches[0].path.rstrip("/")
            repl = modifier.get("replacePrefixMatch") or "/"
            var = f"gw_rewrite_{k}"
            self.define(
                var,
                [
                    f"    # ReplacePrefixMatch {prefix or '/'} -> {repl} ({route.key} rule {rule.index})",
                    f"    map $request_uri ${var} {{",
                    f'        "~^{rx(prefix)}/*(?<gw_q>\\?.*)?$" "{value(repl)[1:-1]}$gw_q";',
                    f'        "~^{rx(prefix)}(?<gw_rest>/[^?]*)(?<gw_q>\\?.*)?$" "{value(repl.rstrip("/"))[1:-1]}$gw_rest$gw_q";',
                    "        default $request_uri;",
                    "    }",
                ],
            )
            return f"${var}"

        extra: list[str] = []
        mirrors = []
        for j, f in enumerate(rule.filters):
            if f.type != "RequestMirror":
                continue
            target, _, text = self.backend(route, rule, 1000 + j, G.mirror_ref(f, route.namespace))
            mirrors.append(text)
            if target in ("500", "503"):
                continue  # nothing to copy the request to
            loc = f"/_ngf/mirror{k}_{j}"
            lines.append(f"mirror {loc};  # RequestMirror to {text}")
            body = [f"proxy_set_header {n} {v};" for n, v in HEADERS]
            percent = f.spec.get("percent")
            if percent is not None and percent < 100:
                var = f"gw_mirror_{k}_{j}"
                self.define(var, [f'    split_clients "$request_id" ${var} {{ {percent}% 1; * 0; }}  # RequestMirror percent'])
                body.insert(0, f"if (${var} = 0) {{ return 204; }}")
            extra += [f"location = {loc} {{", "    internal;", *[f"    {x}" for x in body], f"    proxy_pass http://{target}$request_uri;", "}"]
        redirect = filters.get("RequestRedirect")
        if redirect is not None:
            scheme = redirect.get("scheme") or ("https" if server.protocol == "HTTPS" else "http")
            port = redirect.get("port") or ({"http": 80, "https": 443}[redirect["scheme"]] if redirect.get("scheme") else server.port)
            host = redirect.get("hostname") or "$host"
            shown = "" if (scheme, port) in (("http", 80), ("https", 443)) else f":{port}"
            code = redirect.get("statusCode") or 302
            location = f"{scheme}://{host}{shown}{uri(redirect.get('path'))}"
            lines.append(f'return {code} "{location}";')
            return Plan(lines, f"RequestRedirect {code} to {location}", code, extra=extra)
        lines += [f"proxy_set_header {n} {v};" for n, v in headers]
        targets = []
        texts = []
        for i, ref in enumerate(rule.backends):
            target, eps, text = self.backend(route, rule, i, ref)
            texts.append((text + (f" weight {ref.weight}" if len(rule.backends) > 1 else ""), ref.weight, eps))
            if ref.weight > 0:
                targets.append((target, ref.weight))
        if not targets:
            why = "no backendRefs" if not rule.backends else "every backendRef has weight 0"
            return Plan(lines + ["return 500;"], f"{why} (500)", 500, texts, extra)
        path = uri(rewrite.get("path"))
        if len(targets) == 1:
            target = targets[0][0]
            also = "".join(f", mirrored to {m}" for m in mirrors)
            if target in ("500", "503"):
                return Plan(lines + [f"return {target};"], texts[0][0] + also, int(target), texts, extra)
            return Plan(lines + [f"proxy_pass http://{target}{path};"], texts[0][0] + also, None, texts, extra)
        var = f"gw_split_{k}"
        total = sum(w for _, w in targets)
        split = [f"    # weights of {route.key} rule {rule.index}", f'    split_clients "$request_id" ${var} {{']
        for j, (target, w) in enumerate(targets):
            share = "*" if j == len(targets) - 1 else f"{100 * w / total:.2f}%"
            split.append(f"        {share} {target};")
        self.define(var, split + ["    }"])
        for code in sorted({t for t, _ in targets if t in ("500", "503")}):
            lines.append(f"if (${var} = {code}) {{ return {code}; }}")
        lines.append(f"proxy_pass http://${var}{path};")
        return Plan(lines, ", ".join(t for t, _, _ in texts) + "".join(f", mirrored to {m}" for m in mirrors), None, texts, extra)


def _comment(text: str) -> str:
    return "# " + text.replace("\n", " ")


@dataclass
class Tls:
    """Certificate files per HTTPS listener hostname ("" for a listener without one)."""

    default: tuple[str, str] | None = None
    hosts: dict[str, tuple[str, str]] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)


def render(topo: Topology, world: G.World, gw_key: str, runtime_dir: str, tls: Tls | None = None) -> str:
    six = 6 in family.lab_families(topo.lab)
    r = Renderer(topo, world, gw_key)
    plan = servers(world, gw_key)
    out: list[str] = [
        f"# nginx.conf of Gateway {gw_key} (GatewayClass {world.gateway_states[gw_key].gateway.class_name}), rendered by labctl",
        "# as NGINX Gateway Fabric lays it out (header, query and method matches as maps instead of njs)",
        "user root;",
        "worker_processes 1;",
        f"pid {runtime_dir}/nginx.pid;",
        "error_log stderr notice;",
        "events { worker_connections 1024; }",
        "http {",
        "    default_type text/plain;",
        "    access_log /dev/stdout;",
        "    server_names_hash_bucket_size 256;",
        "    map_hash_bucket_size 256;",
        "    variables_hash_bucket_size 256;",
        '    geo $gw_dollar { default "$"; }',
    ]
    out += proxy_defaults(runtime_dir, HEADERS)
    if tls is not None and any(s.protocol == "HTTPS" for s in plan):
        out += sni_certificates("gw", tls.hosts, tls.default)
    body: list[str] = []
    for n, server in enumerate(plan):
        default = server.hostname is None
        listen = f"listen {server.port}" + (" ssl" if server.protocol == "HTTPS" else "") + (" default_server" if default else "") + ";"
        body.append("")
        body.append(
            f"    # port {server.port} {server.protocol}, "
            + (f"hostname {server.hostname}" if server.hostname else "default server")
            + (f", listeners {', '.join(server.listeners)}" if server.listeners else "")
        )
        body.append("    server {")
        body.append(f"        {listen}")
        if six:  # NGINX Gateway Fabric listens on [::] too where the cluster has IPv6
            body.append(f"        {listen.replace('listen ', 'listen [::]:', 1)}")
        body.append(f"        server_name {server.hostname or '_'};")
        if server.protocol == "HTTPS":
            host = server.hostname or ""
            if tls is not None and host in tls.why:
                body.append(f"        {_comment('certificate: ' + tls.why[host])}")
            elif default:
                body.append("        ssl_reject_handshake on;  # no listener serves this name")
        if not server.choices:
            body.append("        location / { return 404; }  # no route attached here")
            body.append("    }")
            continue
        conds: list[str] = []
        patterns = []
        rules_seen: dict[tuple, tuple] = {}
        for c in server.choices:
            need = [r.cond_var(x) for x in conditions(c.match)]
            for var in need:
                if var not in conds:
                    conds.append(var)
            k = r._id(c.route, c.rule)
            rules_seen.setdefault((c.route.key, c.rule.index), (c.route, c.rule))
            patterns.append((need, f"/_ngf/r{k}", c.text()))
        if conds:
            pick = f"gw_pick_{n}"
            out.append("")
            out.append(f"    # server {server.hostname or '_'}:{server.port}: the matches in the specification's order; the first that holds wins")
            out.append(f'    map "x{"".join("$" + v for v in conds)}" ${pick} {{')
            for need, target, text in patterns:
                flags = "".join("1" if v in need else "." for v in conds).rstrip(".")
                regex = re.sub(r"\.{2,}", lambda m: f".{{{len(m.group())}}}", flags)
                out.append(f'        "~^x{regex}" {target};  # {text}')
            out.append("        default /_ngf/none;")
            out.append("    }")
            body.append(f"        location / {{ rewrite ^ ${pick} last; }}")
        else:
            body.append(f"        location / {{ rewrite ^ {patterns[0][1]} last; }}  # {patterns[0][2]}")
        body.append("        location = /_ngf/none { internal; return 404; }  # no match")
        for route, rule in rules_seen.values():
            p = r.plan(server, route, rule)
            body.append(f"        {_comment(f'HTTPRoute {route.key} rule {rule.index}' + (f' ({rule.name})' if rule.name else '') + ': ' + p.summary)}")
            body.append(f"        location = /_ngf/r{r._id(route, rule)} {{")
            body.append("            internal;")
            body += [f"            {line}" for line in p.lines]
            body.append("        }")
            body += [f"        {line}" for line in p.extra]
        body.append("    }")
    out += [""] + r.maps
    for name in sorted(r.upstreams):
        comment, eps = r.upstreams[name]
        out.append("")
        out.append("    " + _comment(comment))
        out.append(f"    upstream {name} {{")
        out += [f"        server {e};" for e in eps]
        out.append("    }")
    out += body
    generation = hashlib.sha1("\n".join(out).encode()).hexdigest()[:12]
    out += [
        "",
        "    # the status port: what labctl waits on after a reload",
        "    server {",
        f"        listen 127.0.0.1:{STATUS_PORT};",
        f'        location = {GENERATION_PATH} {{ return 200 "{generation}\\n"; }}',
        "        location / { return 404; }",
        "    }",
        "}",
    ]
    return "\n".join(out) + "\n"


def route(topo: Topology, world: G.World, gw_key: str, port: int, host: str, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> dict:
    """What the Gateway's nginx does with a request, decided as the rendered maps decide
    it (for `labctl explain`): the server, the match that wins, and its rule's plan."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    name = host.split(":", 1)[0].lower()
    path, _, query = path.partition("?")
    candidates = [s for s in servers(world, gw_key) if s.port == port]
    server = next((s for s in candidates if s.hostname == name), None)
    if server is None:
        wild = [s for s in candidates if s.hostname and s.hostname.startswith("*.") and G.hostname_matches(s.hostname, name)]
        server = max(wild, key=lambda s: len(s.hostname or ""), default=None) or next((s for s in candidates if s.hostname is None), None)
    if server is None:
        return {"server": None, "location": None, "route": None, "backend": None, "status": None, "endpoints": []}
    r = Renderer(topo, world, gw_key)
    for c in server.choices:
        if all(matches_python(x, path, method, headers, query) for x in conditions(c.match)):
            p = r.plan(server, c.route, c.rule)
            eps = [e for _, w, es in p.backends if w > 0 for e in es] if p.status is None else []
            return {
                "server": f"{server.hostname or '_'}:{server.port}",
                "location": c.text(),
                "route": c.route.key,
                "backend": p.summary,
                "status": p.status,
                "endpoints": eps,
            }
    return {"server": f"{server.hostname or '_'}:{server.port}", "location": None, "route": None, "backend": None, "status": 404, "endpoints": []}


def generation(conf: str) -> str:
    m = re.search(r'return 200 "([0-9a-f]+)\\n";', conf)
    return m.group(1) if m else ""
