"""Ingress, IngressClass and the lab's ingress controller, as the API server and
ingress-nginx see them. Pure.

The Lab's `spec.ingress` adds the controller of ingress-nginx: namespace
`ingress-nginx`, pods `ingress-nginx-controller-<i>` running real nginx, the
Service `ingress-nginx/ingress-nginx-controller` (LoadBalancer by default, ports
http 80 and https 443, externalTrafficPolicy Local so X-Forwarded-For carries the
client), and the IngressClass `nginx` (controller k8s.io/ingress-nginx), marked
default. Ingress objects are validated as the API server validates them
(pkg/apis/networking/validation) and kept in creation order (document order,
then apply order): "the older wins" rules use it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from labctl.model import fields as v
from labctl.model.errors import Problem

NAMESPACE = "ingress-nginx"
CONTROLLER = "ingress-nginx-controller"
CONTROLLER_NAME = "k8s.io/ingress-nginx"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
LABELS = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")
# The controller container: Debian's nginx in the foreground, its configuration the pod's
# /etc/nginx/nginx.conf (`ip netns exec` mounts /etc/netns/<pod>/nginx over /etc/nginx).
NGINX_COMMAND = ("nginx", "-e", "stderr", "-g", "daemon off;")
BAD_PATH_PARTS = ("//", "/./", "/../", "%2f", "%2F")


@dataclass(frozen=True)
class IngressSpec:
    """The Lab's `spec.ingress`."""

    class_name: str = "nginx"
    service: str = "LoadBalancer"  # or NodePort
    replicas: int = 1
    external_traffic_policy: str = "Local"


@dataclass(frozen=True)
class Backend:
    service: str | None = None  # a Service of the Ingress's namespace
    port_number: int | None = None
    port_name: str | None = None
    resource: str | None = None  # kind/name of a non-Service backend (ingress-nginx skips these)

    def text(self) -> str:
        if self.service is None:
            return f"resource {self.resource}"
        return f"{self.service}:{self.port_number if self.port_number is not None else self.port_name}"


@dataclass(frozen=True)
class Path:
    path: str
    path_type: str
    backend: Backend


@dataclass(frozen=True)
class Rule:
    host: str | None  # None: every host
    paths: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Ingress:
    namespace: str
    name: str
    class_name: str | None  # spec.ingressClassName, else the legacy annotation, else the default class
    default_backend: Backend | None = None
    rules: tuple[Rule, ...] = ()
    tls: tuple[tuple[tuple[str, ...], str | None], ...] = ()  # (hosts, secretName)
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    order: int = 0  # creation order: the older wins

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class IngressClass:
    name: str
    controller: str
    default: bool = False
    system: bool = False  # the lab's own class `nginx`


# -- reading ---------------------------------------------------------------------------


def _backend(d: dict[str, Any]) -> Backend:
    svc = d.get("service")
    if svc:
        port = svc.get("port") or {}
        return Backend(service=svc.get("name"), port_number=port.get("number"), port_name=port.get("name"))
    res = d.get("resource") or {}
    return Backend(resource=f"{res.get('kind')}/{res.get('name')}")


def ingress_from_manifest(order: int, data: dict[str, Any]) -> Ingress:
    meta = data["metadata"]
    spec = data.get("spec") or {}
    annotations = dict(meta.get("annotations") or {})
    rules = tuple(
        Rule(
            host=r.get("host") or None,
            paths=tuple(
                Path(p.get("path") or "/", p.get("pathType") or "", _backend(p.get("backend") or {})) for p in ((r.get("http") or {}).get("paths") or [])
            ),
        )
        for r in spec.get("rules") or []
    )
    return Ingress(
        namespace=meta.get("namespace") or "default",
        name=meta["name"],
        class_name=spec.get("ingressClassName") or annotations.get(LEGACY_CLASS_ANNOTATION),
        default_backend=_backend(spec["defaultBackend"]) if spec.get("defaultBackend") else None,
        rules=rules,
        tls=tuple((tuple(t.get("hosts") or ()), t.get("secretName")) for t in spec.get("tls") or []),
        annotations=annotations,
        order=order,
    )


def class_from_manifest(data: dict[str, Any]) -> IngressClass:
    meta = data["metadata"]
    annotations = meta.get("annotations") or {}
    return IngressClass(
        name=meta["name"], controller=(data.get("spec") or {}).get("controller") or "", default=annotations.get(DEFAULT_CLASS_ANNOTATION) == "true"
    )


# -- validation, as the API server's ------------------------------------------------------


def _host_problem(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
        return f"{host!r} must be a DNS name, not an IP address"
    except ValueError:
        pass
    if host.startswith("*."):
        why = v.dns1123_subdomain(host[2:])
        return f"{host!r} is not a wildcard DNS-1123 subdomain ('*.' and a DNS-1123 subdomain)" if why else None
    if "*" in host:
        return f"{host!r}: a wildcard '*' must be the whole first label ('*.example.com')"
    return v.dns1123_subdomain(host)


def _path_problem(path: str, path_type: str) -> str | None:
    if path_type in ("Exact", "Prefix"):
        if not path.startswith("/"):
            return f"{path!r} must be an absolute path"
        for part in BAD_PATH_PARTS:
            if part in path:
                return f"{path!r} must not contain {part!r}"
        for end in ("/..", "/."):
            if path.endswith(end):
                return f"{path!r} must not end with {end!r}"
    elif path and not path.startswith("/"):
        return f"{path!r} must be an absolute path"
    return None


def _backend_problems(d: dict[str, Any], w: str, path: str) -> list[Problem]:
    out: list[Problem] = []
    svc, res = d.get("service"), d.get("resource")
    if svc and res:
        out.append(Problem(w, path, "cannot set both resource and service backends"))
    elif not svc and not res:
        out.append(Problem(w, path, "resource or service backend is required"))
    if svc:
        why = v.dns1035_label(str(svc.get("name", "")))
        if why:
            out.append(Problem(w, f"{path}.service.name", why))
        port = svc.get("port") or {}
        if port.get("name") and port.get("number") is not None:
            out.append(Problem(w, f"{path}.service.port", "cannot set both port name & port number"))
        elif not port.get("name") and port.get("number") is None:
            out.append(Problem(w, f"{path}.service.port", "port name or number is required"))
        elif port.get("name") and v.port_name(str(port["name"])):
            out.append(Problem(w, f"{path}.service.port.name", v.port_name(str(port["name"])) or ""))
        elif port.get("number") is not None and not 1 <= int(port["number"]) <= 65535:
            out.append(Problem(w, f"{path}.service.port.number", f"{port['number']} is out of range 1-65535"))
    return out


def check_ingress(data: dict[str, Any], w: str) -> list[Problem]:
    """What the API server refuses in an Ingress, with field paths."""
    out: list[Problem] = []
    spec = data.get("spec") or {}
    why = v.dns1123_subdomain(str(data["metadata"]["name"]))
    if why:
        out.append(Problem(w, "metadata.name", why))
    if not spec.get("rules") and not spec.get("defaultBackend"):
        out.append(Problem(w, "spec", "either `defaultBackend` or `rules` must be specified"))
    if spec.get("ingressClassName") is not None and v.dns1123_subdomain(str(spec["ingressClassName"])):
        out.append(Problem(w, "spec.ingressClassName", v.dns1123_subdomain(str(spec["ingressClassName"])) or ""))
    if spec.get("defaultBackend"):
        out += _backend_problems(spec["defaultBackend"], w, "spec.defaultBackend")
    for ri, rule in enumerate(spec.get("rules") or []):
        rp = f"spec.rules[{ri}]"
        if rule.get("host"):
            why = _host_problem(str(rule["host"]))
            if why:
                out.append(Problem(w, f"{rp}.host", why))
        http = rule.get("http")
        if http is not None and not http.get("paths"):
            out.append(Problem(w, f"{rp}.http.paths", "must have at least one path"))
        for pi, p in enumerate((http or {}).get("paths") or []):
            pp = f"{rp}.http.paths[{pi}]"
            t = p.get("pathType")
            if not t:
                out.append(Problem(w, f"{pp}.pathType", "pathType must be specified"))
            elif t not in PATH_TYPES:
                out.append(Problem(w, f"{pp}.pathType", f"must be one of Exact, Prefix, ImplementationSpecific, not {t!r}"))
            else:
                why = _path_problem(str(p.get("path") or ""), t)
                if why:
                    out.append(Problem(w, f"{pp}.path", why))
            out += _backend_problems(p.get("backend") or {}, w, f"{pp}.backend")
    annotations = (data.get("metadata") or {}).get("annotations") or {}
    regex = annotations.get("nginx.ingress.kubernetes.io/use-regex") == "true" or bool(annotations.get("nginx.ingress.kubernetes.io/rewrite-target"))
    for ri, rule in enumerate(spec.get("rules") or [] if regex else []):
        for pi, p in enumerate((rule.get("http") or {}).get("paths") or []):
            try:
                re.compile(str(p.get("path") or "/"))
            except re.error as e:
                # nginx would refuse the whole configuration: refused here, before any proxy is touched
                out.append(Problem(w, f"spec.rules[{ri}].http.paths[{pi}].path", f"is not a regular expression, as use-regex / rewrite-target make it: {e}"))
    for ti, t in enumerate(spec.get("tls") or []):
        for hi, host in enumerate(t.get("hosts") or []):
            why = _host_problem(str(host))
            if why:
                out.append(Problem(w, f"spec.tls[{ti}].hosts[{hi}]", why))
    return out


CONTROLLER_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[-a-zA-Z0-9._~%!$&'()*+,;=:@/]*)?")


def check_class(data: dict[str, Any], w: str) -> list[Problem]:
    out: list[Problem] = []
    why = v.dns1123_subdomain(str(data["metadata"]["name"]))
    if why:
        out.append(Problem(w, "metadata.name", why))
    controller = (data.get("spec") or {}).get("controller")
    if not controller:
        out.append(Problem(w, "spec.controller", "is required"))
    elif len(controller) > 250 or "/" not in controller or not CONTROLLER_PATTERN.fullmatch(controller):
        out.append(Problem(w, "spec.controller", f"{controller!r} must be a domain-prefixed path of at most 250 characters (such as 'example.com/controller')"))
    return out


# -- the lab's controller --------------------------------------------------------------------


def spec_from_lab(d: dict[str, Any] | None) -> IngressSpec | None:
    if d is None:
        return None
    return IngressSpec(
        class_name=d.get("className", IngressSpec.class_name),
        service=d.get("service", IngressSpec.service),
        replicas=d.get("replicas", IngressSpec.replicas),
        external_traffic_policy=d.get("externalTrafficPolicy", IngressSpec.external_traffic_policy),
    )


def system_class(spec: IngressSpec) -> IngressClass:
    return IngressClass(spec.class_name, CONTROLLER_NAME, default=True, system=True)


def check_lab(spec: Any, ingress: IngressSpec | None, where: str) -> list[Problem]:
    """The Lab's spec.ingress (`spec`: the LabSpec)."""
    if ingress is None:
        return []
    out = []
    if v.dns1123_subdomain(ingress.class_name):
        out.append(Problem(where, "spec.ingress.className", v.dns1123_subdomain(ingress.class_name) or ""))
    if ingress.service == "LoadBalancer" and not spec.load_balancer_pool:
        out.append(Problem(where, "spec.ingress.service", "LoadBalancer needs spec.loadBalancerPool (or say NodePort)"))
    return out


def served_class(ingress: Ingress, classes: list[IngressClass]) -> IngressClass | None:
    """The class an Ingress belongs to: its own, else the default one (the newest default,
    as the admission plugin picks since 1.25). None: no class of that name."""
    if ingress.class_name is not None:
        return next((c for c in classes if c.name == ingress.class_name), None)
    defaults = [c for c in classes if c.default]
    return defaults[-1] if defaults else None


def created_key(d: dict[str, Any]) -> str:
    meta = d.get("metadata") or {}
    scoped = d.get("kind") not in ("Namespace", "IngressClass", "GatewayClass")
    return f"{d.get('kind')}/{(meta.get('namespace') or 'default') if scoped else ''}/{meta.get('name')}"


def from_documents(lab: Any, documents, created: dict[str, list] | None = None) -> tuple[tuple[Ingress, ...], tuple[IngressClass, ...]]:
    """The Ingresses, oldest first (`created`: each object's creation order, as labctl
    stamped it; else the documents' order), and the IngressClasses of a lab's manifests
    (`lab`: the LabSpec), the lab's own class first."""
    created = created or {}
    ingresses = [ingress_from_manifest(created.get(created_key(d), [i])[0], d) for i, d in enumerate(documents) if d.get("kind") == "Ingress"]
    ingresses.sort(key=lambda x: x.order)
    classes = [system_class(lab.ingress)] if lab.ingress is not None else []
    classes += [class_from_manifest(d) for d in documents if d.get("kind") == "IngressClass"]
    return tuple(ingresses), tuple(classes)


# -- Secrets of type kubernetes.io/tls --------------------------------------------------------

TLS_SECRET = "kubernetes.io/tls"
SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def check_secret(data: dict[str, Any], w: str) -> list[Problem]:
    """What the API server refuses in a Secret (a TLS one needs tls.crt and tls.key)."""
    import base64
    import binascii

    out: list[Problem] = []
    why = v.dns1123_subdomain(str(data["metadata"]["name"]))
    if why:
        out.append(Problem(w, "metadata.name", why))
    values = dict(data.get("data") or {})
    for key, value in values.items():
        if not SECRET_KEY.fullmatch(str(key)):
            out.append(Problem(w, f"data[{key}]", "a key must consist of alphanumeric characters, '-', '_' or '.'"))
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            out.append(Problem(w, f"data[{key}]", "is not valid base64"))
    if data.get("type") == TLS_SECRET:
        given = set(values) | set(data.get("stringData") or {})
        for key in ("tls.crt", "tls.key"):
            if key not in given:
                out.append(Problem(w, f"data[{key}]", f"is required for a Secret of type {TLS_SECRET}"))
    return out


def tls_secrets(documents) -> dict[str, tuple[bytes, bytes]]:
    """ns/name -> (tls.crt, tls.key) of the Secrets of type kubernetes.io/tls."""
    import base64

    out = {}
    for d in documents:
        if d.get("kind") != "Secret" or d.get("type") != TLS_SECRET:
            continue
        meta = d["metadata"]
        data = {k: base64.b64decode(str(x)) for k, x in (d.get("data") or {}).items()}
        data.update({k: str(x).encode() for k, x in (d.get("stringData") or {}).items()})
        out[f"{meta.get('namespace') or 'default'}/{meta['name']}"] = (data.get("tls.crt", b""), data.get("tls.key", b""))
    return out


def stamp(previous: dict[str, list] | None, documents, now: str) -> dict[str, list]:
    """Creation order, creationTimestamp and generation of every object: kept for the
    ones the lab already had (the generation goes up by one when the spec changed, as
    the API server's metadata.generation), the next numbers (in document order), `now`
    and generation 1 for new ones. Each value: [order, timestamp, generation, spec hash]."""
    import hashlib
    import json

    prev = previous or {}
    out: dict[str, list] = {}
    next_order = max((v[0] for v in prev.values()), default=-1) + 1
    for d in documents:
        key = created_key(d)
        if key in out:
            continue
        digest = hashlib.sha1(json.dumps(d.get("spec"), sort_keys=True, default=str).encode()).hexdigest()[:16]
        if key in prev:
            old = list(prev[key])
            generation = old[2] if len(old) > 2 else 1
            if len(old) > 3 and old[3] != digest:
                generation += 1
            out[key] = [old[0], old[1], generation, digest]
        else:
            out[key] = [next_order, now, 1, digest]
            next_order += 1
    return out
