"""A pod's /etc/netns/<netns>/ files: resolv.conf and hosts, as kubelet writes
them into a pod. `ip netns exec` (hence `labctl exec` and container commands)
bind-mounts each file of that directory over the one of /etc.

The directory is journaled before it is made; `down` removes it (only paths
under /etc/netns/<lab>- are ever removed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from labctl import failpoints
from labctl.model import dns, names
from labctl.model.objects import Pod, Topology
from labctl.state.journal import Journal

ETC_NETNS = Path("/etc/netns")


def pod_dir(lab: str, pod: Pod) -> Path:
    return ETC_NETNS / names.pod_netns(lab, pod.namespace, pod.name)


def _host_resolv() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""


def write(journal: Journal, topo: Topology, pods: list[Pod], new: set[str]) -> None:
    """Write the files of `pods`; `new`: keys of pods whose directory is new (journaled first)."""
    if not pods:
        return
    lab = topo.lab.name
    journal.files(str(pod_dir(lab, p)) for p in pods if p.key in new)
    host = _host_resolv()
    for i, pod in enumerate(pods):
        failpoints.hit("files", i)
        d = pod_dir(lab, pod)
        d.mkdir(parents=True, exist_ok=True)
        _replace(d / "hosts", dns.hosts_file(topo, pod))
        resolv = dns.resolv_conf(topo, pod, host)
        if resolv is None:
            (d / "resolv.conf").unlink(missing_ok=True)
        else:
            _replace(d / "resolv.conf", resolv)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def remove(journal: Journal, lab: str, pods: list[Pod]) -> None:
    paths = [pod_dir(lab, p) for p in pods]
    for d in paths:
        shutil.rmtree(d, ignore_errors=True)
    journal.release_files(str(d) for d in paths)
