#!/usr/bin/env python3
"""Service rules at scale: labctl's sync against the naive way, in one run.

For each proxy mode, in a scratch namespace standing for one node:
  - full sync of 1,000 and 10,000 ClusterIP services with 5 endpoints each
    (render + one iptables-restore / nft -f transaction);
  - a one-service change in the 10,000-service node (partial sync);
  - the naive way, one `iptables -A` / `nft add rule` exec per rule, on a
    smaller count, reported per rule and compared per rule with the full sync.

    sudo .venv/bin/python benchmarks/bench_proxy.py
    sudo .venv/bin/python benchmarks/bench_proxy.py --sizes 1000 --naive 100

Goals (issue #3): 10,000 services in under 5 s in either mode; a one-service
change in a 10,000-service node under 200 ms; at least 50x faster per rule
than the naive way. "floor" is the smallest transaction there is (one new
chain with one rule) on the 10,000-service node: what any change costs in
the tool and the kernel before labctl's own work. Results also go to benchmarks/results/bench_proxy.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labctl import registry  # noqa: E402
from labctl.kernel import netns, run  # noqa: E402
from labctl.model.objects import LabSpec, Node, Service, ServicePort, Topology  # noqa: E402
from labctl.proxy import iptables, nftables  # noqa: E402
from labctl.proxy.endpoints import affected_services, service_ports  # noqa: E402
from labctl.proxy.sync import plan_node  # noqa: E402

NS = "labctl-bench-proxy"
GOAL_FULL_S = 5.0
GOAL_PARTIAL_MS = 200.0
GOAL_NAIVE_RATIO = 50.0


def topology(n: int, bump: int | None = None) -> Topology:
    """n ClusterIP services, 5 endpoints each; `bump` moves one endpoint of that service."""
    spec = LabSpec(name="bench", service_network="10.96.0.0/12", nodes=(Node("node1", "10.10.20.10", "10.244.0.0/24"),))
    base = int(ipaddress.IPv4Address("10.96.0.11"))
    pod = int(ipaddress.IPv4Address("10.128.0.0"))
    services = []
    for i in range(n):
        eps = [f"{ipaddress.IPv4Address(pod + 5 * i + k)}:8080" for k in range(5)]
        if i == bump:
            eps[-1] = f"{ipaddress.IPv4Address(pod + 5 * n + 1)}:8080"
        services.append(
            Service(
                namespace="bench",
                name=f"svc-{i}",
                cluster_ip=str(ipaddress.IPv4Address(base + i)),
                ports=(ServicePort(port=80, name="http", target_port=8080),),
                static_endpoints=tuple(eps),
            )
        )
    return Topology(lab=spec, services=tuple(services))


def fresh_namespace() -> None:
    netns.delete(NS)
    netns.create(NS)


BPF_LAB = "labctl-bench"  # the ebpf mode's pins for the bench node: /sys/fs/bpf/labctl/labctl-bench/node1


def bpf_fresh() -> None:
    from labctl.kernel import bpf

    bpf.unpin_lab(BPF_LAB)
    bpf.mount()
    bpf.load(BPF_LAB, "node1")


def sync(mode: str, topo: Topology, record, previous: Topology | None = None):
    """What labctl does for one node: find the services that differ from `previous`
    (the lab's state; without it, fingerprint every service port), render what changed,
    one transaction. Returns (total seconds, seconds in iptables-restore / nft, new
    record, rules written)."""
    topo = replace(topo, lab=replace(topo.lab, proxy_mode=mode))
    t = time.perf_counter()
    scope = affected_services(replace(previous, lab=topo.lab), topo) if previous is not None else None
    scoped = service_ports(topo, only=scope) if scope is not None else None
    ns = plan_node(topo, "node1", record, scope, lambda: service_ports(topo), (lambda: scoped) if scoped is not None else None)
    tool = 0.0
    if ns is not None:
        t_tool = time.perf_counter()
        if mode == "ebpf":  # map entries, a batch syscall per map (the programs are loaded once per node)
            from labctl.proxy.ebpf import write

            write(BPF_LAB, "node1", ns.state)
        else:
            run.apply_all([run.Transaction(NS, registry.proxy_mode(mode).argv(ns.full), ns.text)])
        tool = time.perf_counter() - t_tool
    total = time.perf_counter() - t
    rec = {"mode": mode, "services": ns.services, **ns.extra} if ns else record
    return total, tool, rec, (ns.rules if ns else 0)


FLOOR = {  # the smallest change a sync can make: one new chain with one rule, one transaction
    "iptables": (["iptables-restore", "--noflush"], "*nat\n:LABCTL-BENCH-FLOOR - [0:0]\n-A LABCTL-BENCH-FLOOR -j RETURN\nCOMMIT\n"),
    "nftables": (["nft", "-f", "-"], f"add chain {nftables.TABLE} labctl-bench-floor\nadd rule {nftables.TABLE} labctl-bench-floor return\n"),
}


def floor(mode: str) -> float:
    """The tool's and the kernel's fixed cost of any transaction on the node as it is
    (the table's cache read back, the whole table validated on commit; for the ebpf
    mode, one entry written by a batch syscall)."""
    if mode == "ebpf":
        from labctl.kernel import bpf

        t = time.perf_counter()
        bpf.update(bpf.node_dir(BPF_LAB, "node1") / "lb4_revnat", {b"\xff\xff": bytes([10, 0, 0, 1, 0, 80, 0, 0])})
        return time.perf_counter() - t
    argv, text = FLOOR[mode]
    t = time.perf_counter()
    run.apply_all([run.Transaction(NS, argv, text)])
    return time.perf_counter() - t


def naive(mode: str, n: int) -> tuple[float, int]:
    """One exec per rule, as a shell script calling iptables / nft would."""
    fresh_namespace()
    topo = topology(n)
    infos = service_ports(topo)
    cmds: list[list[str]] = []
    if mode == "ebpf":  # one bpftool exec per map entry
        from labctl.proxy import bpfmaps

        bpf_fresh()
        lines = bpfmaps.render(infos, "node1", "10.10.20.10").lines(f"/sys/fs/bpf/labctl/{BPF_LAB}/node1", limit=10**9)
        t = time.perf_counter()
        for line in lines:
            subprocess.run(["bpftool", *line.split()], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t, len(lines)
    if mode == "iptables":
        rs = iptables.render(topo, "node1", infos)
        for table, chains in rs.tables.items():
            for chain in chains:
                cmds.append(["iptables", "-t", table, "-N", chain])
            for rules in chains.values():
                for r in rules:
                    cmds.append(["iptables", "-t", table] + _split(r))
    else:
        subprocess.run(["ip", "netns", "exec", NS, "nft", "-f", "-"], input=nftables.full(nftables.NftRules(), "10.96.0.0/12"), text=True, check=True)
        r = nftables.render(topo, "node1", infos)
        for chain in r.chains:
            cmds.append(["nft", "add", "chain", "ip", "kube-proxy", chain])
        for chain, rules in r.chains.items():
            for rule in rules:
                cmds.append(["nft", "add", "rule", "ip", "kube-proxy", chain] + rule.split())
        for name, elements in r.maps.items():
            for key, value in elements.items():
                elem = f"{{ {key} : {value} }}" if nftables.MAPS[name][0] == "map" else f"{{ {key} }}"
                cmds.append(["nft", "add", "element", "ip", "kube-proxy", name, elem])
    t = time.perf_counter()
    for argv in cmds:
        subprocess.run(run.in_netns(NS, argv), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t, len(cmds)


def _split(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--naive", type=int, default=100, help="services for the naive run")
    ap.add_argument("--modes", default="iptables,nftables,ebpf")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_proxy.py builds a namespace: run it as root", file=sys.stderr)
        return 3
    sizes = [int(x) for x in args.sizes.split(",")]
    results, ok = [], True
    try:
        for mode in args.modes.split(","):
            naive_s, naive_rules = naive(mode, args.naive)
            per_naive = naive_s / naive_rules
            for n in sizes:
                fresh_namespace()
                if mode == "ebpf":
                    bpf_fresh()
                full_s, tool_s, record, rules = sync(mode, topology(n), None)
                row = {"mode": mode, "services": n, "rules": rules, "full_s": round(full_s, 3), "full_tool_s": round(tool_s, 3)}
                row["per_rule_us"] = round(full_s / rules * 1e6, 2)
                row["naive_per_rule_us"] = round(per_naive * 1e6, 1)
                row["naive_ratio"] = round(per_naive / (full_s / rules), 1)
                if n == max(sizes):
                    part_s, part_tool, _, _ = sync(mode, topology(n, bump=n // 2), record, previous=topology(n))
                    row["partial_ms"] = round(part_s * 1000, 1)
                    row["partial_tool_ms"] = round(part_tool * 1000, 1)
                    row["floor_ms"] = round(floor(mode) * 1000, 1)
                results.append(row)
    finally:
        netns.delete(NS)
        from labctl.kernel import bpf

        bpf.unpin_lab(BPF_LAB)
    print(
        f"{'mode':>9} {'services':>9} {'rules':>8} {'full sync':>10} {'(tool)':>8} {'per rule':>10} {'naive/rule':>11} {'speed-up':>9} {'1-svc change':>13} {'(tool)':>8} {'floor':>8}"
    )
    for r in results:
        part = f"{r['partial_ms']:.0f} ms" if "partial_ms" in r else ""
        part_tool = f"{r['partial_tool_ms']:.0f} ms" if "partial_tool_ms" in r else ""
        fl = f"{r['floor_ms']:.0f} ms" if "floor_ms" in r else ""
        print(
            f"{r['mode']:>9} {r['services']:>9} {r['rules']:>8} {r['full_s']:>9.2f}s {r['full_tool_s']:>7.2f}s {r['per_rule_us']:>8.1f}us "
            f"{r['naive_per_rule_us']:>9.0f}us {r['naive_ratio']:>8.0f}x {part:>13} {part_tool:>8} {fl:>8}"
        )
        if r["services"] == 10000:
            ok &= r["full_s"] < GOAL_FULL_S and r.get("partial_ms", 0) < GOAL_PARTIAL_MS
        ok &= r["naive_ratio"] >= GOAL_NAIVE_RATIO
    print(f"goals: 10,000 services < {GOAL_FULL_S:g} s, one change < {GOAL_PARTIAL_MS:g} ms, >= {GOAL_NAIVE_RATIO:g}x per rule: {'ok' if ok else 'MISSED'}")
    out = REPO / "benchmarks/results"
    out.mkdir(exist_ok=True)
    (out / "bench_proxy.json").write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
