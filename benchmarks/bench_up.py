#!/usr/bin/env python3
"""Time `labctl up` and `labctl down` against a floor measured in the same run.

The floor builds the same kernel objects with iproute2 batch files and no
logic at all: the same namespaces, veths, bridges, VXLAN devices, addresses,
routes, neighbour and FDB entries, one `ip -batch` / `bridge -batch` file per
namespace, run one after the other as a shell script would. labctl does more
(sysctls, flannel's iptables rules, the responder, its journal and state) and
is timed as a user runs it: the CLI, Python start-up included.

    sudo .venv/bin/python benchmarks/bench_up.py                 # demo, 20x10, 50x20
    sudo .venv/bin/python benchmarks/bench_up.py --sizes 20x10 --repeat 5
    sudo .venv/bin/python benchmarks/bench_up.py --proxy-mode ebpf  # the labs in another proxy mode

Each size runs floor and labctl alternately, --repeat times, and compares the
fastest run of each (medians are reported too). The kernel frees a deleted
namespace asynchronously, and a build that overlaps that teardown is slowed by
it: before every timed build the script waits until the machine is quiet (its
CPUs 90% idle over a quarter of a second), the teardown of earlier runs done. Results are also written to
benchmarks/results/bench_up.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labctl.model import ipam, names  # noqa: E402

LABCTL = [str(REPO / ".venv/bin/labctl")]
GOALS = {"20x10": 1.2, "50x20": 0.8}
DEMO_GOAL_S = 0.3
SETTLE_TIMEOUT_S = 120.0


def topology(lab: str, nodes: int, pods_per_node: int, proxy_mode: str = "iptables") -> str:
    node_list = "\n".join(f"    - name: n{i}" for i in range(nodes))
    return f"""apiVersion: labctl/v1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodeNetwork: 10.10.0.0/16
  podNetwork: 10.244.0.0/16
  serviceNetwork: 10.96.0.0/16
  overlay: vxlan
  proxyMode: {proxy_mode}
  dns: false          # the floor makes no DNS pod: compare like with like (the demo row has it)
  nodes:
{node_list}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: {nodes * pods_per_node}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, ports: [{{containerPort: 8080}}]}}]
"""


# -- the floor ----------------------------------------------------------------------


def floor_plan(lab: str, nodes: int, ppn: int) -> list[tuple[list[str], str]]:
    """(command, batch text) pairs that build what labctl builds, with no logic."""
    sw = names.underlay_netns(lab)
    node_net = ipaddress.ip_network("10.10.0.0/16")
    node_ips = [str(node_net.network_address + 10 + i) for i in range(nodes)]
    cidrs = [f"10.244.{i}.0/24" for i in range(nodes)]
    node_ns = [names.node_netns(lab, f"n{i}") for i in range(nodes)]
    pod_ns = [[names.pod_netns(lab, "default", f"web-{i * ppn + j}") for j in range(ppn)] for i in range(nodes)]
    macs = [names.vtep_mac(lab, f"n{i}") for i in range(nodes)]

    plan = [(["ip", "-batch", "-"], "\n".join([f"netns add {sw}"] + [f"netns add {n}" for n in node_ns] + [f"netns add {p}" for ps in pod_ns for p in ps]))]
    links = []
    for i, n in enumerate(node_ns):
        links.append(f"link add n{i} netns {sw} type veth peer name eth0 netns {n}")
        for j, p in enumerate(pod_ns[i]):
            ip = ipam.gateway(cidrs[i]).rsplit(".", 1)[0] + f".{j + 2}"
            links.append(f"link add veth{j} netns {n} mtu 1450 type veth peer name eth0 netns {p} mtu 1450 address {ipam.mac_for_ip(ip)}")
    plan.append((["ip", "-batch", "-"], "\n".join(links)))
    plan.append(
        (["ip", "-n", sw, "-batch", "-"], "\n".join(["link add br0 type bridge", "link set br0 up"] + [f"link set n{i} master br0 up" for i in range(nodes)]))
    )
    for i, n in enumerate(node_ns):
        b = [
            "link set lo up",
            f"addr add {node_ips[i]}/16 dev eth0",
            "link set eth0 up",
            "link add cni0 mtu 1450 type bridge",
            f"addr add {ipam.gateway(cidrs[i])}/24 dev cni0",
            "link set cni0 up",
            f"link add flannel.1 address {macs[i]} mtu 1450 type vxlan id 1 local {node_ips[i]} dev eth0 dstport 8472 nolearning",
            f"addr add {ipam.vtep_address(cidrs[i])}/32 dev flannel.1",
            "link set flannel.1 up",
        ]
        for j in range(ppn):
            b += [f"link set veth{j} master cni0 up", f"link set veth{j} type bridge_slave hairpin on"]
        for k in range(nodes):
            if k != i:
                b.append(f"neigh replace {ipam.vtep_address(cidrs[k])} lladdr {macs[k]} dev flannel.1 nud permanent")
                b.append(f"route replace {cidrs[k]} via {ipam.vtep_address(cidrs[k])} dev flannel.1 onlink")
        plan.append((["ip", "-n", n, "-batch", "-"], "\n".join(b)))
        fdb = [f"fdb replace {macs[k]} dev flannel.1 dst {node_ips[k]} self permanent" for k in range(nodes) if k != i]
        if fdb:
            plan.append((["bridge", "-n", n, "-batch", "-"], "\n".join(fdb)))
    for i in range(nodes):
        for j, p in enumerate(pod_ns[i]):
            ip = ipam.gateway(cidrs[i]).rsplit(".", 1)[0] + f".{j + 2}"
            plan.append(
                (
                    ["ip", "-n", p, "-batch", "-"],
                    "\n".join(["link set lo up", f"addr add {ip}/24 dev eth0", "link set eth0 up", f"route add default via {ipam.gateway(cidrs[i])}"]),
                )
            )
    return plan


def run_plan(plan) -> None:
    for argv, text in plan:
        subprocess.run(argv, input=text + "\n", text=True, check=True, stdout=subprocess.DEVNULL)


def floor_down(lab: str) -> None:
    ours = [n for n in os.listdir(names.NETNS_DIR) if n.startswith(lab + "-")]
    subprocess.run(["ip", "-batch", "-"], input="\n".join(f"netns del {n}" for n in ours) + "\n", text=True, check=True)


# -- measuring ------------------------------------------------------------------------


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def settle(namespaces: int = 0, window: float = 0.25, idle: float = 0.9) -> float:
    """Wait until the kernel has torn down earlier runs' namespaces: it does that in
    a worker after `ip netns del`, partly on the CPU, partly waiting for RCU grace
    periods. Settled: at least 1 s per 100 namespaces deleted (2 s at least) has
    passed, and the CPUs were at least 90% idle over a quarter of a second.
    Returns the seconds waited."""
    t = time.perf_counter()
    time.sleep(max(2.0, namespaces / 100))
    while time.perf_counter() - t < SETTLE_TIMEOUT_S:
        i0, t0 = _cpu_times()
        time.sleep(window)
        i1, t1 = _cpu_times()
        if t1 > t0 and (i1 - i0) / (t1 - t0) >= idle:
            break
    return time.perf_counter() - t


def labctl(*args: str) -> None:
    subprocess.run(LABCTL + list(args), check=True, stdout=subprocess.DEVNULL)


def check_built(lab: str, expected: int) -> None:
    got = len([n for n in os.listdir(names.NETNS_DIR) if n.startswith(lab + "-")])
    if got != expected:
        raise SystemExit(f"{lab}: expected {expected} namespaces, found {got}")


def bench(size: str, repeat: int, tmp: Path, proxy_mode: str = "iptables") -> dict:
    nodes, ppn = (int(x) for x in size.split("x"))
    lab = "bench"
    path = tmp / f"{size}.yaml"
    path.write_text(topology(lab, nodes, ppn, proxy_mode))
    expected = 1 + nodes + nodes * ppn
    plan = floor_plan(lab, nodes, ppn)
    rows = {"floor_up": [], "floor_down": [], "labctl_up": [], "labctl_down": []}
    try:
        for _ in range(repeat):
            settle(expected)
            rows["floor_up"].append(timed(lambda: run_plan(plan)))
            check_built(lab, expected)
            rows["floor_down"].append(timed(lambda: floor_down(lab)))
            settle(expected)
            rows["labctl_up"].append(timed(lambda: labctl("up", str(path))))
            check_built(lab, expected)
            rows["labctl_down"].append(timed(lambda: labctl("down", lab)))
            check_built(lab, 0)
    finally:  # a failed run leaves neither lab behind
        subprocess.run(LABCTL + ["down", lab], capture_output=True)
        floor_down(lab)
    best = {k: min(v) for k, v in rows.items()}
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "size": size,
        "namespaces": expected,
        **{k: round(v, 3) for k, v in best.items()},
        **{f"{k}_median": round(v, 3) for k, v in med.items()},
        "up_ratio": round(best["labctl_up"] / best["floor_up"], 2),
        "up_ratio_median": round(med["labctl_up"] / med["floor_up"], 2),
        "down_ratio": round(best["labctl_down"] / best["floor_down"], 2),
        "goal": GOALS.get(size),
    }


def bench_demo(repeat: int) -> dict:
    demo = REPO / "topologies/demo.yaml"
    subprocess.run(LABCTL + ["down", "demo"], stdout=subprocess.DEVNULL)
    ups, downs = [], []
    count = 0
    for _ in range(repeat):
        settle(12)
        ups.append(timed(lambda: labctl("up", str(demo))))
        count = len([n for n in os.listdir(names.NETNS_DIR) if n.startswith("demo-")])
        downs.append(timed(lambda: labctl("down", "demo")))
    return {
        "size": "demo",
        "namespaces": count,
        "labctl_up": round(min(ups), 3),
        "labctl_up_median": round(statistics.median(ups), 3),
        "labctl_down": round(min(downs), 3),
        "goal_s": DEMO_GOAL_S,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20x10,50x20", help="NODESxPODS_PER_NODE, comma separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--proxy-mode", default="iptables", help="the labs' proxyMode (the floor builds no service datapath either way)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_up.py builds namespaces: run it as root", file=sys.stderr)
        return 3
    results = [bench_demo(max(args.repeat, 3))]
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            results.append(bench(size, args.repeat, Path(tmp), args.proxy_mode))
    ok = True
    print("fastest of each side (median in brackets), after the kernel freed earlier runs' namespaces")
    print(f"{'size':>7} {'netns':>6} {'floor up':>16} {'labctl up':>16} {'ratio':>13} {'floor down':>11} {'labctl down':>12}  goal")
    for r in results:
        if r["size"] == "demo":
            passed = r["labctl_up"] < DEMO_GOAL_S
            ok &= passed
            up = f"{r['labctl_up']:.3f}s ({r['labctl_up_median']:.3f})"
            print(
                f"{'demo':>7} {r['namespaces']:>6} {'':>16} {up:>16} {'':>13} {'':>11} {r['labctl_down']:>11.2f}s  up < {DEMO_GOAL_S:g} s: {'ok' if passed else 'MISSED'}"
            )
            continue
        goal = r["goal"]
        passed = goal is None or r["up_ratio"] <= goal
        ok &= passed
        verdict = f"up within {goal}x: {'ok' if passed else 'MISSED'}" if goal else ""
        floor = f"{r['floor_up']:.2f}s ({r['floor_up_median']:.2f})"
        ours = f"{r['labctl_up']:.2f}s ({r['labctl_up_median']:.2f})"
        ratio = f"{r['up_ratio']:.2f}x ({r['up_ratio_median']:.2f})"
        print(f"{r['size']:>7} {r['namespaces']:>6} {floor:>16} {ours:>16} {ratio:>13} {r['floor_down']:>10.2f}s {r['labctl_down']:>11.2f}s  {verdict}")
    out = REPO / "benchmarks/results"
    out.mkdir(exist_ok=True)
    (out / "bench_up.json").write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
