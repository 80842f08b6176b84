"""Programming NetworkPolicy into the nodes: per node, one `ipset restore`
(create and fill sets), one `iptables-restore --noflush` (the chains, only
when policies changed) and, when sets went stale, one more `ipset restore`
to destroy them once no rule refers to them; all nodes in parallel.

A record per node (labctl.state.records, kind "netpol") says what its sets hold and
which chains it has, so a relabel is a few `add`/`del` lines. A node whose
filter table was just replaced (a full sync of kube-proxy's iptables rules,
which rewrites the table whole) or that has no record gets everything again.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl import registry
from labctl.kernel import run
from labctl.model import family, names
from labctl.model.objects import Topology
from labctl.policy import rules as R
from labctl.state.records import RecordKind
from labctl.state.store import LabDir


@dataclass
class NodePolicySync:
    node: str
    sets_text: str
    chains_text: str
    destroy_text: str
    record: dict

    @property
    def empty(self) -> bool:
        return not (self.sets_text or self.chains_text or self.destroy_text)


RECORD_VERSION = 1
NOTHING = {"none": True}  # the record of a node where no policy chain or set was ever installed


def _records(labdir: LabDir, fam: int = 4) -> RecordKind:
    return RecordKind(labdir, "netpol6" if fam == 6 else "netpol", RECORD_VERSION)


def read_record(labdir: LabDir, node: str, fam: int = 4) -> dict | None:
    return _records(labdir, fam).read(node)


def plan_node(topo: Topology, node: str, rec: dict | None, table_replaced: bool, desired: R.PolicyRules | None = None) -> NodePolicySync:
    desired = desired or R.render(topo, node)
    digest = desired.digest()
    old_sets = rec["sets"] if rec else None
    sets_text, stale = R.ipset_update(desired.sets, old_sets)
    fresh = rec is None or table_replaced
    chains_text = ""
    if fresh or rec.get("digest") != digest:
        jumps = fresh if rec is None else table_replaced or not rec.get("jumps")
        chains_text = R.chains_text(desired, install_jumps=jumps, entry=registry.proxy_mode(topo.lab.proxy_mode).policy_entry(topo.lab))
        gone = [c for c in (rec or {}).get("chains", []) if c not in desired.chains and not table_replaced]
        if gone:
            chains_text += R.remove_chains_text(gone)
    destroy = "".join(f"destroy {n}\n" for n in stale)
    record = {"digest": digest, "chains": list(desired.chains), "jumps": True, "sets": {n: [s.type, sorted(s.members)] for n, s in desired.sets.items()}}
    return NodePolicySync(node, sets_text, chains_text, destroy, record)


def sync(labdir: LabDir, topo: Topology, replaced=frozenset(), nodes: list[str] | None = None) -> list[NodePolicySync]:
    """Bring every node's policy rules to what `topo` says, each family's (iptables and
    ip6tables) from its view of the lab. `replaced`: nodes whose filter table was
    rewritten whole (or made) since the last policy sync; a set of names (every family)
    or a dict family -> names. A lab without policies gets no policy chain or set until
    it has one."""
    out = []
    for fam, view in family.views(topo):
        out += _sync(labdir, view, fam, replaced.get(fam, set()) if isinstance(replaced, dict) else replaced, nodes)
    return out


def _sync(labdir: LabDir, topo: Topology, fam: int, replaced: set[str], nodes: list[str] | None) -> list[NodePolicySync]:
    lab = topo.lab.name
    save, restore = ("ip6tables-save", "ip6tables-restore") if fam == 6 else ("iptables-save", "iptables-restore")
    store = _records(labdir, fam)
    plans = []
    node_names = nodes or [n.name for n in topo.lab.nodes]
    rendered = R.render_all(topo, node_names)
    for node in node_names:
        rec = store.read(node)
        clean = node in replaced or (rec is not None and rec.get("none"))  # the filter table holds none of our chains
        if not topo.policies and clean and not store.pending(node):
            if rec is None:
                store.write(node, NOTHING)
            continue  # no policy, nothing of ours in the node: nothing to install
        if rec is not None and rec.get("none"):
            rec = None  # nothing of ours there: install from scratch
        if rec is None and not clean:
            # No record, but the node may hold our chains and jumps (a sync that crashed):
            # start from a clean slate so nothing is installed twice.
            ns = names.node_netns(lab, node)
            saved = run.output(ns, [save, "-t", "filter"])
            if R.MAIN in saved:
                mine = [
                    line[1:].split()[0]
                    for line in saved.splitlines()
                    if line.startswith(":") and (line.startswith(":LABCTL-NETPOL") or line.startswith(":NP-"))
                ]
                entries = [e for mode in registry.proxy_modes() for e in mode.policy_entry(topo.lab)]
                text = "*filter\n" + "".join(f"-D {c} {r}\n" for c, r in dict.fromkeys(entries) if f"-A {c} {r}" in saved) + "COMMIT\n"
                run.apply_all([run.Transaction(ns, [restore, "--noflush"], text + R.remove_chains_text(mine))])
        p = plan_node(topo, node, rec, bool(clean), rendered[node])
        if not p.empty:
            plans.append(p)
    if not plans:
        return []
    store.begin([p.node for p in plans])  # a sync that does not finish leaves no record: the next one starts over
    ns = {p.node: names.node_netns(lab, p.node) for p in plans}
    run.apply_all([run.Transaction(ns[p.node], ["ipset", "restore"], p.sets_text) for p in plans if p.sets_text])
    run.apply_all([run.Transaction(ns[p.node], [restore, "--noflush"], p.chains_text) for p in plans if p.chains_text])
    run.apply_all([run.Transaction(ns[p.node], ["ipset", "restore"], p.destroy_text) for p in plans if p.destroy_text])
    for p in plans:
        store.write(p.node, p.record)
    return plans
