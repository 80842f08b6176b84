"""What tests share: building topology files, running the CLI, naming test labs,
finding a lab's processes from outside."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from labctl.model.documents import parse_text
from labctl.model.errors import InvalidInput
from labctl.model.load import build

REPO = Path(__file__).resolve().parent.parent
TEST_PREFIX = "lt"


def labctl_cmd() -> list[str]:
    return [sys.executable, "-m", "labctl"]


def run_labctl(*args: str, check: bool = True, input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(labctl_cmd() + list(args), capture_output=True, text=True, input=input, env=env, cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"labctl {' '.join(args)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def new_lab_name() -> str:
    return TEST_PREFIX + secrets.token_hex(3)[:5]


def ours(name: str) -> bool:
    return name.startswith(TEST_PREFIX) and len(name) > 7 and name[7] == "-"


def lab_doc(name: str = "t", **spec: Any) -> dict:
    """A Lab document. Without the cluster DNS unless asked (`dns=True`): it has
    its own tests, and the others count pods, addresses and rules."""
    spec.setdefault("nodes", [{"name": "node1"}, {"name": "node2"}])
    spec.setdefault("dns", False)
    return {"apiVersion": "labctl/v1", "kind": "Lab", "metadata": {"name": name}, "spec": spec}


def pod(name: str, namespace: str = "default", ports=(8080,), node: str | None = None, labels=None, udp=(), command=None) -> dict:
    container: dict[str, Any] = {"name": "c", "ports": [{"containerPort": p} for p in ports] + [{"containerPort": p, "protocol": "UDP"} for p in udp]}
    if command:
        container["command"] = list(command)
    spec: dict[str, Any] = {"containers": [container]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}}, "spec": spec}


def namespace(name: str, labels=None) -> dict:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def deployment(name: str, replicas: int, namespace: str = "default", ports=(8080,), labels=None) -> dict:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "ports": [{"containerPort": p} for p in ports]}]}},
        },
    }


def dump(*docs: dict) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def text(s: str) -> str:
    return textwrap.dedent(s).lstrip()


def lab_processes(lab: str) -> list[int]:
    """Processes of a lab as a test sees them from outside: any whose command line
    names the lab's state directory (the responder) or that runs in one of the
    lab's namespaces."""
    import os

    from labctl.kernel import netns, procs
    from labctl.state.store import STATE_ROOT

    needle = f"{STATE_ROOT}/{lab}".encode()
    out = set()
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if needle in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0"):
                out.add(pid)
        except OSError:
            continue
    inodes = {netns.inode(n) for n in netns.listed() if n.startswith(lab + "-")} - {None}
    out |= set(procs.in_namespaces(inodes))
    return sorted(p for p in out if p != os.getpid() and procs.alive(p))


def leftovers(lab) -> dict:
    """What a lab left behind: its namespaces, processes, records, /etc/netns files and BPF pins."""
    from pathlib import Path

    from labctl.kernel import netns
    from labctl.state.store import LabDir

    return {
        "namespaces": [n for n in netns.listed() if n.startswith(lab.name + "-")],
        "processes": lab_processes(lab.name),
        "records": LabDir(lab.name).exists(),
        "files": [str(f) for f in Path("/etc/netns").glob(f"{lab.name}-*")]
        + [str(p) for p in Path("/sys/fs/bpf/labctl").glob(lab.name)],  # and the ebpf mode's pins
    }


# -- topologies built in-process (unit tests) ---------------------------------------


def load(s: str, previous=None):
    return build(parse_text(s, "t.yaml"), "t.yaml", previous)


def problems(s: str) -> list[str]:
    with pytest.raises(InvalidInput) as e:
        load(s)
    assert e.value.exit_code == 2
    return [str(p) for p in e.value.problems]


def one(s: str) -> str:
    found = problems(s)
    assert len(found) == 1, found
    return found[0]


def svc(name, selector=None, ports=((80, 8080),), namespace="default", **spec):
    body = {"ports": [{"port": p, "targetPort": t, **({"name": f"p{p}"} if len(ports) > 1 else {})} for p, t in ports]}
    if selector is not None:
        body["selector"] = selector
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": body}


def web_pod(name, node, port=8080, labels=None):
    p = pod(name, node=node, ports=(port,), labels=labels or {"app": "web"})
    p["spec"]["containers"][0]["ports"][0]["name"] = "http"
    return p


def topo_with(*services, pods=None, **lab):
    pods = pods if pods is not None else [web_pod("a", "node1"), web_pod("b", "node2")]
    return load(dump(lab_doc(**lab), *pods, *services))


CONFORMANCE = (REPO / "topologies/netpol-conformance.yaml").read_text()


PODS = [f"{ns}/{p}" for ns in "xyz" for p in "abc"]


def conformance_lab(*policies: dict):
    text = CONFORMANCE + "".join("---\n" + yaml.safe_dump(p) for p in policies)
    return build(parse_text(text, "t.yaml"), "t.yaml")


def np(name: str, ns: str = "x", **spec) -> dict:
    spec.setdefault("podSelector", {})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec}
