"""The ingress controller add-on at run time: real nginx in each controller pod.

Its objects (namespace ingress-nginx, the controller pods, their Service, the
IngressClass) are its model part (labctl.model.ingress). Here: after every
change the configuration is rendered (labctl.addons.ingress.nginx) into the
pod's /etc/netns/<pod>/nginx/nginx.conf (`ip netns exec` mounts that directory
over /etc/nginx, so `labctl exec ingress-nginx/ingress-nginx-controller-0 --
cat /etc/nginx/nginx.conf` shows it), checked with `nginx -t` before the running
proxy is touched, and nginx is told to reload (SIGHUP to its master, a recorded
process) only when the text changed. The change returns once every controller
serves the new configuration (its status port answers the new generation).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

from labctl.addons import nginxproc
from labctl.addons.base import AddOn
from labctl.addons.ingress import nginx
from labctl.model import ingress as I
from labctl.model import system
from labctl.model.objects import LabSpec, Pod, Topology


def controllers(topo: Topology) -> list[Pod]:
    return [p for p in topo.pods if system.is_controller(p)]


CERT_MANAGER_ANNOTATION = "cert-manager.io/cluster-issuer"


def certificates(labdir, topo: Topology, run_dir: Path) -> nginx.Tls:
    """Every host an Ingress of the class names in `tls`: the certificate of its Secret
    (written under the controller's runtime directory), or one issued from the lab's CA
    when the Ingress asks cert-manager's `labctl-ca` issuer, or (a Secret missing or
    unusable) the fake one; the older Ingress wins a host."""
    from labctl import pki

    root = labdir.path / "ca"
    fake = pki.fake(root)
    out = nginx.Tls(default=(str(fake.cert), str(fake.key)))
    secrets = I.tls_secrets(topo.documents)
    for ing in nginx.Renderer(topo, topo.lab.ingress.class_name).ingresses():
        for hosts, secret in ing.tls:
            hosts = tuple(h for h in hosts if h not in out.hosts)
            if not hosts:
                continue
            if ing.annotations.get(CERT_MANAGER_ANNOTATION) == pki.ISSUER:
                pair = pki.issue(root, topo.lab.name, list(hosts))
                why = f"issued by the lab's CA for {ing.key} ({CERT_MANAGER_ANNOTATION}: {pki.ISSUER})"
            elif secret and f"{ing.namespace}/{secret}" in secrets:
                crt, key = secrets[f"{ing.namespace}/{secret}"]
                problem = pki.usable(crt, key)
                if problem:
                    pair, why = fake, f"the fake certificate: Secret {ing.namespace}/{secret} {problem}"
                else:
                    d = run_dir / "certs"
                    d.mkdir(parents=True, exist_ok=True)
                    pair = pki.Pair(d / f"{ing.namespace}_{secret}.crt", d / f"{ing.namespace}_{secret}.key")
                    for path, data in ((pair.cert, crt), (pair.key, key)):
                        if not path.exists() or path.read_bytes() != data:
                            path.write_bytes(data)
                            os.chmod(path, 0o600)
                    why = f"Secret {ing.namespace}/{secret} of {ing.key}"
            else:
                pair, why = fake, f"the fake certificate: no Secret {ing.namespace}/{secret} for {ing.key}"
            why += f", sha1 {hashlib.sha1(pair.cert.read_bytes()).hexdigest()[:12]}"  # a new certificate changes the text: a reload
            for h in hosts:
                out.hosts[h] = (str(pair.cert), str(pair.key))
                out.why[h] = why
    return out


class IngressNginx(AddOn):
    name = "ingress"

    def require(self, spec: LabSpec) -> None:
        from labctl.kernel import run

        run.require("nginx", "nginx")
        run.require("openssl", "openssl")
        if not Path("/etc/nginx").is_dir():
            from labctl.errors import HostLacks

            raise HostLacks("/etc/nginx is missing (the controller pods' configuration is mounted over it)", hint="install the Debian package nginx")

    def prepare(self, labdir, topo: Topology) -> None:
        """The fake certificate, while the lab is built."""
        from labctl import pki

        pki.fake(labdir.path / "ca")

    def sync(self, labdir, journal, topo: Topology) -> Callable[[], None] | None:
        """Render, check and install each controller's nginx.conf; reload the running
        ones whose text changed. Returns what waits until every controller serves it."""
        configs = []
        for pod in controllers(topo):
            run_dir = nginxproc.runtime_dir(labdir, pod)
            configs.append((pod, nginx.render(topo, topo.lab.ingress.class_name, str(run_dir), certificates(labdir, topo, run_dir))))
        return nginxproc.install(journal, topo, configs, "the Ingresses")

    def status(self, topo: Topology) -> dict[str, Any] | None:
        spec = topo.lab.ingress
        s = topo.service(f"{I.NAMESPACE}/{I.CONTROLLER}")
        return {
            "className": spec.class_name,
            "service": s.key,
            "type": s.type,
            "address": s.load_balancer_ip,
            "nodePorts": {p.name: p.node_port for p in s.ports},
            "pods": [p.key for p in controllers(topo)],
        }

    def summary(self, topo: Topology) -> str:
        s = topo.service(f"{I.NAMESPACE}/{I.CONTROLLER}")
        return f"ingress controller at {s.load_balancer_ip or s.cluster_ip}"


ADDON = IngressNginx()
