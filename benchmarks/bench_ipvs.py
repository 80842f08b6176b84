#!/usr/bin/env python3
"""IPVS mode at scale, in one run: labctl's incremental sync against a full
reprogramming and against the naive way (one `ipvsadm` exec per virtual and
real server). Needs IPVS: run it in the stock-kernel VM,

    sudo scripts/vm-test.sh --exec ".venv/bin/python benchmarks/bench_ipvs.py"

In a scratch namespace standing for one node:
  - full sync of N ClusterIP services with 5 endpoints each (render, ipsets,
    kube-ipvs0 addresses, the IPVS table through netlink);
  - a one-endpoint change in that node (partial sync: the changed service's
    real servers are read back and one is replaced);
  - the same change done as a full reprogramming (every virtual server read
    back and diffed), the baseline the partial sync must beat;
  - the naive way on a smaller count, per object.
Results also go to benchmarks/results/bench_ipvs.json. The VM emulates its
CPU (no KVM here): absolute times are several times those of a real machine,
ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_proxy import topology  # noqa: E402

from labctl.kernel import netns, run  # noqa: E402
from labctl.proxy import ipvs, ipvs_kernel  # noqa: E402
from labctl.proxy.endpoints import service_ports  # noqa: E402
from labctl.proxy.ipvs import apply_node  # noqa: E402
from labctl.proxy.sync import plan_node  # noqa: E402

NS = "labctl-bench-ipvs"


def fresh_namespace() -> None:
    netns.delete(NS)
    netns.create(NS)
    # real servers must be routable (IPVS refuses a masquerade destination it cannot reach)
    for argv in (
        ["link", "set", "lo", "up"],
        ["link", "add", "pods", "type", "dummy"],
        ["addr", "add", "10.128.0.1/9", "dev", "pods"],
        ["link", "set", "pods", "up"],
    ):
        subprocess.run(run.in_netns(NS, ["ip", *argv]), check=True)
    ipvs_kernel.require()


def sync(topo, record, full_read: bool = False):
    """What labctl's sync does for one node in IPVS mode; returns (seconds, record, netlink requests)."""
    topo = replace(topo, lab=replace(topo.lab, proxy_mode="ipvs"))
    t = time.perf_counter()
    s = plan_node(topo, "node1", record, None, lambda: service_ports(topo))
    requests = 0
    if s is not None:
        requests = apply_node(NS, s, full_read)
        record = {"mode": "ipvs", "services": s.services, **s.extra}
    return time.perf_counter() - t, record, requests


def naive(n: int) -> tuple[float, int]:
    fresh_namespace()
    want = ipvs.render(topology(n), "node1")
    cmds = []
    for vs in want.servers.values():
        cmds.append(["ipvsadm", "-A", "-t" if vs.proto == "tcp" else "-u", vs.address, "-s", vs.scheduler])
        for ip, port in vs.dests:
            cmds.append(["ipvsadm", "-a", "-t" if vs.proto == "tcp" else "-u", vs.address, "-r", f"{ip}:{port}", "-m", "-w", "1"])
    t = time.perf_counter()
    for argv in cmds:
        subprocess.run(run.in_netns(NS, argv), check=True)
    return time.perf_counter() - t, len(cmds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--naive", type=int, default=50, help="services for the naive run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_ipvs.py builds a namespace: run it as root", file=sys.stderr)
        return 3
    n = args.services
    try:
        naive_s, naive_ops = naive(args.naive)
        fresh_namespace()
        full_s, record, objects = sync(topology(n), None)
        part_s, _, part_changes = sync(topology(n, bump=n // 2), record)
        fresh_namespace()
        _, record, _ = sync(topology(n), None)
        reread_s, _, _ = sync(topology(n, bump=n // 2), record, full_read=True)
        count = subprocess.run(run.in_netns(NS, ["ipvsadm", "-Ln"]), capture_output=True, text=True).stdout.count("Masq")
    finally:
        netns.delete(NS)
    row = {
        "services": n,
        "objects": objects,
        "real_servers_in_kernel": count,
        "full_s": round(full_s, 3),
        "per_object_us": round(full_s / objects * 1e6, 1),
        "naive_per_object_us": round(naive_s / naive_ops * 1e6, 1),
        "naive_ratio": round((naive_s / naive_ops) / (full_s / objects), 1),
        "partial_ms": round(part_s * 1000, 1),
        "partial_changes": part_changes,
        "reread_ms": round(reread_s * 1000, 1),
        "partial_vs_reread": round(reread_s / part_s, 1),
    }
    print(f"IPVS, {n} services x 5 endpoints ({objects} virtual and real servers written, {count} real servers read back by ipvsadm)")
    print(f"  full sync          {full_s:8.2f} s    {row['per_object_us']:8.0f} us per virtual or real server")
    print(f"  naive (ipvsadm)    {row['naive_per_object_us']:8.0f} us per virtual or real server ({naive_ops} execs): {row['naive_ratio']:.0f}x slower")
    print(f"  one endpoint moved {row['partial_ms']:8.1f} ms   ({part_changes} netlink changes)")
    print(f"  same, reading every virtual server back {row['reread_ms']:8.1f} ms: the partial sync is {row['partial_vs_reread']:.1f}x faster")
    out = REPO / "benchmarks/results"
    out.mkdir(exist_ok=True)
    (out / "bench_ipvs.json").write_text(json.dumps(row, indent=2))
    ok = part_changes == 2 and count == 5 * n and row["naive_ratio"] > 1 and row["partial_vs_reread"] > 1
    print(f"checks: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
