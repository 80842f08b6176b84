#!/usr/bin/env python3
"""overlay: bgp against vxlan, on real labs of 3, 10 and 30 nodes (one pod each).

Measures, in the same run:
  - `up` of the lab with overlay bgp against the same lab with vxlan (the
    baseline: routes written by labctl, no daemon);
  - BGP convergence: from the first bird's start (its log's "Started") to `up`
    returning, which it does once every node has every other node's route;
  - withdrawal: a node's eth0 goes down; the time until another node no longer
    has its route (bounded by the 6 s hold time).

    sudo .venv/bin/python benchmarks/bench_bgp.py [SIZES...]

Goals (issue 13): 10 nodes converged within 2 s; `up` of a bgp lab at most 1.3x
a vxlan lab's. Results also go to benchmarks/results/bench_bgp.json.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labctl.state.store import LabDir  # noqa: E402

LAB = "benchbgp"
LABCTL = [sys.executable, "-m", "labctl"]


def lab_file(nodes: int, overlay: str) -> Path:
    docs = [
        {
            "apiVersion": "labctl/v1",
            "kind": "Lab",
            "metadata": {"name": LAB},
            "spec": {"overlay": overlay, "dns": False, "nodes": [{"name": f"n{i}"} for i in range(nodes)]},
        }
    ]
    for i in range(nodes):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"p{i}"},
                "spec": {"nodeName": f"n{i}", "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
            }
        )
    path = Path(f"/tmp/{LAB}-{overlay}-{nodes}.yaml")
    path.write_text("".join("---\n" + yaml.safe_dump(d) for d in docs))
    return path


def labctl(*args: str) -> None:
    subprocess.run(LABCTL + list(args), check=True, capture_output=True, cwd=REPO)


def timed_up(path: Path) -> tuple[float, float]:
    """(seconds, wall clock at the end)."""
    t0 = time.monotonic()
    labctl("up", str(path))
    return time.monotonic() - t0, time.time()


def first_start(nodes: int) -> float:
    """The earliest bird "Started" line of the lab's logs, as a wall-clock time."""
    logs = LabDir(LAB).path / "logs"
    out = []
    for i in range(nodes):
        for line in (logs / f"node_n{i}_bird.log").read_text().splitlines():
            if "<INFO> Started" in line:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
                out.append(stamp.timestamp())
                break
    return min(out)


def routes(ns: str) -> set[str]:
    p = subprocess.run(["ip", "-n", ns, "-j", "route", "show", "proto", "bird"], capture_output=True, text=True)
    return {r["dst"] for r in json.loads(p.stdout or "[]")}


def measure(nodes: int) -> dict:
    try:
        vxlan, _ = timed_up(lab_file(nodes, "vxlan"))
        labctl("down", LAB)
        bgp, ended = timed_up(lab_file(nodes, "bgp"))
        converged = ended - first_start(nodes)
        state = json.loads((LabDir(LAB).path / "state.json").read_text())
        cidr = next(n["pod_cidr"] for n in state["topology"]["lab"]["nodes"] if n["name"] == "n1")
        subprocess.run(["ip", "-n", f"{LAB}-n1", "link", "set", "eth0", "down"], check=True)
        t0 = time.monotonic()
        while cidr in routes(f"{LAB}-n0") and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        withdrawn = time.monotonic() - t0
    finally:
        subprocess.run(LABCTL + ["down", LAB], capture_output=True, cwd=REPO)
    return {"nodes": nodes, "up_vxlan_s": vxlan, "up_bgp_s": bgp, "converged_s": converged, "withdrawn_s": withdrawn}


def main() -> int:
    sizes = [int(x) for x in sys.argv[1:]] or [3, 10, 30]
    results = [measure(n) for n in sizes]
    print(f"{'nodes':>5} {'up bgp (s)':>11} {'up vxlan (s)':>13} {'ratio':>6} {'converged (s)':>14} {'withdrawn (s)':>14}")
    for r in results:
        print(
            f"{r['nodes']:>5} {r['up_bgp_s']:11.2f} {r['up_vxlan_s']:13.2f} {r['up_bgp_s'] / r['up_vxlan_s']:5.2f}x {r['converged_s']:14.2f} {r['withdrawn_s']:14.2f}"
            + ("   goal: converged < 2 s " + ("ok" if r["converged_s"] < 2 else "MISSED") if r["nodes"] == 10 else "")
        )
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "bench_bgp.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
