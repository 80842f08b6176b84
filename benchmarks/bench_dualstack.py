#!/usr/bin/env python3
"""What dual-stack costs: the same lab and the same services in IPv4 and in
dual-stack (IPv4 and IPv6), measured in one run, IPv4 being the baseline.

  - `labctl up` and `labctl down` of a 20 x 10 lab (vxlan, iptables), IPv4 and
    dual-stack runs alternating, each build after the machine settled (see
    bench_up.py); the fastest of each compared (medians reported too);
  - the full service sync of 1,000 ClusterIP services with 5 endpoints each, in
    a scratch namespace standing for one node: IPv4 alone (iptables-restore)
    against dual-stack services (the IPv4 view's iptables-restore and the IPv6
    view's ip6tables-restore), render and kernel both.

    sudo .venv/bin/python benchmarks/bench_dualstack.py
    sudo .venv/bin/python benchmarks/bench_dualstack.py --repeat 5 --services 1000

Goals (issue 16): up at most 1.3x the IPv4 lab; the 1,000-service sync at most
2.2x the IPv4-only one. Results also go to benchmarks/results/bench_dualstack.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_up import check_built, labctl, settle, timed  # noqa: E402

from labctl import registry  # noqa: E402
from labctl.kernel import netns, run  # noqa: E402
from labctl.model import family  # noqa: E402
from labctl.model.objects import LabSpec, Node, Service, ServicePort, Topology  # noqa: E402
from labctl.proxy.endpoints import service_ports  # noqa: E402
from labctl.proxy.sync import plan_node  # noqa: E402

GOAL_UP = 1.3
GOAL_SYNC = 2.2
NS = "labctl-bench-dual"
DUAL = """  ipFamilies: [IPv4, IPv6]
  nodeNetwork: [10.10.0.0/16, "fd00:10:10::/64"]
  podNetwork: [10.244.0.0/16, "fd00:10:244::/48"]
  serviceNetwork: [10.96.0.0/16, "fd00:10:96::/112"]
"""
V4 = """  nodeNetwork: 10.10.0.0/16
  podNetwork: 10.244.0.0/16
  serviceNetwork: 10.96.0.0/16
"""


def lab_file(lab: str, nodes: int, ppn: int, dual: bool) -> str:
    node_list = "\n".join(f"    - name: n{i}" for i in range(nodes))
    pods = "".join(
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{n}-{k}}}\nspec: {{nodeName: n{n}, containers: [{{name: c}}]}}\n"
        for n in range(nodes)
        for k in range(ppn)
    )
    return f"""apiVersion: labctl/v1
kind: Lab
metadata: {{name: {lab}}}
spec:
{DUAL if dual else V4}  overlay: vxlan
  proxyMode: iptables
  dns: false
  nodes:
{node_list}
{pods}"""


def bench_up(size: str, repeat: int, tmp: Path) -> dict:
    nodes, ppn = (int(x) for x in size.split("x"))
    expected = 1 + nodes + nodes * ppn
    files = {}
    for name, dual in (("ipv4", False), ("dual", True)):
        files[name] = tmp / f"{name}.yaml"
        files[name].write_text(lab_file("bench", nodes, ppn, dual))
    rows: dict[str, list[float]] = {f"{k}_{w}": [] for k in files for w in ("up", "down")}
    try:
        for _ in range(repeat):
            for name, path in files.items():
                settle(expected)
                rows[f"{name}_up"].append(timed(lambda path=path: labctl("up", str(path))))
                check_built("bench", expected)
                rows[f"{name}_down"].append(timed(lambda: labctl("down", "bench")))
    finally:
        labctl("down", "bench")
    out = {k: {"best": round(min(v), 3), "median": round(statistics.median(v), 3)} for k, v in rows.items()}
    out["up_ratio"] = round(min(rows["dual_up"]) / min(rows["ipv4_up"]), 2)
    out["down_ratio"] = round(min(rows["dual_down"]) / min(rows["ipv4_down"]), 2)
    return out


def services(n: int, dual: bool) -> Topology:
    """n ClusterIP services, 5 endpoints each (static, as bench_proxy's); dual: both families."""
    fams = ("IPv4", "IPv6") if dual else ("IPv4",)
    node = Node(
        "node1", "10.10.20.10", "10.244.0.0/24", ips=("10.10.20.10", "fd00:10:20::a")[: len(fams)], pod_cidrs=("10.244.0.0/24", "fd00:10:244::/64")[: len(fams)]
    )
    spec = LabSpec(
        name="bench",
        service_network="10.96.0.0/12",
        nodes=(node,),
        ip_families=fams,
        node_networks=("10.10.20.0/24", "fd00:10:20::/64")[: len(fams)],
        pod_networks=("10.244.0.0/16", "fd00:10:244::/48")[: len(fams)],
        service_networks=("10.96.0.0/12", "fd00:10:96::/108")[: len(fams)],
    )
    v4, v6 = int(ipaddress.IPv4Address("10.96.0.11")), int(ipaddress.IPv6Address("fd00:10:96::b"))
    p4, p6 = int(ipaddress.IPv4Address("10.128.0.0")), int(ipaddress.IPv6Address("fd00:10:128::"))
    out = []
    for i in range(n):
        eps = [f"{ipaddress.IPv4Address(p4 + 5 * i + k)}:8080" for k in range(5)]
        ips = [str(ipaddress.IPv4Address(v4 + i))]
        if dual:
            eps += [f"[{ipaddress.IPv6Address(p6 + 5 * i + k)}]:8080" for k in range(5)]
            ips.append(str(ipaddress.IPv6Address(v6 + i)))
        out.append(
            Service(
                namespace="bench",
                name=f"svc-{i}",
                cluster_ip=ips[0],
                cluster_ips=tuple(ips),
                ip_families=fams,
                ip_family_policy="RequireDualStack" if dual else "SingleStack",
                ports=(ServicePort(port=80, name="http", target_port=8080),),
                static_endpoints=tuple(eps),
            )
        )
    return Topology(lab=spec, services=tuple(out))


def full_sync(topo: Topology) -> tuple[float, int]:
    """Every family's full sync of the node, as `labctl up` makes it: render, one restore each."""
    from labctl.kernel import nfacct
    from labctl.proxy.iptables import COUNTERS

    netns.delete(NS)
    netns.create(NS)
    if nfacct.supported():
        nfacct.ensure(NS, list(COUNTERS))  # what the mode makes before a node's first sync
    t = time.perf_counter()
    rules = 0
    for fam, view in family.views(topo):
        s = plan_node(view, "node1", None, None, lambda view=view: service_ports(view))
        run.apply_all([run.Transaction(NS, registry.proxy_mode("iptables").argv(True, fam == 6), s.text)])
        rules += s.rules
    return time.perf_counter() - t, rules


def bench_sync(n: int, repeat: int) -> dict:
    rows: dict[str, list[float]] = {"ipv4": [], "dual": []}
    counts = {}
    try:
        for _ in range(repeat):
            for name, dual in (("ipv4", False), ("dual", True)):
                seconds, counts[name] = full_sync(services(n, dual))
                rows[name].append(seconds)
    finally:
        netns.delete(NS)
    out = {k: {"best": round(min(v), 3), "median": round(statistics.median(v), 3), "rules": counts[k]} for k, v in rows.items()}
    out["ratio"] = round(min(rows["dual"]) / min(rows["ipv4"]), 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="20x10")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--services", type=int, default=1000)
    args = ap.parse_args()
    registry.proxy_mode("iptables").require(replace(LabSpec(name="bench")))
    with tempfile.TemporaryDirectory() as tmp:
        up = bench_up(args.size, args.repeat, Path(tmp))
    sync = bench_sync(args.services, args.repeat)
    print(f"labctl up {args.size}:   IPv4 {up['ipv4_up']['best']:.2f} s, dual-stack {up['dual_up']['best']:.2f} s: {up['up_ratio']:.2f}x (goal <= {GOAL_UP}x)")
    print(f"labctl down {args.size}: IPv4 {up['ipv4_down']['best']:.2f} s, dual-stack {up['dual_down']['best']:.2f} s: {up['down_ratio']:.2f}x")
    print(
        f"sync {args.services} services: IPv4 {sync['ipv4']['best'] * 1000:.0f} ms ({sync['ipv4']['rules']} rules), "
        f"dual-stack {sync['dual']['best'] * 1000:.0f} ms ({sync['dual']['rules']} rules): {sync['ratio']:.2f}x (goal <= {GOAL_SYNC}x)"
    )
    result = {"up": up, "sync": sync, "goals": {"up": GOAL_UP, "sync": GOAL_SYNC}}
    out = REPO / "benchmarks/results/bench_dualstack.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    ok = up["up_ratio"] <= GOAL_UP and sync["ratio"] <= GOAL_SYNC
    print("goals met" if ok else "a goal missed")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
