"""A lab's life: one path for every change, and down.

    change (up, apply, delete, ready), under the lab's lock:
        read the applied state -> compute the desired topology from it (labctl.changes)
        -> check the host -> plan -> clear debris of an interrupted run
        -> remove, then create (labctl.build) -> record the applied state
    down, under the lab's lock:
        stop the lab's processes -> delete every journaled namespace and file
        -> remove the records and the lock

Nothing of the lab lives in the host's root namespace: every link, address,
route and rule is inside a namespace the journal lists, so deleting the
namespaces removes all of it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from labctl import failpoints, registry
from labctl.changes import Applied, Change, Desire
from labctl.errors import HostLacks, InvalidInput, LabError, NoSuchLab
from labctl.kernel import netns, procs, run
from labctl.manifests_io import stored
from labctl.model import names
from labctl.model.objects import Pod, Topology
from labctl.plan.topology import Plan, plan
from labctl.responder import control as responder
from labctl.state import records
from labctl.state.journal import Journal
from labctl.state.store import LabDir, check_name, labs

ETC_NETNS = "/etc/netns"  # labctl.plumbing.etc writes pods' files there


@dataclass
class UpResult:
    lab: str
    created: bool
    plan: Plan
    seconds: float
    restarted: int = 0
    links_up: list[str] = field(default_factory=list)  # NETNS/DEV links found down and set up again
    synced: list = field(default_factory=list)  # proxy.sync.NodeSync of the nodes whose rules changed
    policies_synced: list = field(default_factory=list)  # policy.sync.NodePolicySync likewise
    policy_seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)  # what the command adds (labctl.changes.Change.report)
    topology: Topology | None = None  # the lab as it now is

    @property
    def changed(self) -> bool:
        return not self.plan.empty() or bool(self.restarted) or bool(self.links_up) or bool(self.synced) or bool(self.policies_synced)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "created": self.created,
            "changed": self.changed,
            "changes": self.plan.summary(),
            "commandsRestarted": self.restarted,
            "linksSetUp": self.links_up,
            "rulesSynced": [{"node": s.node, "mode": s.mode, "full": s.full, "rules": s.rules} for s in self.synced],
            "policiesSynced": [p.node for p in self.policies_synced],
            "seconds": round(self.seconds, 3),
            **self.report,
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
            raise HostLacks(
                "the topology sets a link delay, jitter or loss, which need the kernel's netem (sch_netem); this kernel has none", hint=NO_NETEM_HINT
            )
    if topo.policies:
        run.require("ipset", "ipset")
    from labctl import registry
    from labctl.proxy.sync import require_mode

    require_mode(topo.lab)
    registry.overlay(topo.lab.overlay).require(topo.lab)
    for addon in registry.addons():
        if addon.enabled(topo.lab):
            addon.require(topo.lab)
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
        self.name = check_name(name)
        self.dir = LabDir(self.name)
        self.journal = Journal(self.dir.journal)
        self._applied: tuple[tuple[int, int, int], Applied | None] | None = None  # (state file identity, state)

    # -- reading -------------------------------------------------------------

    def exists(self) -> bool:
        return self.dir.exists()

    def state(self) -> Applied | None:
        """The running lab's applied state. Read once per version of state.json
        (it is replaced whole, never edited)."""
        try:
            st = self.dir.state_file.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._applied is None or self._applied[0] != key:
            data = self.dir.read_state()
            applied = None
            if data:
                topo = Topology.from_dict(data["topology"])
                # a state written before file keys were kept: the file owned every object
                keys = data.get("fileKeys")
                file_keys = frozenset(tuple(k) for k in keys) if keys is not None else frozenset(d.key for d in stored(topo.documents))
                applied = Applied(topo, data.get("source", "lab"), file_keys)
            self._applied = (key, applied)
        return self._applied[1]

    def applied(self) -> Topology | None:
        """The running lab's topology."""
        a = self.state()
        return a.topology if a else None

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

    # -- change ----------------------------------------------------------------

    def change(self, desire: Desire, *, create: bool = False, progress=None, resync: bool = False) -> UpResult:
        """The one path of up, apply, delete and ready: under the lab's lock, read
        the applied state, compute what the command wants from it, bring the
        kernel there, record it. `create`: the lab may not exist yet (up)."""
        t0 = time.monotonic()
        with self.dir.locked():
            applied = self.state()
            if applied is None and not create:
                if self.dir.exists():
                    raise NoSuchLab(
                        f"lab {self.name} did not finish coming up",
                        hint=f"run `labctl up` with its file again, or `labctl down {self.name}`",
                    )
                raise NoSuchLab(f"no lab named {self.name} is up", hint=_which())
            wanted = desire(applied)  # exit 2 on bad input: nothing is touched
            if wanted.topology.lab.name != self.name:
                raise LabError(f"topology is for lab {wanted.topology.lab.name}, not {self.name}")
            check_host(wanted.topology)  # exit 3: nothing is touched
            fresh = not self.dir.exists()
            try:
                return self._change(applied, wanted, progress, t0, resync)
            except LabError as e:
                if fresh and not self.journal.replay().netns:
                    self.dir.remove()  # nothing was made: leave no records either
                elif e.hint is None and not isinstance(e, InvalidInput):
                    e.hint = f"`labctl up` again resumes; `labctl down {self.name}` removes what was made"
                raise

    def _change(self, applied: Applied | None, wanted: Change, progress, t0: float, resync: bool) -> UpResult:
        topo = wanted.topology
        self.dir.create()
        if resync:
            for n in topo.lab.nodes:
                records.forget_node(self.dir, n.name)  # no record: every node's rules are rewritten whole
        old, lost = self._observe(applied.topology if applied else None)
        p = plan(old, topo)  # refuses unsupported changes before anything is touched
        p.rebuild(lost, topo)
        self._clear_debris(old)
        self._check_free(p, topo)
        from labctl.build import Builder  # netlink: only commands that build pay for it

        b = Builder(self.dir, self.journal, progress)
        raised = []
        if old is not None:
            b.remove(p, old, topo)
            raised = b.raise_links(topo)  # before the daemons are waited for: routes come back over them
        b.create(p, topo, old)
        restarted = b.restart_dead_commands(topo) if not p.new_lab else 0
        b.sync_external_commands(old, topo)  # externals' own programs: started, restarted when dead or changed
        for served in b.addons_served:
            served()
        failpoints.hit("state")
        self.dir.write_state(
            {"lab": self.name, "source": wanted.source, "topology": topo.to_dict(), "fileKeys": sorted(wanted.file_keys, key=str), "updated": time.time()}
        )
        from labctl.proxy.sync import confirm

        confirm(self.dir)  # the state now describes what the rules were synced from
        if topo.terminating:
            from labctl import reaper

            reaper.ensure(self)  # removes the terminating pods when their grace period ends
        return UpResult(
            self.name,
            created=old is None,
            plan=p,
            seconds=time.monotonic() - t0,
            restarted=restarted,
            links_up=raised,
            synced=b.synced,
            policies_synced=b.policies_synced,
            policy_seconds=b.policy_seconds,
            report=wanted.report,
            topology=topo,
        )

    def _clear_debris(self, old: Topology | None) -> None:
        """Remove what an interrupted run journaled but never completed: namespaces the
        applied topology does not have (and the links they left in the namespaces that
        stay: a pod's veth on its node, a host's port on the switch), processes it does
        not run, files of those namespaces."""
        owned = self.journal.replay()
        expected = set(names.lab_namespaces(old)) if old is not None else set()
        debris = [n for n in owned.netns if n not in expected]
        keep_procs = set()
        if old is not None:
            keep_procs.add(responder.KEY)
            keep_procs |= {names.command_key(p.key, c.name) for p in old.pods for c in p.containers if c.command is not None}
            daemon = registry.overlay(old.lab.overlay).daemon
            if daemon is not None:
                keep_procs |= {names.daemon_key(n.name, daemon.name) for n in old.lab.nodes}
            keep_procs |= {names.external_command_key(e.name) for e in old.lab.externals if e.command}
            if old.terminating:
                from labctl import reaper

                keep_procs.add(reaper.KEY)
        stray = [k for k in owned.procs if k not in keep_procs]
        if not debris and not stray:
            return
        if old is not None and any("." in n for n in debris):
            responder.apply(self.dir, self.journal, old)  # its sockets in debris pods pin their namespaces
        pids = procs.recorded({k: owned.procs[k] for k in stray})
        pids += procs.in_namespaces({i for i in (netns.inode(n) for n in debris) if i is not None})
        procs.stop(pids)
        from labctl.probe.trace import clear_after_crash

        clear_after_crash(self.name, stray, set(netns.listed()) - set(debris))
        for k in stray:
            self.journal.release_proc(k)
        if old is not None:
            from labctl.build import unlink_debris

            unlink_debris(old, debris)
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
        with self.dir.locked():
            if not self.dir.exists():
                return {"lab": self.name, "found": False, "namespaces": 0, "processes": 0}
            owned = self.journal.replay()
            inodes = {i for i in (netns.inode(n) for n in owned.netns) if i is not None}
            pids = sorted(set(procs.recorded(owned.procs) + procs.in_namespaces(inodes)))
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
    """Remove a journaled file or directory, only where labctl writes them: /etc/netns/<lab>-..."""
    parent, base = os.path.split(path)
    from labctl.kernel import bpf

    if parent == str(bpf.ROOT) and base == lab:  # the ebpf mode's pins
        bpf.unpin_lab(lab)
        return
    if parent != ETC_NETNS or not base.startswith(f"{lab}-") or base in (".", ".."):
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


def _which() -> str:
    up = running_labs()
    return f"labs up: {', '.join(up)}" if up else "no lab is up (sudo labctl up topologies/demo.yaml)"


def resolve_lab_name(name: str | None) -> str:
    """--lab (or LABCTL_LAB) may be left out when exactly one lab is up; a name given is checked first."""
    if name is not None:
        return check_name(name, "--lab (or LABCTL_LAB)")
    up = running_labs()
    if len(up) == 1:
        return up[0]
    if not up:
        raise NoSuchLab("no lab is up", hint="sudo labctl up topologies/demo.yaml")
    raise LabError(f"{len(up)} labs are up ({', '.join(up)}): say which with --lab NAME")
