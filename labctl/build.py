"""Carrying out a plan in the kernel: the side-effect edge of labctl.

Each step journals what it is about to make, then makes it, a namespace's
netlink requests sent as one batch. Removal runs before creation so that a
pod moving to another node can reuse its namespace name.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Callable

from labctl import failpoints, registry
from labctl.errors import LabError
from labctl.kernel import ifindex, netns, procs, run
from labctl.kernel.nl import Batch
from labctl.model import dns, family, names
from labctl.model.objects import Container, LabSpec, Pod, Topology
from labctl.plan.topology import Plan
from labctl.plumbing import etc, underlay
from labctl.plumbing import node as node_plumbing
from labctl.plumbing import pod as pod_plumbing
from labctl.policy import sync as policy_sync
from labctl.proxy import sync as proxy_sync
from labctl.responder import control as responder
from labctl.state import records
from labctl.state.journal import Journal
from labctl.state.store import LabDir

Progress = Callable[[str, int], None]


def _quiet(step: str, n: int) -> None:
    pass


class Builder:
    def __init__(self, labdir: LabDir, journal: Journal, progress: Progress | None = None):
        self.dir = labdir
        self.journal = journal
        self._report = progress or _quiet
        self.synced: list = []  # the service-rule transactions of the last create()
        self.policies_synced: list = []  # the nodes whose policy rules changed
        self.policy_seconds = 0.0
        self.addons_served: list = []  # what waits until each add-on serves the new state (after commands start)

    def progress(self, step: str, n: int) -> None:
        self._report(step, n)
        failpoints.hit(step, n)

    # -- namespaces ----------------------------------------------------------

    def create_namespaces(self, names_: list[str], sysctls: dict[str, str] | None = None) -> None:
        """Journal every name first (one write), then create them (`sysctls`: set in each
        before anything is made in it)."""
        self.journal.netns(names_)
        failpoints.hit("namespaces", 0)
        for n in names_:
            try:
                netns.create(n, sysctls)
            except FileExistsError:
                raise LabError(f"network namespace {n} appeared while the lab was being built") from None
            self.progress("namespaces", 1)

    def delete_namespaces(self, names_: list[str]) -> None:
        for n in names_:
            netns.delete(n)
        self.journal.release_netns(names_)

    # -- removal ---------------------------------------------------------------

    def remove(self, plan: Plan, old: Topology, new: Topology) -> None:
        spec = old.lab
        lab = spec.name
        leaving = {p.key for p in plan.remove_pods}
        if leaving:
            # The responder lets go of the pods first: its sockets pin their namespaces.
            kept = old.with_pods(tuple(p for p in old.pods if p.key not in leaving))
            responder.apply(self.dir, self.journal, kept)
        for pod in plan.remove_pods + plan.commands_changed:
            self.stop_commands(pod)
        removed_nodes = {n.name for n in plan.remove_nodes}
        by_node: dict[str, list[Pod]] = defaultdict(list)
        for pod in plan.remove_pods:
            if pod.node not in removed_nodes:
                by_node[pod.node].append(pod)
        for node_name, pods in by_node.items():
            b = Batch(names.node_netns(lab, node_name))
            for pod in pods:
                pod_plumbing.remove_host_end(b, spec, pod)
            b.commit()
        self.delete_namespaces([names.pod_netns(lab, p.namespace, p.name) for p in plan.remove_pods])
        etc.remove(self.journal, lab, plan.remove_pods)
        if plan.remove_nodes:
            self.stop_node_daemons(spec, plan.remove_nodes)
            backend = registry.overlay(spec.overlay)
            staying = [n for n in new.lab.nodes if n.name not in {a.name for a in plan.add_nodes}]
            for local in staying:
                b = Batch(names.node_netns(lab, local.name))
                for f in family.lab_families(spec):
                    v = family.spec_view(spec, f)
                    for gone in plan.remove_nodes:
                        backend.remove_peer(b, v, family.host_view(spec, local, f), family.host_view(spec, gone, f))
                b.commit()
            self.delete_namespaces([names.node_netns(lab, n.name) for n in plan.remove_nodes])
            for n in plan.remove_nodes:
                records.forget_node(self.dir, n.name)
        if plan.remove_externals:
            self.delete_namespaces([names.external_netns(lab, e.name) for e in plan.remove_externals])
            etc.remove_externals(self.journal, lab, plan.remove_externals)

    # -- creation ----------------------------------------------------------------

    def create(self, plan: Plan, new: Topology, previous: Topology | None = None) -> None:
        """Carry out the plan's creations and sync the rules (`previous`: the lab's
        applied topology, which the rule syncs plan from)."""
        spec = new.lab
        for n in plan.add_nodes:  # a new node namespace holds no rules, whatever a record says
            records.forget_node(self.dir, n.name)
        to_create = plan.namespaces_to_create(spec.name)
        self._report("total", len(to_create) + 1 + len(plan.add_nodes) + len(plan.add_pods))
        # IPv6: no duplicate address detection on the lab's links (a tentative link-local
        # address holds a new link's first packets for a second), as flannel turns it off
        self.create_namespaces(to_create, node_plumbing.NODAD if 6 in family.lab_families(spec) else None)
        if plan.add_pods or plan.new_lab:
            responder.start(self.dir, self.journal, new)

        self._uplinks(plan, spec)
        if plan.overlay_from:
            self._leave_overlay(plan, previous, new)
        self._nodes(plan, new)
        converged = self._node_daemons(new)  # bird starts now and converges while the pods are wired
        if converged is not None:
            self.addons_served.append(converged)
        # The rules need the nodes (their namespaces, and their devices made at fixed
        # indexes before IPVS mode adds kube-ipvs0), not the pods' links: they are
        # synced in a thread while this one wires the pods, and the responder reloads
        # meanwhile too (for a new lab, it has had the build to start up).
        with ThreadPoolExecutor(max_workers=2) as pool:  # leaving it waits for the threads, whatever happened here
            rules = pool.submit(self._sync_rules, plan, new, previous)
            prepared = [pool.submit(a.prepare, self.dir, new) for a in registry.addons() if a.enabled(spec)]
            self._links(plan, new)
            self._pods(plan, new)
            registry.proxy_mode(spec.proxy_mode).pods_wired(new, plan.add_pods)
            etc.write(self.journal, new, plan.add_pods + plan.files_changed, {p.key for p in plan.add_pods})
            self.progress("responder", 0)
            served = responder.begin(self.dir, self.journal, new)
        rules.result()
        for p in prepared:
            p.result()
        served()
        self.addons_served += [w for a in registry.addons() if a.enabled(spec) and (w := a.sync(self.dir, self.journal, new))]
        for pod in plan.add_pods + plan.commands_changed:
            self.start_commands(new, pod)

    def _sync_rules(self, plan: Plan, new: Topology, previous: Topology | None) -> None:
        """New nodes' setup transactions, then service rules, then policy rules (a full
        sync of the service rules may rewrite the filter table the policy chains are in)."""
        spec = new.lab
        mode = registry.proxy_mode(spec.proxy_mode)
        views = [family.spec_view(spec, f) for f in family.lab_families(spec)]
        run.apply_all([t for n in plan.add_nodes for v in views for t in mode.node_setup(v, v.node(n.name))])
        self.progress("services", 0)
        self.synced = proxy_sync.sync(self.dir, new, previous=previous)
        self.progress("policies", 0)
        added = {n.name for n in plan.add_nodes}
        replaced = {f: {s.node for s in self.synced if s.replaced_filter and s.family == f} | added for f in family.lab_families(spec)}
        t = time.monotonic()
        self.policies_synced = policy_sync.sync(self.dir, new, replaced)
        self.policy_seconds = time.monotonic() - t

    def _uplinks(self, plan: Plan, spec: LabSpec) -> None:
        lab = spec.name
        hosts = [(n.name, names.node_netns(lab, n.name), n.ip) for n in plan.add_nodes]
        hosts += [(e.name, names.external_netns(lab, e.name), e.ip) for e in plan.add_externals]
        if not hosts and not plan.new_lab:
            return
        b = Batch(names.underlay_netns(lab))
        if plan.new_lab:
            underlay.switch(b, lab, [family.spec_view(spec, f).node_network for f in family.lab_families(spec)])
        with ExitStack() as stack:
            for host, ns, _ in hosts:
                fd = netns.open_fd(ns)
                stack.callback(os.close, fd)
                underlay.uplink(b, lab, host, ns, fd)
            b.commit()
        self.progress("uplinks", 1)
        etc.write_externals(self.journal, spec, plan.add_externals)
        for ext, (_, ns, _) in zip(plan.add_externals, hosts[len(plan.add_nodes) :]):  # externals; nodes get theirs in _nodes
            eb = Batch(ns)
            underlay.host_addresses(eb, spec, ext)
            eb.commit()

    def _nodes(self, plan: Plan, new: Topology) -> None:
        """New nodes: address, cni0, overlay device, sysctls; every node: overlay peers."""
        spec = new.lab
        lab = spec.name
        backend = registry.overlay(spec.overlay)
        added = {n.name for n in plan.add_nodes}
        views = [family.spec_view(spec, f) for f in family.lab_families(spec)]
        for node in spec.nodes:
            ns = names.node_netns(lab, node.name)
            b = Batch(ns)
            if node.name in added:
                underlay.host_addresses(b, spec, node)
                node_plumbing.cni0(b, spec, node, backend.pod_mtu(spec))
            if node.name in added or plan.overlay_from:  # (the new overlay on a node that stays)
                for v in views:
                    backend.device(b, v, v.node(node.name))
                peers = [r for r in spec.nodes if r.name != node.name]
            else:
                peers = [r for r in plan.add_nodes]
            for v in views:  # each family's entries, on its view of the lab
                for remote in peers:
                    backend.peer(b, v, v.node(node.name), v.node(remote.name))
            b.commit()
            if node.name in added:
                netns.write_sysctls(ns, node_plumbing.sysctls(spec))
                self.progress("nodes", 1)

    def _leave_overlay(self, plan: Plan, previous: Topology | None, new: Topology) -> None:
        """A running lab switches overlays: on every node that stays, the old overlay's
        daemon stopped, its device and routes removed, and the MTU of cni0 and of every
        pod's veth pair set to the new overlay's (pods keep their namespaces and addresses)."""
        assert plan.overlay_from and previous is not None
        spec = new.lab
        old_spec = previous.lab
        staying = [n for n in old_spec.nodes if n.name in {x.name for x in spec.nodes}]
        self.stop_node_daemons(old_spec, staying)
        old_backend, backend = registry.overlay(plan.overlay_from), registry.overlay(spec.overlay)
        if old_backend.daemon is not None:
            import shutil

            shutil.rmtree(self.dir.path / old_backend.daemon.name, ignore_errors=True)
        pods = [p for p in new.pods if p.key not in {x.key for x in plan.add_pods}]
        mtu, old_mtu = backend.pod_mtu(spec), old_backend.pod_mtu(old_spec)
        for node in staying:
            b = Batch(names.node_netns(spec.name, node.name))
            for f in family.lab_families(old_spec):
                view = family.spec_view(old_spec, f)
                old_backend.leave(b, view, view.node(node.name))
            if mtu != old_mtu:
                b.link_up(name=names.POD_BRIDGE, mtu=mtu)
                for pod in pods:
                    if pod.node == node.name:
                        b.link_up(name=names.pod_veth(spec.name, pod.namespace, pod.name), mtu=mtu)
            b.commit()
            records.forget_node(self.dir, node.name)  # the node's rules are written whole again
        if mtu != old_mtu:
            for pod in pods:
                pb = Batch(names.pod_netns(spec.name, pod.namespace, pod.name))
                pb.link_up(name="eth0", mtu=mtu)
                pb.commit()

    def _node_daemons(self, new: Topology):
        """The overlay's daemon on every node (bgp: bird): its configuration written, a new
        or dead one started, a running one told to reload a changed configuration.
        Returns what waits until the routes are learned."""
        spec = new.lab
        backend = registry.overlay(spec.overlay)
        d = backend.daemon
        if d is None:
            return None
        owned = self.journal.replay().procs
        for node in spec.nodes:
            home = self.dir.path / d.name / node.name
            home.mkdir(parents=True, exist_ok=True)
            conf, sock = home / f"{d.name}.conf", home / f"{d.name}.ctl"
            text = backend.daemon_config(spec, node, str(sock))
            changed = not conf.exists() or conf.read_text() != text
            if changed:
                tmp = conf.with_name(conf.name + ".new")
                tmp.write_text(text)
                os.replace(tmp, conf)
            key = names.daemon_key(node.name, d.name)
            rec = owned.get(key)
            if procs.record_alive(rec):
                if changed:
                    p = subprocess.run(backend.daemon_reload_argv(sock), capture_output=True, text=True)
                    if p.returncode != 0 or "error" in p.stdout.lower():
                        raise LabError(f"{d.program} on node {node.name} refused its new configuration: {(p.stdout + p.stderr).strip()}", hint=f"see {conf}")
                continue
            if rec:
                self.journal.release_proc(key)
            sock.unlink(missing_ok=True)
            procs.spawn(
                backend.daemon_argv(conf, sock),
                key=key,
                journal=self.journal,
                log=self.dir.logs / f"node_{node.name}_{d.name}.log",
                netns=names.node_netns(spec.name, node.name),
            )

        def dead() -> tuple[str, str] | None:
            owned = self.journal.replay().procs
            for node in spec.nodes:
                rec = owned.get(names.daemon_key(node.name, d.name))
                if rec and rec.get("pid") and not procs.alive(rec["pid"], rec.get("start")):
                    log = self.dir.logs / f"node_{node.name}_{d.name}.log"
                    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                    return node.name, tail[0] if tail else "no output"
            return None

        return lambda: backend.wait_converged(spec, lambda n: names.node_netns(spec.name, n), dead)

    def stop_node_daemons(self, spec: LabSpec, nodes) -> None:
        d = registry.overlay(spec.overlay).daemon
        if d is None:
            return
        self._stop_recorded([names.daemon_key(node.name, d.name) for node in nodes])

    def _stop_recorded(self, keys: list[str]) -> None:
        """Stop the recorded processes of these journal keys that run, and forget them."""
        owned = self.journal.replay().procs
        for key in keys:
            rec = owned.get(key)
            if procs.record_alive(rec):
                procs.stop([rec["pid"]])
            if rec:
                self.journal.release_proc(key)

    def raise_links(self, topo: Topology) -> list[str]:
        """Set up again the links of the lab's hosts that someone set down (`ip link set
        eth0 down` in a node to see its routes withdrawn): nodes' eth0, cni0, overlay
        device and pods' veths, externals' eth0, the switch's bridge and ports, with the
        routes the kernel dropped with them. Returns them as NETNS/DEV. Pods' own eth0 is the pod's business, as on a node. Links
        the run has not made yet are not there, and not looked at."""
        from labctl.kernel import links

        spec = topo.lab
        lab = spec.name
        backend = registry.overlay(spec.overlay)
        hosts = [n.name for n in spec.nodes] + [e.name for e in spec.externals]
        wanted = {names.underlay_netns(lab): [names.SWITCH_BRIDGE] + [names.switch_port(lab, h) for h in hosts]}
        for n in spec.nodes:
            veths = [names.pod_veth(lab, p.namespace, p.name) for p in topo.pods if p.node == n.name]
            wanted[names.node_netns(lab, n.name)] = ["eth0", names.POD_BRIDGE, *backend.devices, *backend.devices6, *veths]
        for e in spec.externals:
            wanted[names.external_netns(lab, e.name)] = ["eth0"]
        hosts_of = {names.node_netns(lab, n.name): n for n in spec.nodes} | {names.external_netns(lab, e.name): e for e in spec.externals}
        raised = []
        present = set(netns.listed())
        for ns, devices in wanted.items():
            down = links.down(ns, devices) if ns in present else []
            if not down:
                continue
            b = Batch(ns)
            for dev in down:
                b.link_up(name=dev)
            host = hosts_of.get(ns)
            if host is not None:
                # a link set down took the routes through it: the default route, the
                # overlay's entries (bird puts back its own), written again
                underlay.host_addresses(b, spec, host)
                if host in spec.nodes:
                    for f in family.lab_families(spec):
                        v = family.spec_view(spec, f)
                        for remote in spec.nodes:
                            if remote.name != host.name:
                                backend.peer(b, v, v.node(host.name), v.node(remote.name))
            b.commit()
            raised += [f"{ns}/{dev}" for dev in down]
        return raised

    def _links(self, plan: Plan, new: Topology) -> None:
        """Link impairments the topology file sets (or no longer sets) on nodes and externals."""
        if not plan.links:
            return
        from labctl.impair import kernel as impair
        from labctl.impair import tc

        lab = new.lab.name
        for kind, name, link in plan.links:
            ns = names.node_netns(lab, name) if kind == "node" else names.external_netns(lab, name)
            impair.set_link(ns, tc.from_spec(link))

    def _pods(self, plan: Plan, new: Topology) -> None:
        spec = new.lab
        lab = spec.name
        mtu = registry.overlay(spec.overlay).pod_mtu(spec)
        by_node: dict[str, list[Pod]] = defaultdict(list)
        for pod in plan.add_pods:
            by_node[pod.node].append(pod)
        for node_name, pods in by_node.items():
            b = Batch(names.node_netns(lab, node_name))
            cni0 = ifindex.of(b.netns, ifindex.CNI0, names.POD_BRIDGE)  # once per node, not per pod
            with ExitStack() as stack:
                for pod in pods:
                    fd = netns.open_fd(names.pod_netns(lab, pod.namespace, pod.name))
                    stack.callback(os.close, fd)
                    pod_plumbing.host_end(b, spec, pod, fd, mtu, cni0)
                b.commit()
            node = spec.node(node_name)
            for pod in pods:
                pb = Batch(names.pod_netns(lab, pod.namespace, pod.name))
                pod_plumbing.inside(pb, node, pod)
                pb.commit()
                self.progress("pods", 1)

    # -- container commands ----------------------------------------------------

    def _spawn(self, topo: Topology, pod: Pod, container: Container) -> None:
        assert container.command is not None
        procs.spawn(
            list(container.command),
            key=names.command_key(pod.key, container.name),
            journal=self.journal,
            log=self.dir.logs / f"{pod.namespace}_{pod.name}_{container.name}.log",
            netns=names.pod_netns(topo.lab.name, pod.namespace, pod.name),
            env=dns.service_env(topo, pod),  # as kubelet sets them when the container starts
        )

    def start_commands(self, topo: Topology, pod: Pod) -> None:
        for c in pod.containers:
            if c.command is not None:
                self._spawn(topo, pod, c)

    def stop_commands(self, pod: Pod) -> None:
        self._stop_recorded([names.command_key(pod.key, c.name) for c in pod.containers])

    def sync_external_commands(self, old: Topology | None, new: Topology) -> None:
        """Each external's command running as its entry says: started when new or dead,
        started again when it changed, stopped when the external or its command went."""
        owned = self.journal.replay().procs
        was = {e.name: e.command for e in old.lab.externals} if old is not None else {}
        now = {e.name: e.command for e in new.lab.externals}
        for name in set(was) | set(now):
            key = names.external_command_key(name)
            if procs.record_alive(owned.get(key)) and now.get(name) == was.get(name):
                continue
            self._stop_recorded([key])
            if now.get(name):
                log = self.dir.logs / f"ext_{name}.log"
                procs.spawn(list(now[name] or ()), key=key, journal=self.journal, log=log, netns=names.external_netns(new.lab.name, name))

    def restart_dead_commands(self, topo: Topology) -> int:
        """Like a kubelet with restartPolicy Always, `up` restarts commands that exited."""
        owned = self.journal.replay().procs
        n = 0
        for pod in topo.pods:
            for c in pod.containers:
                if c.command is None:
                    continue
                rec = owned.get(names.command_key(pod.key, c.name))
                if procs.record_alive(rec):
                    continue
                self._spawn(topo, pod, c)
                n += 1
        return n


def unlink_debris(old: Topology, debris: list[str]) -> None:
    """Links that namespaces made by an interrupted run left in namespaces that stay:
    a pod's veth on each node (its name comes from the pod's, whatever its node), a
    host's port on the switch. Deleted now, so the same names can be made again at
    once (the kernel frees a deleted namespace's links asynchronously, and not at all
    while a socket pins it)."""
    lab = old.lab.name
    prefix = len(lab) + 1
    pods = [n[prefix:].partition(".") for n in debris if "." in n]
    hosts = [n[prefix:] for n in debris if "." not in n and n != names.underlay_netns(lab)]
    if pods:
        for node in old.lab.nodes:
            b = Batch(names.node_netns(lab, node.name))
            for ns, _, pod in pods:
                b.link_del(names.pod_veth(lab, ns, pod))
            b.commit()
    if hosts and names.underlay_netns(lab) in netns.listed():
        b = Batch(names.underlay_netns(lab))
        for host in hosts:
            b.link_del(names.switch_port(lab, host))
        b.commit()
