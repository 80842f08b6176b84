"""Programming service rules into the nodes: one transaction per node, all
nodes in parallel.

Each node has a record (<statedir>/proxy/<node>.json) of what its last
transaction wrote: the mode and a hash per chain (iptables) or the chains,
map elements and affinity sets (nftables). With a record, a sync is partial:
only what changed is written. Without one (a new node, a record marked
pending by a sync that never finished, a changed proxyMode) the sync is full
and starts from what the kernel actually holds, so it is always safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from labctl import names
from labctl.errors import HostLacks
from labctl.kernel import run
from labctl.model.objects import Topology
from labctl.proxy import iptables, nftables
from labctl.proxy.endpoints import service_ports
from labctl.state.store import LabDir

MODES = ("iptables", "nftables")


@dataclass
class NodeSync:
    node: str
    mode: str
    full: bool
    text: str
    record: dict
    rules: int

    @property
    def argv(self) -> list[str]:
        return _argv(self.mode)


def _record_path(labdir: LabDir, node: str) -> Path:
    return labdir.path / "proxy" / f"{node}.json"


def read_record(labdir: LabDir, node: str) -> dict | None:
    try:
        return json.loads(_record_path(labdir, node).read_text())
    except FileNotFoundError:
        return None


def _write_record(labdir: LabDir, node: str, data: dict) -> None:
    p = _record_path(labdir, node)
    p.parent.mkdir(exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    tmp.replace(p)


def forget(labdir: LabDir, node: str) -> None:
    _record_path(labdir, node).unlink(missing_ok=True)


def require_mode(mode: str) -> None:
    if mode == "ipvs":
        raise HostLacks(
            "proxyMode ipvs needs the kernel's ip_vs module, which labctl does not drive yet",
            hint="use proxyMode iptables or nftables",
        )
    if mode == "nftables":
        run.require("nft", "nftables")
    else:
        run.require("iptables-restore", "iptables")


def _cleanup_other(mode: str, ns: str) -> str:
    """Text that removes the other mode's rules from a node (when proxyMode changed)."""
    if mode == "nftables":  # leaving iptables: drop KUBE-* chains and the jumps into them
        ex = iptables.parse_save(run.output(ns, ["iptables-save"]))
        out = []
        for table in iptables.TABLES:
            mine = sorted(c.split("/", 1)[1] for c in ex.chains if c.startswith(table + "/"))
            jumps = [j.split(" ", 1) for j in sorted(ex.jumps) if j.startswith(table + "/")]
            out.append(f"*{table}")
            out += [f":{c} - [0:0]" for c in mine]
            out += [f"-D {key.split('/', 1)[1]} {rule}" for key, rule in jumps]
            out += [f"-X {c}" for c in mine]
            out.append("COMMIT")
        return "\n".join(out) + "\n"
    return f"add table {nftables.TABLE}\ndelete table {nftables.TABLE}\n"


def plan(labdir: LabDir, topo: Topology, nodes: list[str] | None = None) -> list[NodeSync]:
    """What each node needs; nodes whose rules are already right are left out."""
    mode = topo.lab.proxy_mode
    infos = service_ports(topo)
    out = []
    for node in nodes or [n.name for n in topo.lab.nodes]:
        ns = names.node_netns(topo.lab.name, node)
        rec = read_record(labdir, node)
        usable = rec is not None and not rec.get("pending") and rec.get("mode") == mode
        if rec is not None and rec.get("mode") not in (None, mode):
            run.apply_all([run.Transaction(ns, _argv(rec["mode"]), _cleanup_other(mode, ns))])
        if mode == "iptables":
            desired = iptables.render(topo, node, infos)
            existing = None if usable else iptables.parse_save(run.output(ns, ["iptables-save"]))
            text, record = iptables.transaction(desired, rec["record"] if usable else None, existing)
            rules = desired.rules()
        else:
            desired_nft = nftables.render(topo, node, infos)
            text, record = nftables.script(desired_nft, rec["record"] if usable else None, topo.lab.service_network)
            rules = desired_nft.rules()
        if text:
            out.append(NodeSync(node, mode, not usable, text, record, rules))
    return out


def _argv(mode: str) -> list[str]:
    return ["iptables-restore", "--noflush"] if mode == "iptables" else ["nft", "-f", "-"]


def apply(labdir: LabDir, topo: Topology, syncs: list[NodeSync]) -> None:
    """Run the transactions; a record is marked pending until its transaction is in."""
    lab = topo.lab.name
    for s in syncs:
        _write_record(labdir, s.node, {"mode": s.mode, "pending": True, "record": s.record})
    run.apply_all([run.Transaction(names.node_netns(lab, s.node), s.argv, s.text) for s in syncs])
    for s in syncs:
        _write_record(labdir, s.node, {"mode": s.mode, "pending": False, "record": s.record})


def sync(labdir: LabDir, topo: Topology, nodes: list[str] | None = None) -> list[NodeSync]:
    syncs = plan(labdir, topo, nodes)
    if syncs:
        apply(labdir, topo, syncs)
    return syncs
