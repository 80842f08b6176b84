"""What to change to bring a lab from one topology to another. Pure.

`up` on a new lab plans from nothing; `up` on a running lab, `apply` and
`delete` plan from the applied topology. Unchanged objects are left alone
(same addresses, same MACs). Changes labctl cannot make in place (the lab's
networks, its overlay, a node's address) are refused, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labctl.model import family, names
from labctl.model.errors import InvalidInput, Problem
from labctl.model.objects import External, LabSpec, Node, Pod, Topology
from labctl.plan.diff import keyed

# Lab fields fixed for the life of a lab: changing them means `down` then `up`.
FIXED = {
    "node_network": "spec.nodeNetwork",
    "pod_network": "spec.podNetwork",
    "service_network": "spec.serviceNetwork",
    "node_cidr_mask": "spec.nodeCIDRMaskSize",
    "ip_families": "spec.ipFamilies",
    "node_networks": "spec.nodeNetwork",
    "pod_networks": "spec.podNetwork",
    "service_networks": "spec.serviceNetwork",
    "node_cidr_mask6": "spec.nodeCIDRMaskSizeIPv6",
}
_PLURAL = {"node_networks": "node_network", "pod_networks": "pod_network", "service_networks": "service_network", "ips": "ip", "pod_cidrs": "pod_cidr"}


def _value(obj, attr: str):
    """A field as compared across `up`s: a plural field left empty (a state written before
    dual-stack) is its singular one."""
    v = getattr(obj, attr)
    if attr in _PLURAL and not v:
        single = getattr(obj, _PLURAL[attr])
        return (single,) if single else ()
    if attr == "node_cidr_mask6" and family.lab_families(obj) == (4,):
        return None  # no IPv6 family: not in use
    return tuple(v) if isinstance(v, (list, tuple)) else v


@dataclass
class Plan:
    new_lab: bool = False
    add_nodes: list[Node] = field(default_factory=list)
    remove_nodes: list[Node] = field(default_factory=list)
    add_externals: list[External] = field(default_factory=list)
    remove_externals: list[External] = field(default_factory=list)
    add_pods: list[Pod] = field(default_factory=list)
    remove_pods: list[Pod] = field(default_factory=list)
    commands_changed: list[Pod] = field(default_factory=list)  # pods whose container commands changed
    files_changed: list[Pod] = field(default_factory=list)  # pods whose resolv.conf or hosts must be written again
    links: list[tuple[str, str, dict]] = field(default_factory=list)  # ("node" | "ext", name, link): impairments to (re)apply
    overlay_from: str | None = None  # the overlay a running lab leaves for spec.overlay (pods are kept)

    def namespaces_to_create(self, lab: str) -> list[str]:
        """The namespaces this plan makes, in the order they are made."""
        out = [names.underlay_netns(lab)] if self.new_lab else []
        out += [names.node_netns(lab, n.name) for n in self.add_nodes]
        out += [names.external_netns(lab, e.name) for e in self.add_externals]
        out += [names.pod_netns(lab, p.namespace, p.name) for p in self.add_pods]
        return out

    def rebuild(self, lost: list[Pod], new: Topology) -> None:
        """Pods whose namespace vanished under the lab: remove what is left, build again."""
        wanted = {p.key: p for p in new.pods}
        for pod in lost:
            if all(x.key != pod.key for x in self.remove_pods):
                self.remove_pods.append(pod)
            if pod.key in wanted and all(x.key != pod.key for x in self.add_pods):
                self.add_pods.append(wanted[pod.key])

    def empty(self) -> bool:
        return not (
            self.new_lab
            or self.add_nodes
            or self.remove_nodes
            or self.add_externals
            or self.remove_externals
            or self.add_pods
            or self.remove_pods
            or self.commands_changed
            or self.files_changed
            or self.links
            or self.overlay_from
        )

    def summary(self) -> dict[str, int]:
        return {
            "nodesAdded": len(self.add_nodes),
            "nodesRemoved": len(self.remove_nodes),
            "externalsAdded": len(self.add_externals),
            "externalsRemoved": len(self.remove_externals),
            "podsAdded": len(self.add_pods),
            "podsRemoved": len(self.remove_pods),
            "linksChanged": len(self.links),
        }


def _fixed_changes(old: LabSpec, new: LabSpec) -> list[Problem]:
    out = []
    for attr, path in FIXED.items():
        a, b = _value(old, attr), _value(new, attr)
        if a != b:
            show = lambda x: ", ".join(x) if isinstance(x, tuple) else x  # noqa: E731
            out.append(Problem(f"Lab {new.name}", path, f"changed from {show(a)} to {show(b)}; a running lab keeps it (run `labctl down {new.name}` first)"))
    return out


def _host_changes(old: list, new: list, what: str, attrs: tuple[str, ...]) -> list[Problem]:
    before = {h.name: h for h in old}
    out = []
    for h in new:
        o = before.get(h.name)
        for attr in attrs:
            a, b = (_value(o, attr), _value(h, attr)) if o is not None else (None, None)
            if a != b:
                single = len(a) <= 1 and len(b) <= 1
                out.append(
                    Problem(
                        f"Lab {what} {h.name}",
                        _PLURAL[attr] if single else attr,
                        f"changed from {', '.join(map(str, a))} to {', '.join(map(str, b))}; remove the {what} and add it back, or run `labctl down` first",
                    )
                )
    return out


def _command_signature(p: Pod) -> tuple:
    return tuple((c.name, c.command) for c in p.containers if c.command is not None)


def _files_signature(p: Pod) -> tuple:
    """What a pod's /etc/netns files depend on, besides the lab's DNS settings."""
    return (p.hostname, p.subdomain, p.dns_policy, repr(sorted(p.dns_config.items())))


def _lab_dns(spec: LabSpec) -> tuple:
    return (spec.dns, spec.cluster_domain, spec.service_network)


def plan(old: Topology | None, new: Topology) -> Plan:
    if old is None:
        return Plan(
            new_lab=True,
            add_nodes=list(new.lab.nodes),
            add_externals=list(new.lab.externals),
            add_pods=list(new.pods),
            links=_links(None, new),
        )
    problems = _fixed_changes(old.lab, new.lab)
    problems += _host_changes(list(old.lab.nodes), list(new.lab.nodes), "node", ("ips", "pod_cidrs"))
    problems += _host_changes(list(old.lab.externals), list(new.lab.externals), "external", ("ips",))
    if problems:
        raise InvalidInput(problems, hint="changes to a running lab are limited to adding and removing nodes, externals and objects")
    p = Plan()
    was_nodes, now_nodes = {n.name: n for n in old.lab.nodes}, {n.name: n for n in new.lab.nodes}
    nodes = keyed(was_nodes, now_nodes)
    p.add_nodes = [now_nodes[k] for k in nodes.added]
    p.remove_nodes = [was_nodes[k] for k in nodes.removed]
    was_ext, now_ext = {e.name: e for e in old.lab.externals}, {e.name: e for e in new.lab.externals}
    externals = keyed(was_ext, now_ext)
    p.add_externals = [now_ext[k] for k in externals.added]
    p.remove_externals = [was_ext[k] for k in externals.removed]
    before = {x.key: x for x in old.pods}
    after = {x.key: x for x in new.pods}
    pods = keyed(before, after)
    p.add_pods = [after[k] for k in pods.added]
    dns_changed = _lab_dns(old.lab) != _lab_dns(new.lab)
    for key in (*pods.changed, *pods.kept):
        o, pod = before[key], after[key]
        if (o.node, family.addresses(o)) != (pod.node, family.addresses(pod)):
            p.remove_pods.append(o)
            p.add_pods.append(pod)
            continue
        if _command_signature(o) != _command_signature(pod):
            p.commands_changed.append(pod)
        if _files_signature(o) != _files_signature(pod) or dns_changed:
            p.files_changed.append(pod)
    p.remove_pods += [before[k] for k in pods.removed]
    p.links = _links(old, new)
    if old.lab.overlay != new.lab.overlay:
        p.overlay_from = old.lab.overlay
    return p


def _links(old: Topology | None, new: Topology) -> list[tuple[str, str, dict]]:
    """Hosts whose link impairment differs from what was applied (an empty one: cleared)."""
    was = {} if old is None else {("node", n.name): n.link for n in old.lab.nodes} | {("ext", e.name): e.link for e in old.lab.externals}
    hosts = [("node", n.name, n.link) for n in new.lab.nodes] + [("ext", e.name, e.link) for e in new.lab.externals]
    return [(kind, name, dict(link)) for kind, name, link in hosts if was.get((kind, name), {}) != link]
