"""Building topology files for tests."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


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
