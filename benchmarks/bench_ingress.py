#!/usr/bin/env python3
"""L7 on real nginx at scale: 200 Ingresses (200 hosts), then 200 HTTPRoutes on one
Gateway (200 hostnames), over 20 backend pods.

Measures, on a real lab, for each of the two:
  - programming: `up` with the 200 routes (render, `nginx -t`, start or
    reload, served), against the same lab without them;
  - a one-route change (`apply` of a 201st route): from the start of the
    command to the first request that the new route answers, from a client
    probing all along;
  - throughput: HTTP/1.1 requests per second through the proxy (client ->
    LoadBalancer IP -> nginx -> pod), against the same requests straight to a
    pod's address in the same run (the baseline), one connection per request,
    for a bounded time.

    sudo .venv/bin/python benchmarks/bench_ingress.py

Goals (issue 12): a one-route change visible in under 300 ms. Results also go
to benchmarks/results/bench_ingress.json.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labctl import changes  # noqa: E402
from labctl.kernel import netns  # noqa: E402
from labctl.lab import LabHandle  # noqa: E402
from labctl.model.documents import parse_text  # noqa: E402

LAB = "benching"
INGRESSES, PODS = 200, 20
SECONDS = 3.0


def ingress(i: int) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": f"ing-{i}"},
        "spec": {
            "rules": [
                {
                    "host": f"host-{i}.example",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": f"svc-{i % PODS}", "port": {"number": 80}}}}]},
                }
            ]
        },
    }


def http_route(i: int) -> dict:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": f"route-{i}"},
        "spec": {
            "parentRefs": [{"name": "bench"}],
            "hostnames": [f"host-{i}.example"],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": f"svc-{i % PODS}", "port": 80}]}],
        },
    }


GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "Gateway",
    "metadata": {"name": "bench"},
    "spec": {"gatewayClassName": "nginx", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
}
ROUTE = {"ingress": ingress, "gateway": http_route}
PROXY = {"ingress": "ingress-nginx/ingress-nginx-controller", "gateway": "default/bench-nginx"}


def docs(n: int, kind: str) -> list[dict]:
    out: list[dict] = [
        {
            "apiVersion": "labctl/v1",
            "kind": "Lab",
            "metadata": {"name": LAB},
            "spec": {
                "dns": False,
                "loadBalancerPool": "10.10.20.200-10.10.20.210",
                **({"ingress": {}} if kind == "ingress" else {"gatewayAPI": True}),
                "nodes": [{"name": "node1"}, {"name": "node2"}],
                "externals": [{"name": "client"}],
            },
        }
    ]
    if kind == "gateway":
        out.append(GATEWAY)
    out.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"}, "spec": {"nodeName": "node1", "containers": [{"name": "c"}]}})
    for i in range(PODS):
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"web-{i}", "labels": {"app": f"web-{i}"}},
                "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
            }
        )
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"svc-{i}"},
                "spec": {"selector": {"app": f"web-{i}"}, "ports": [{"port": 80, "targetPort": 8080}]},
            }
        )
    out += [ROUTE[kind](i) for i in range(n)]
    return out


def up(handle: LabHandle, n: int, kind: str) -> float:
    text = "".join("---\n" + yaml.safe_dump(d) for d in docs(n, kind))
    t0 = time.monotonic()
    handle.change(changes.up(parse_text(text, "bench.yaml"), "bench.yaml"), create=True)
    return time.monotonic() - t0


def request(ns: str, ip: str, host: str, port: int = 80) -> int | None:
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(2.0)
        try:
            s.connect((ip, port))
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            return None
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def throughput(ns: str, ip: str, host: str, port: int) -> float:
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < SECONDS:
        if request(ns, ip, host, port) == 200:
            n += 1
    return n / (time.monotonic() - t0)


def measure(kind: str) -> dict:
    handle = LabHandle(LAB)
    client = f"{LAB}-client"
    try:
        base = up(handle, 0, kind)
        subprocess.run([sys.executable, "-m", "labctl", "down", LAB], capture_output=True, cwd=REPO)
        full = up(handle, INGRESSES, kind)
        topo = handle.applied()
        lb = topo.service(PROXY[kind]).load_balancer_ip
        assert request(client, lb, "host-7.example") == 200, "the routes serve"

        # a one-route change, seen by a client probing all along
        seen: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                if request(client, lb, f"host-{INGRESSES}.example") == 200:
                    seen.append(sent)
                    return

        watcher = threading.Thread(target=watch)
        text = yaml.safe_dump(ROUTE[kind](INGRESSES))
        watcher.start()
        t0 = time.monotonic()
        handle.change(changes.apply(parse_text(text, "one.yaml"), "one.yaml"))
        applied = time.monotonic() - t0
        watcher.join(timeout=10)
        stop.set()
        visible = seen[0] - t0 if seen else None

        inside = f"{LAB}-default.client"  # a pod: both measurements from inside the lab
        via = throughput(inside, lb, "host-3.example", 80)
        pod = topo.pod("default/web-3")
        direct = throughput(inside, pod.ip, "direct", 8080)
    finally:
        subprocess.run([sys.executable, "-m", "labctl", "down", LAB], capture_output=True, cwd=REPO)
    return {
        "routes": INGRESSES,
        "up_s": full,
        "up_without_s": base,
        "apply_ms": applied * 1000,
        "visible_ms": visible and visible * 1000,
        "rps_via": via,
        "rps_direct": direct,
    }


def main() -> int:
    results = {kind: measure(kind) for kind in ("ingress", "gateway")}
    print(f"{'what':48} {'labctl':>10} {'baseline':>10} {'ratio':>7}")
    for kind, r in results.items():
        what, whats = ("Ingress", "Ingresses") if kind == "ingress" else ("HTTPRoute", "HTTPRoutes")
        visible = r["visible_ms"]
        print(
            f"{f'up: the lab with 200 {whats} (s)':48} {r['up_s']:10.3f} {r['up_without_s']:10.3f} {r['up_s'] / r['up_without_s']:6.2f}x   (baseline: the lab without them)"
        )
        print(f"{f'apply one {what}: command done (ms)':48} {r['apply_ms']:10.1f}")
        print(
            f"{f'apply one {what}: first answer (ms)':48} {(visible or float('nan')):10.1f}{'':10}         goal < 300 ms: {'ok' if visible is not None and visible < 300 else 'MISSED'}"
        )
        print(
            f"{f'requests/s through the {kind} proxy':48} {r['rps_via']:10.0f} {r['rps_direct']:10.0f} {r['rps_via'] / r['rps_direct']:6.2f}x   (baseline: straight to the pod)"
        )
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "bench_ingress.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
