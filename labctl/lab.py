"""A lab's life: up (create or reconcile), down, and what it owns.

    up:    load -> plan against the applied topology -> clear debris of an
           interrupted run -> remove, then create -> record the applied topology
    down:  stop the lab's processes -> delete every journaled namespace ->
           remove the records

Both run under the lab's lock. Nothing of the lab lives in the host's root
namespace: every link, address, route and rule is inside a namespace the
journal lists, so deleting the namespaces removes all of it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from labctl import failpoints
from labctl.model import names
from labctl.errors import HostLacks, InvalidInput, LabError
from labctl.kernel import netns, procs, run
from labctl.model.objects import Pod, Topology
from labctl.reconcile import Plan, plan
from labctl.responder import control as responder
from labctl.state.journal import Journal
from labctl.state.store import LabDir, labs

ETC_NETNS = "/etc/netns"  # labctl.plumbing.etc writes pods' files there


@dataclass
class UpResult:
    lab: str
    created: bool
    plan: Plan
    seconds: float
    restarted: int = 0
    synced: list = field(default_factory=list)  # proxy.sync.NodeSync of the nodes whose rules changed
    policies_synced: list = field(default_factory=list)  # policy.sync.NodePolicySync likewise
    policy_seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return not self.plan.empty() or bool(self.restarted) or bool(self.synced) or bool(self.policies_synced)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "created": self.created,
            "changed": self.changed,
            "changes": self.plan.summary(),
            "commandsRestarted": self.restarted,
            "rulesSynced": [{"node": s.node, "mode": s.mode, "full": s.full, "rules": s.rules} for s in self.synced],
            "policiesSynced": [p.node for p in self.policies_synced],
            "seconds": round(self.seconds, 3),
        }


def check_host(topo: Topology) -> None:
    """Everything the lab needs from the host, checked before anything is made (exit 3)."""
    run.require("nsenter", "util-linux")
    run.require("iptables-restore", "iptables")
    run.require("ip", "iproute2")
    if not os.path.isdir("/proc/sys/net/bridge"):
        # a module on stock distribution kernels, loaded as kubeadm's prerequisites load it
        subprocess.run(["modprobe", "-q", "br_netfilter"], capture_output=True)
        if not os.path.isdir("/proc/sys/net/bridge"):
            raise HostLacks(
                "this kernel has no br_netfilter (modprobe br_netfilter failed): bridged pod traffic would bypass the service and policy rules",
                hint="load it (modprobe br_netfilter) or use a kernel that has it",
            )
    links = [h.link for h in (*topo.lab.nodes, *topo.lab.externals) if h.link]
    if links:
        from labctl.impair import tc
        from labctl.impair.kernel import NO_NETEM_HINT

        run.require("tc", "iproute2")
        if any(tc.from_spec(x).needs_netem for x in links) and not tc.netem_available():
            raise HostLacks("the topology sets a link delay, jitter or loss, which need the kernel's netem (sch_netem); this kernel has none", hint=NO_NETEM_HINT)
    if topo.policies:
        run.require("ipset", "ipset")
    from labctl.proxy.sync import require_mode

    require_mode(topo.lab.proxy_mode, topo.lab.ipvs_scheduler)
    sctp = any(p.protocol == "SCTP" for pod in topo.pods for p in pod.served_ports())
    sctp |= any(p.protocol == "SCTP" for s in topo.services if s.proxied for p in s.ports)
    if sctp:
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        except OSError:
            raise HostLacks(
                "this kernel has no SCTP (CONFIG_IP_SCTP), so SCTP ports cannot be served or proxied",
                hint="use TCP or UDP ports here, or a stock distribution kernel (scripts/vm-test.sh)",
            ) from None


class LabHandle:
    def __init__(self, name: str):
        self.name = name
        self.dir = LabDir(name)
        self.journal = Journal(self.dir.journal)
        self._applied: tuple[tuple[int, int, int], Topology | None] | None = None  # (state file identity, topology)

    # -- reading -------------------------------------------------------------

    def exists(self) -> bool:
        return self.dir.exists()

    def applied(self) -> Topology | None:
        """The running lab's topology. Read once per version of state.json (it is
        replaced whole, never edited), so `apply`, which reads it to merge and
        again under the lab's lock, parses it once."""
        try:
            st = self.dir.state_file.stat()
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._applied is None or self._applied[0] != key:
            state = self.dir.read_state()
            self._applied = (key, Topology.from_dict(state["topology"]) if state else None)
        return self._applied[1]

    def state(self) -> dict[str, Any] | None:
        return self.dir.read_state()

    def _observe(self, old: Topology | None) -> tuple[Topology | None, list[Pod]]:
        """The applied topology, and its pods whose namespace vanished.

        Lost pods are removed (their veth, the responder's sockets) and built
        again; if the underlay, a node or an external vanished, the lab is
        rebuilt whole.
        """
        if old is None:
            return None, []
        present = set(netns.listed())
        lab = self.name
        hosts = [names.underlay_netns(lab)]
        hosts += [names.node_netns(lab, n.name) for n in old.lab.nodes]
        hosts += [names.external_netns(lab, e.name) for e in old.lab.externals]
        if any(h not in present for h in hosts):
            return None, []
        return old, [p for p in old.pods if names.pod_netns(lab, p.namespace, p.name) not in present]

    # -- up ------------------------------------------------------------------

    def up(self, topo: Topology, source: str, progress=None, resync: bool = False) -> UpResult:
        if topo.lab.name != self.name:
            raise LabError(f"topology is for lab {topo.lab.name}, not {self.name}")
        check_host(topo)
        t0 = time.monotonic()
        fresh = not self.dir.exists()
        try:
            return self._up(topo, source, progress, t0, resync)
        except LabError as e:
            if fresh and not self.journal.replay().netns:
                self.dir.remove()  # nothing was made: leave no records either
            elif e.hint is None and not isinstance(e, InvalidInput):
                e.hint = f"`labctl up` again resumes; `labctl down {self.name}` removes what was made"
            raise

    def _up(self, topo: Topology, source: str, progress, t0: float, resync: bool = False) -> UpResult:
        with self.dir.locked():
            if resync:
                from labctl.proxy.sync import forget

                for n in topo.lab.nodes:
                    forget(self.dir, n.name)  # no record: every node's rules are rewritten whole
            old, lost = self._observe(self.applied())
            p = plan(old, topo)  # refuses unsupported changes before anything is touched
            p.rebuild(lost, topo)
            self._clear_debris(old)
            self._check_free(p, topo)
            from labctl.build import Builder  # netlink: only commands that build pay for it

            b = Builder(self.dir, self.journal, progress)
            if old is not None:
                b.remove(p, old, topo)
            b.create(p, topo, old)
            restarted = b.restart_dead_commands(topo) if not p.new_lab else 0
            failpoints.hit("state")
            self.dir.write_state({"lab": self.name, "source": source, "topology": topo.to_dict(), "updated": time.time()})
            from labctl.proxy.sync import confirm

            confirm(self.dir)  # the state now describes what the rules were synced from
        return UpResult(
            self.name, created=old is None, plan=p, seconds=time.monotonic() - t0, restarted=restarted, synced=b.synced, policies_synced=b.policies_synced,
            policy_seconds=b.policy_seconds,
        )

    def _clear_debris(self, old: Topology | None) -> None:
        """Remove what an interrupted run journaled but never completed."""
        owned = self.journal.replay()
        expected = set(names.lab_namespaces(old)) if old is not None else set()
        debris = [n for n in owned.netns if n not in expected]
        keep_procs = set()
        if old is not None:
            keep_procs.add(responder.KEY)
            keep_procs |= {names.command_key(p.key, c.name) for p in old.pods for c in p.containers if c.command is not None}
        stray = [k for k in owned.procs if k not in keep_procs]
        if not debris and not stray and old is not None:
            return
        pids = [owned.procs[k]["pid"] for k in stray if owned.procs[k].get("pid") and procs.alive(owned.procs[k]["pid"], owned.procs[k].get("start"))]
        if old is None:
            pids += procs.marked(self.name)
        inodes = {i for i in (netns.inode(n) for n in debris) if i is not None}
        pids += procs.in_namespaces(inodes)
        procs.stop(pids)
        for k in stray:
            self.journal.release_proc(k)
        for n in debris:
            netns.delete(n)
        self.journal.release_netns(debris)
        stale = [f for f in owned.files if os.path.basename(f) in set(debris)]  # pods' /etc/netns/<netns>
        for f in stale:
            _remove_file(f, self.name)
        self.journal.release_files(stale)

    def _check_free(self, p: Plan, topo: Topology) -> None:
        """Refuse to build over namespaces this lab did not make."""
        owned = set(self.journal.replay().netns)
        lab = self.name
        wanted = p.namespaces_to_create(lab)
        removed = {names.pod_netns(lab, x.namespace, x.name) for x in p.remove_pods}
        taken = [n for n in wanted if netns.exists(n) and n not in owned and n not in removed]
        if taken:
            others = ", ".join(taken[:5]) + (" ..." if len(taken) > 5 else "")
            raise LabError(
                f"network namespaces with the lab's names exist and were not made by lab {lab}: {others}",
                hint="another lab or tool uses these names; remove them with `ip netns del`, or rename the lab",
            )

    # -- down ----------------------------------------------------------------

    def down(self, progress=None) -> dict[str, Any]:
        progress = progress or (lambda step, n: None)
        if not self.dir.exists():
            return {"lab": self.name, "found": False, "namespaces": 0, "processes": 0}
        with self.dir.locked():
            owned = self.journal.replay()
            inodes = {i for i in (netns.inode(n) for n in owned.netns) if i is not None}
            pids = procs.marked(self.name) + procs.in_namespaces(inodes)
            pids += [r["pid"] for r in owned.procs.values() if r.get("pid") and procs.alive(r["pid"], r.get("start"))]
            pids = sorted(set(pids))
            procs.stop(pids)
            removed = 0
            for n in reversed(owned.netns):
                removed += netns.delete(n)
                progress("namespaces", 1)
            for path in owned.files:
                _remove_file(path, self.name)
            self.dir.remove()
        return {"lab": self.name, "found": True, "namespaces": removed, "processes": len(pids)}


def _remove_file(path: str, lab: str) -> None:
    """Remove a journaled file or directory, only where labctl writes them."""
    if not (path.startswith(f"{ETC_NETNS}/{lab}-") and ".." not in path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def running_labs() -> list[str]:
    return labs()


def resolve_lab_name(name: str | None) -> str:
    """--lab may be left out when exactly one lab is up."""
    if name:
        return name
    up = running_labs()
    if len(up) == 1:
        return up[0]
    if not up:
        raise LabError("no lab is up", hint="sudo labctl up topologies/demo.yaml")
    raise LabError(f"{len(up)} labs are up ({', '.join(up)}): say which with --lab NAME")
