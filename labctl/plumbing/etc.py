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
from labctl.model.objects import LabSpec, Pod, Topology
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


def external_resolv_conf(spec: LabSpec) -> str:
    """An external's resolv.conf. The host's name servers are out of the lab's reach:
    without one here, a program in the external would wait for the resolver's timeout
    at every lookup. The Lab's dnsUpstream (on port 53) is the one server it may
    have; without it no server is named and lookups fail at once (glibc then asks
    127.0.0.1, where nothing listens)."""
    lines = [f"# Written by labctl: external hosts of lab {spec.name} have no name server of the lab."]
    upstream = spec.dns_upstream
    if upstream:
        ip, port = dns.split_upstream(upstream)
        if port in ("", "53"):
            lines.append(f"nameserver {ip}")
    lines.append("options timeout:1 attempts:1")
    return "\n".join(lines) + "\n"


def write_externals(journal: Journal, spec: LabSpec, externals) -> None:
    """The resolv.conf of new externals (their directories journaled first)."""
    if not externals:
        return
    dirs = [ETC_NETNS / names.external_netns(spec.name, e.name) for e in externals]
    journal.files(str(d) for d in dirs)
    text = external_resolv_conf(spec)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        _replace(d / "resolv.conf", text)


def remove_externals(journal: Journal, lab: str, externals) -> None:
    paths = [ETC_NETNS / names.external_netns(lab, e.name) for e in externals]
    for d in paths:
        shutil.rmtree(d, ignore_errors=True)
    journal.release_files(str(d) for d in paths)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def remove(journal: Journal, lab: str, pods: list[Pod]) -> None:
    paths = [pod_dir(lab, p) for p in pods]
    for d in paths:
        shutil.rmtree(d, ignore_errors=True)
    journal.release_files(str(d) for d in paths)
