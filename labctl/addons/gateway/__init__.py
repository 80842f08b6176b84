"""The Gateway API at run time: real nginx in each Gateway's pod, as NGINX Gateway
Fabric provisions it (labctl.model.gateway decides attachments and status,
labctl.model.system adds the pods and Services, labctl.addons.gateway.nginx
renders). After every change each Gateway's nginx.conf is rendered, checked with
`nginx -t` and reloaded only when its text changed (labctl.addons.nginxproc).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

from labctl.addons import nginxproc
from labctl.addons.base import AddOn
from labctl.addons.gateway import nginx
from labctl.model import gateway as G
from labctl.model import system
from labctl.model.objects import LabSpec, Pod, Topology

CERT_MANAGER_ANNOTATION = G.CERT_MANAGER_ANNOTATION


def proxies(topo: Topology, gw_key: str | None = None) -> list[Pod]:
    """The nginx pods of the Gateways (of one of them)."""
    return [p for p in topo.pods if (k := system.is_gateway_proxy(p)) and (gw_key is None or k == gw_key)]


def service_key(gw_key: str) -> str:
    ns, _, name = gw_key.partition("/")
    return f"{ns}/{G.proxy_name(name)}"


def certificates(labdir, topo: Topology, world: G.World, gw: G.Gateway, run_dir: Path) -> nginx.Tls:
    """Per HTTPS listener: its first usable certificateRef (a Secret of type
    kubernetes.io/tls, written under the pod's runtime directory), or one issued from
    the lab's CA for its hostname when the Gateway asks cert-manager's `labctl-ca`."""
    from labctl import pki

    out = nginx.Tls()
    state = world.gateway_states[gw.key]
    issued = gw.annotations.get(CERT_MANAGER_ANNOTATION) == pki.ISSUER
    for ls in state.listeners:
        li = ls.listener
        if li.protocol != "HTTPS" or not ls.usable:
            continue
        host = li.hostname or ""
        if host in out.why:
            continue
        refs = [r for r in ls.certificates if pki.usable(*world.secrets[f"{r.namespace}/{r.name}"]) is None]
        if refs:
            ref = refs[0]
            crt, key = world.secrets[f"{ref.namespace}/{ref.name}"]
            d = run_dir / "certs"
            d.mkdir(parents=True, exist_ok=True)
            pair = pki.Pair(d / f"{ref.namespace}_{ref.name}.crt", d / f"{ref.namespace}_{ref.name}.key")
            for path, data in ((pair.cert, crt), (pair.key, key)):
                if not path.exists() or path.read_bytes() != data:
                    path.write_bytes(data)
                    os.chmod(path, 0o600)
            why = f"Secret {ref.namespace}/{ref.name} of listener {li.name}"
        elif issued and li.hostname:
            pair = pki.issue(labdir.path / "ca", topo.lab.name, [li.hostname])
            why = f"issued by the lab's CA for listener {li.name} ({CERT_MANAGER_ANNOTATION}: {pki.ISSUER})"
        else:
            continue
        why += f", sha1 {hashlib.sha1(pair.cert.read_bytes()).hexdigest()[:12]}"
        files = (str(pair.cert), str(pair.key))
        if host:
            out.hosts[host] = files
        elif out.default is None:
            out.default = files
        out.why[host] = why
    if out.default is None and out.hosts:
        out.default = next(iter(out.hosts.values()))  # nginx needs one; a name no listener has is refused by the default server
    return out


class GatewayNginx(AddOn):
    name = "gateway"

    def require(self, spec: LabSpec) -> None:
        from labctl.kernel import run

        run.require("nginx", "nginx")
        if not Path("/etc/nginx").is_dir():
            from labctl.errors import HostLacks

            raise HostLacks("/etc/nginx is missing (the Gateways' nginx configuration is mounted over it)", hint="install the Debian package nginx")

    def sync(self, labdir, journal, topo: Topology) -> Callable[[], None] | None:
        world = G.World.of(topo)
        configs = []
        for gw in world.served():
            for pod in proxies(topo, gw.key):
                run_dir = nginxproc.runtime_dir(labdir, pod, "gateway")
                tls = certificates(labdir, topo, world, gw, run_dir)
                configs.append((pod, nginx.render(topo, world, gw.key, str(run_dir), tls)))
        return nginxproc.install(journal, topo, configs, "the Gateways and HTTPRoutes")

    def status(self, topo: Topology) -> dict[str, Any] | None:
        world = G.World.of(topo)
        return {
            "gatewayClasses": [{"name": n, "controllerName": c, "accepted": c == G.CONTROLLER_NAME} for n, c in world.classes.items()],
            "proxies": {gw.key: [p.key for p in proxies(topo, gw.key)] for gw in world.served()},
        }

    def summary(self, topo: Topology) -> str:
        n = len(G.World.of(topo).served())
        return f"{n} Gateway{'s' * (n != 1)}"


def addresses(topo: Topology) -> dict[str, str | None]:
    """Gateway -> its Service's LoadBalancer IP."""
    out = {}
    keys = {s.key: s for s in topo.services}
    for d in topo.documents:
        if d.get("kind") == "Gateway":
            key = f"{(d['metadata'].get('namespace') or 'default')}/{d['metadata']['name']}"
            svc = keys.get(service_key(key))
            out[key] = svc.load_balancer_ip if svc else None
    return out


ADDON = GatewayNginx()
