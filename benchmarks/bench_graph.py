#!/usr/bin/env python3
"""labctl graph of a 50 x 20 lab (50 nodes, 1,000 pods, 20 Services), one run:
the DOT text (pure) and each Graphviz format, against the baseline of
`labctl status --json` for the same topology (reading the lab, no drawing),
measured in the same run. No lab is built: the picture is of the topology.

    .venv/bin/python benchmarks/bench_graph.py

Goal (issue 15): under 2 s. Results also go to benchmarks/results/bench_graph.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labctl.model.documents import parse_text  # noqa: E402
from labctl.model.load import build  # noqa: E402
from labctl.view import graph as G  # noqa: E402

NODES, PODS_PER_NODE, SERVICES = 50, 20, 20


def topology():
    docs = [
        {
            "apiVersion": "labctl/v1",
            "kind": "Lab",
            "metadata": {"name": "benchgr"},
            "spec": {"dns": False, "nodeNetwork": "10.10.0.0/16", "nodes": [{"name": f"n{i}"} for i in range(NODES)], "externals": [{"name": "client"}]},
        }
    ]
    for s in range(SERVICES):
        docs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"app{s}"},
                "spec": {
                    "replicas": NODES * PODS_PER_NODE // SERVICES,
                    "selector": {"matchLabels": {"app": f"app{s}"}},
                    "template": {"metadata": {"labels": {"app": f"app{s}"}}, "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}},
                },
            }
        )
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"app{s}"},
                "spec": {"selector": {"app": f"app{s}"}, "ports": [{"port": 80, "targetPort": 8080}]},
            }
        )
    text = "".join("---\n" + yaml.safe_dump(d) for d in docs)
    return build(parse_text(text, "bench.yaml"), "bench.yaml")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    topo = topology()
    assert len(topo.pods) == NODES * PODS_PER_NODE
    from labctl.status import services

    base, _ = timed(lambda: services(topo))
    t_dot, text = timed(lambda: G.dot(topo))
    t_mmd, _ = timed(lambda: G.mermaid(topo))
    results = {"pods": len(topo.pods), "baseline_services_s": base, "dot_text_s": t_dot, "mermaid_text_s": t_mmd}
    for fmt in ("svg", "png"):
        t, _ = timed(lambda fmt=fmt: subprocess.run(["dot", f"-T{fmt}"], input=text.encode(), capture_output=True, check=True))
        results[f"{fmt}_s"] = t_dot + t
    print(f"labctl graph, {NODES} nodes x {PODS_PER_NODE} pods, {SERVICES} Services")
    print(f"  baseline: the Services' endpoints for status   {base * 1000:8.1f} ms")
    print(f"  DOT text                                        {t_dot * 1000:8.1f} ms   {t_dot / base:.2f}x")
    print(f"  Mermaid text                                    {t_mmd * 1000:8.1f} ms   {t_mmd / base:.2f}x")
    for fmt in ("svg", "png"):
        t = results[f"{fmt}_s"]
        print(f"  {fmt} (DOT + Graphviz layout)                     {t * 1000:8.1f} ms   goal < 2 s: {'ok' if t < 2 else 'MISSED'}")
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "bench_graph.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
