#!/usr/bin/env python3
"""EndpointSlices and same-zone routing: a Service with 1,000 endpoints over 10
nodes in 3 zones, against the same Service without hints (the baseline), in
the same run.

Measures:
  - slice computation (labctl.proxy.endpointslices.compute: 10 slices of 100,
    with the zone hints) against computing the Service's endpoints alone;
  - the rule change after one endpoint's readiness flips (`labctl ready POD
    false`, then true), on a real lab: with `trafficDistribution: PreferClose`
    every node's rules list its zone's endpoints; without, all of them.

    sudo .venv/bin/python benchmarks/bench_slices.py [--mode iptables|nftables]

Goal (issue 17): within 10% of the time without slices. Results also go to
benchmarks/results/bench_slices.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labctl.model.documents import parse_text  # noqa: E402
from labctl.model.load import build  # noqa: E402
from labctl.proxy import endpointslices  # noqa: E402
from labctl.proxy.endpoints import service_ports  # noqa: E402

LAB = "benchsl"
LABCTL = [sys.executable, "-m", "labctl"]
NODES, PODS, ZONES = 10, 1000, ("zone-a", "zone-b", "zone-c")


def text(hints: bool, mode: str) -> str:
    nodes = [{"name": f"n{i}", "labels": {"topology.kubernetes.io/zone": ZONES[i % 3]}} for i in range(NODES)]
    spec = {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"}}
    if hints:
        spec["trafficDistribution"] = "PreferClose"
    docs = [
        {"apiVersion": "labctl/v1", "kind": "Lab", "metadata": {"name": LAB}, "spec": {"proxyMode": mode, "dns": False, "nodes": nodes}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": PODS,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}},
            },
        },
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec},
    ]
    return "".join("---\n" + yaml.safe_dump(d) for d in docs)


def best(fn, n: int = 5) -> float:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def pure(mode: str) -> dict:
    plain = build(parse_text(text(False, mode), "plain.yaml"), "plain.yaml")
    hinted = build(parse_text(text(True, mode), "hinted.yaml"), "hinted.yaml")
    slices = endpointslices.compute(hinted)
    web = [s for s in slices if s["metadata"]["labels"].get("kubernetes.io/service-name") == "web"]
    assert [len(s["endpoints"]) for s in web] == [100] * 10 and all("hints" in e for s in web for e in s["endpoints"])
    return {
        "endpoints_s": best(lambda: service_ports(plain)),
        "endpoints_hinted_s": best(lambda: service_ports(hinted)),
        "slices_s": best(lambda: endpointslices.compute(hinted)),
    }


def labctl(*args: str) -> float:
    t0 = time.monotonic()
    subprocess.run(LABCTL + list(args), check=True, capture_output=True, cwd=REPO)
    return time.monotonic() - t0


def flips(hints: bool, mode: str, n: int = 5) -> float:
    """The median time of `labctl ready` flipping one endpoint, in a fresh lab."""
    path = Path(f"/tmp/{LAB}-{hints}.yaml")
    path.write_text(text(hints, mode))
    try:
        labctl("up", str(path))
        times = []
        for i in range(n):
            times.append(labctl("ready", "--lab", LAB, f"web-{i * 37}", "false"))
            times.append(labctl("ready", "--lab", LAB, f"web-{i * 37}", "true"))
        return statistics.median(times)
    finally:
        subprocess.run(LABCTL + ["down", LAB], capture_output=True, cwd=REPO)


def main() -> int:
    mode = sys.argv[sys.argv.index("--mode") + 1] if "--mode" in sys.argv else "iptables"
    p = pure(mode)
    baseline = flips(False, mode)
    zoned = flips(True, mode)
    r = {"mode": mode, **p, "ready_flip_plain_s": baseline, "ready_flip_zoned_s": zoned}
    print(f"1,000 endpoints, 10 nodes, 3 zones ({mode})")
    print(f"  endpoints, no hints          {p['endpoints_s'] * 1000:8.1f} ms   (baseline)")
    print(f"  endpoints with zone hints    {p['endpoints_hinted_s'] * 1000:8.1f} ms   {p['endpoints_hinted_s'] / p['endpoints_s']:.2f}x")
    print(f"  10 EndpointSlices with hints {p['slices_s'] * 1000:8.1f} ms   {p['slices_s'] / p['endpoints_s']:.2f}x")
    ratio = zoned / baseline
    print(f"  `ready` flip, no hints       {baseline * 1000:8.1f} ms   (baseline, median of 10)")
    print(f"  `ready` flip, PreferClose    {zoned * 1000:8.1f} ms   {ratio:.2f}x   goal <= 1.10x: {'ok' if ratio <= 1.10 else 'MISSED'}")
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "bench_slices.json").write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
