"""Real nginx in a lab's pods, for the add-ons that run it (the ingress
controller, each Gateway's proxy): where a pod's configuration lives, checking it
with `nginx -t`, reloading the running master only when the text changed, and
waiting until the new configuration is served.

A pod's nginx.conf is /etc/netns/<pod>/nginx/nginx.conf (`ip netns exec` mounts
that directory over /etc/nginx, so `labctl exec POD -- cat /etc/nginx/nginx.conf`
shows it); its pid file and temporary files are under the lab's directory. Each
rendered configuration carries a status server on 127.0.0.1:10246 answering its
generation: the reload is served when that answer is the new one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

from labctl import failpoints
from labctl.errors import LabError
from labctl.model import names
from labctl.model.objects import Pod, Topology

RELOAD_TIMEOUT = 10.0
STATUS_PORT = 10246
GENERATION_PATH = "/configuration/generation"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def conf_dir(lab: str, pod: Pod) -> Path:
    from labctl.plumbing.etc import pod_dir

    return pod_dir(lab, pod) / "nginx"


def runtime_dir(labdir, pod: Pod, what: str = "ingress") -> Path:
    """The pod's pid file and temporary files (made here)."""
    d = labdir.path / what / (pod.name if what == "ingress" else f"{pod.namespace}_{pod.name}")
    for sub in ("", *TEMP_DIRS):
        (d / sub).mkdir(parents=True, exist_ok=True)
    return d


def generation(conf: str) -> str:
    m = re.search(r'return 200 "([0-9a-f]+)\\n";', conf)
    return m.group(1) if m else ""


def check(conf: Path, what: str) -> None:
    """`nginx -t` on a configuration before it replaces the running one."""
    p = subprocess.run(["nginx", "-t", "-q", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True)
    if p.returncode != 0:
        raise LabError(f"nginx refused the configuration rendered for {what}:\n{p.stderr.strip()}", hint=f"see {conf}")


def generation_served(ns: str) -> str | None:
    from labctl.kernel import netns

    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", STATUS_PORT))
            s.sendall(f"GET {GENERATION_PATH} HTTP/1.0\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            return None
    return data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip() or None


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def install(journal, topo: Topology, configs: list[tuple[Pod, str]], what: str) -> Callable[[], None] | None:
    """Check and install each pod's nginx.conf; signal the running nginx whose text
    changed. Returns what waits until every pod serves its configuration."""
    from labctl.kernel import procs

    lab = topo.lab.name
    owned = journal.replay().procs
    wanted: list[tuple[str, str]] = []
    old_workers: set[int] = set()
    for pod, conf in configs:
        d = conf_dir(lab, pod)
        d.mkdir(parents=True, exist_ok=True)
        path = d / "nginx.conf"
        old = path.read_text() if path.exists() else None
        ns = names.pod_netns(lab, pod.namespace, pod.name)
        gen = generation(conf)
        if conf != old:
            new = d / "nginx.conf.new"
            new.write_text(conf)
            check(new, what)
            os.replace(new, path)
            failpoints.hit("ingress-config")
        rec = owned.get(names.command_key(pod.key, pod.containers[0].name))
        running = procs.record_alive(rec)
        # a reload when the text changed, or when nginx serves another text than the file's
        # (a run killed between writing the file and signalling nginx)
        if running and (conf != old or generation_served(ns) != gen):
            old_workers |= _children(rec["pid"])
            os.kill(rec["pid"], signal.SIGHUP)  # nginx's master re-reads it and replaces its workers
        wanted.append((ns, gen))

    def served() -> None:
        """The new generation answers, and the old workers (which may still accept a
        connection or two until they see the master's QUIT) are gone."""
        deadline = time.monotonic() + RELOAD_TIMEOUT
        for ns, gen in wanted:
            while (now := generation_served(ns)) != gen:
                if time.monotonic() > deadline:
                    raise LabError(f"nginx in {ns} does not serve its new configuration (it serves {now!r})")
                time.sleep(0.02)
        while any(os.path.exists(f"/proc/{pid}") for pid in old_workers):
            if time.monotonic() > deadline:
                raise LabError("nginx's old workers did not exit after its reload")
            time.sleep(0.02)

    return served if wanted else None
