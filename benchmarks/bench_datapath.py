#!/usr/bin/env python3
"""Throughput through a ClusterIP, per proxy mode, in one run: iperf3 (bounded: 3 s,
one stream) from a pod on node1 to a pod on node2 through the Service's
ClusterIP, across VXLAN, and to a pod on the same node; the baseline is
iptables mode measured in the same run, the modes interleaved round by round.

    sudo .venv/bin/python benchmarks/bench_datapath.py [--modes iptables,ebpf] [--seconds 3]

Goal (issue 14): the ebpf mode at least as fast as iptables mode. Results also
go to benchmarks/results/bench_datapath.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
LABCTL = [str(REPO / ".venv" / "bin" / "labctl")]
LAB = "benchdp"


def topology(mode: str) -> str:
    docs = [
        {
            "apiVersion": "labctl/v1",
            "kind": "Lab",
            "metadata": {"name": LAB},
            "spec": {"dns": False, "proxyMode": mode, "nodes": [{"name": "node1"}, {"name": "node2"}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "far", "labels": {"app": "far"}},
            "spec": {"nodeName": "node2", "containers": [{"name": "c", "command": ["iperf3", "-s", "-p", "5201"], "ports": [{"containerPort": 5201}]}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "near", "labels": {"app": "near"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "command": ["iperf3", "-s", "-p", "5201"], "ports": [{"containerPort": 5201}]}]},
        },
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"}, "spec": {"nodeName": "node1", "containers": [{"name": "c"}]}},
    ]
    for name in ("far", "near"):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"port": 5201, "targetPort": 5201}]},
            }
        )
    return "".join("---\n" + yaml.safe_dump(d) for d in docs)


def listening(ns: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while "5201" not in subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltn"], capture_output=True, text=True).stdout:
        if time.monotonic() > deadline:
            raise SystemExit(f"iperf3 did not start listening in {ns}")
        time.sleep(0.05)


def gbits(vip: str, seconds: int) -> float:
    p = subprocess.run(
        ["ip", "netns", "exec", f"{LAB}-default.client", "iperf3", "-c", vip, "-p", "5201", "-t", str(seconds), "-J"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="iptables,ebpf")
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    modes = args.modes.split(",")
    runs: dict[str, dict[str, list[float]]] = {m: {"across VXLAN": [], "same node": []} for m in modes}
    try:
        for _ in range(args.rounds):  # modes interleaved (the lab switched in place): the machine's drift hits all alike
            for mode in modes:
                with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                    f.write(topology(mode))
                    f.flush()
                    subprocess.run([*LABCTL, "up", f.name], check=True, capture_output=True)
                status = json.loads(subprocess.run([*LABCTL, "status", "--lab", LAB, "--json"], check=True, capture_output=True, text=True).stdout)
                vips = {s["name"]: s["clusterIP"] for s in status["services"]}
                for pod in ("far", "near"):
                    listening(f"{LAB}-default.{pod}")
                runs[mode]["across VXLAN"].append(gbits(vips["far"], args.seconds))
                runs[mode]["same node"].append(gbits(vips["near"], args.seconds))
    finally:
        subprocess.run([*LABCTL, "down", LAB], capture_output=True)
    results = {m: {path: statistics.median(v) for path, v in r.items()} for m, r in runs.items()}
    base = results.get("iptables")
    print(f"iperf3 through a ClusterIP, one stream, {args.seconds} s, median of {args.rounds} interleaved rounds (Gbit/s; ratio against iptables mode)")
    for mode, r in results.items():
        cells = "   ".join(f"{path} {v:6.2f}" + (f" ({v / base[path]:.2f}x)" if base else "") for path, v in r.items())
        print(f"  {mode:<9} {cells}")
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "bench_datapath.json").write_text(json.dumps({"median": results, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
