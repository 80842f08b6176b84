"""Checks on the lab and its objects that a schema cannot express. Pure.

Every function returns a list of problems; none raises for bad input.
"""

from __future__ import annotations

import ipaddress
from typing import Callable

from labctl.model import dns, family, names
from labctl.model import impairment as tc
from labctl.model.errors import InvalidInput, Problem
from labctl.model.fields import PROTOCOLS, dns1123_label, dns1123_subdomain, label_problems, lb_pool_range, parse_cidr, port_name
from labctl.model.objects import DEFAULT_NAMESPACES, LabSpec, Pod, Topology

# -- networks ------------------------------------------------------------------

_NETWORK_FIELDS = (("nodeNetwork", "node_network"), ("podNetwork", "pod_network"), ("serviceNetwork", "service_network"))


def indexed(problems: list[Problem], i: int, dual: bool) -> list[Problem]:
    """A family's problems with their paths naming its slot of the list fields."""
    if not dual:
        return problems
    out = []
    for p in problems:
        path = p.path
        for fld in ("nodeNetwork", "podNetwork", "serviceNetwork", "loadBalancerPool"):
            if path == f"spec.{fld}":
                path = f"{path}[{i}]"
        for one, many in ((".ip", ".ips"), (".podCIDR", ".podCIDRs")):
            if path.endswith(one):
                path = path[: -len(one)] + f"{many}[{i}]"
        out.append(Problem(p.where, path, p.message))
    return out


def networks(spec: LabSpec, where: str) -> list[Problem]:
    """ipFamilies, and each family's networks (syntax, sizes, ranges, overlaps)."""
    fams = [family.NAMES.get(f) for f in spec.ip_families]
    problems: list[Problem] = []
    if len(set(spec.ip_families)) != len(spec.ip_families):
        problems.append(Problem(where, "spec.ipFamilies", f"{list(spec.ip_families)}: a family may be given once (dual-stack is [IPv4, IPv6] or [IPv6, IPv4])"))
        return problems
    fields_ = (("nodeNetwork", spec.node_networks), ("podNetwork", spec.pod_networks), ("serviceNetwork", spec.service_networks))
    if spec.load_balancer_pools:
        fields_ += (("loadBalancerPool", spec.load_balancer_pools),)
    for fld, values in fields_:
        if values and len(values) != len(fams) and not (fld == "loadBalancerPool" and len(values) < len(fams)):
            problems.append(
                Problem(
                    where,
                    f"spec.{fld}",
                    f"gives {len(values)} value(s) for {len(fams)} famil{'ies' if len(fams) > 1 else 'y'} {list(spec.ip_families)}: one per family, in their order",
                )
            )
            continue
        for i, value in enumerate(values):
            if i < len(fams) and family.of(value) != fams[i] and (fld != "loadBalancerPool" or len(values) == len(fams)):
                path = f"spec.{fld}[{i}]" if len(fams) > 1 or isinstance(value, str) and len(values) > 1 else f"spec.{fld}"
                problems.append(Problem(where, path, f"{value} is not {family.name(fams[i])} (spec.ipFamilies[{i}] is {family.name(fams[i])})"))
    if 6 in fams:
        from labctl.model.registry import IPV4_ONLY

        for fld, name in (("proxyMode", spec.proxy_mode), ("overlay", spec.overlay)):
            if name in IPV4_ONLY:
                problems.append(Problem(where, f"spec.{fld}", f"{name} serves IPv4 alone ({IPV4_ONLY[name]}): a lab with IPv6 uses another"))
    if problems:
        return problems
    dual = len(fams) > 1
    for i, fam in enumerate(fams):
        problems += indexed(_networks(family.spec_view(spec, fam), where, fam), i, dual)
    return problems


def _networks(spec: LabSpec, where: str, fam: int) -> list[Problem]:
    problems: list[Problem] = []
    nets = {}
    for fld, attr in _NETWORK_FIELDS:
        net = parse_cidr(getattr(spec, attr), where, f"spec.{fld}", problems, family=fam)
        if net is not None:
            nets[fld] = net
    names_ = list(nets)
    for i, a in enumerate(names_):
        for b in names_[i + 1 :]:
            if nets[a].overlaps(nets[b]):
                problems.append(Problem(where, f"spec.{b}", f"{nets[b]} overlaps spec.{a} {nets[a]}: node, pod and service networks must be disjoint"))
    limit = 29 if fam == 4 else 125
    if "nodeNetwork" in nets and nets["nodeNetwork"].prefixlen > limit:
        problems.append(Problem(where, "spec.nodeNetwork", f"{nets['nodeNetwork']} is too small for a node network (at most /{limit})"))
    mask_field = "spec.nodeCIDRMaskSizeIPv6" if fam == 6 and spec is not None else "spec.nodeCIDRMaskSize"
    if "podNetwork" in nets and spec.node_cidr_mask < nets["podNetwork"].prefixlen:
        problems.append(Problem(where, mask_field, f"/{spec.node_cidr_mask} is larger than podNetwork {nets['podNetwork']}"))
    elif "podNetwork" in nets and fam == 4 and spec.node_cidr_mask > 30:
        problems.append(Problem(where, mask_field, f"/{spec.node_cidr_mask} is too small for an IPv4 pod CIDR (at most /30)"))
    elif "podNetwork" in nets and spec.node_cidr_mask - nets["podNetwork"].prefixlen > 16:
        # kube-controller-manager: the node mask may be at most 16 bits longer than the cluster CIDR's
        problems.append(Problem(where, mask_field, f"/{spec.node_cidr_mask} is more than 16 bits longer than podNetwork {nets['podNetwork']}"))
    if "serviceNetwork" in nets and fam == 6 and nets["serviceNetwork"].prefixlen < 108:
        problems.append(Problem(where, "spec.serviceNetwork", f"{nets['serviceNetwork']} is too large: an IPv6 service CIDR is at least /108 (kube-apiserver)"))
    if "serviceNetwork" in nets and nets["serviceNetwork"].num_addresses < 16:
        problems.append(Problem(where, "spec.serviceNetwork", f"{nets['serviceNetwork']} is too small (at least /28: .1 and .10 are reserved)"))
    lo, _, hi = spec.node_port_range.partition("-")
    if not (lo.isdigit() and hi.isdigit() and 1 <= int(lo) <= int(hi) <= 65535):
        problems.append(Problem(where, "spec.nodePortRange", f"{spec.node_port_range!r} is not a port range first-last within 1-65535"))
    if spec.load_balancer_pool:
        problems += _lb_pool(spec, nets.get("nodeNetwork"), where)
    return problems


def _lb_pool(spec: LabSpec, node_net, where: str) -> list[Problem]:
    try:
        first, last = lb_pool_range(spec.load_balancer_pool)
    except ValueError:
        return [Problem(where, "spec.loadBalancerPool", f"{spec.load_balancer_pool!r} is not a range first-last of addresses of one family")]
    if node_net is not None and first.version != node_net.version:
        return [Problem(where, "spec.loadBalancerPool", f"{spec.load_balancer_pool} is not inside nodeNetwork {node_net}")]
    if first > last:
        return [Problem(where, "spec.loadBalancerPool", f"{first} comes after {last}")]
    if node_net is not None and not (first in node_net and last in node_net):
        return [Problem(where, "spec.loadBalancerPool", f"{spec.load_balancer_pool} is not inside nodeNetwork {node_net}")]
    if node_net is not None and first <= node_net.network_address + 1 <= last:
        return [Problem(where, "spec.loadBalancerPool", f"{spec.load_balancer_pool} holds the node network's gateway {node_net.network_address + 1}")]
    return []


# -- nodes and externals -------------------------------------------------------


def host_names(spec: LabSpec, where: str) -> list[Problem]:
    """Names of nodes and externals: DNS-1123 labels, unique across both, and node labels."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for group, items in (("nodes", spec.nodes), ("externals", spec.externals)):
        for i, h in enumerate(items):
            path = f"spec.{group}[{i}]"
            why = dns1123_label(h.name)
            if why:
                problems.append(Problem(where, f"{path}.name", why))
            elif h.name == names.UNDERLAY:
                problems.append(Problem(where, f"{path}.name", f"{h.name!r} is reserved for the lab's underlay switch"))
            if h.name in seen:
                problems.append(Problem(where, f"{path}.name", f"duplicate name {h.name!r} (also {seen[h.name]})"))
            else:
                seen[h.name] = path
    for i, n in enumerate(spec.nodes):
        problems += label_problems(n.labels, where, f"spec.nodes[{i}].labels")
    for group, items in (("nodes", spec.nodes), ("externals", spec.externals)):
        for i, h in enumerate(items):
            problems += _link_problems(h.link, where, f"spec.{group}[{i}].link")
    return problems


def _link_problems(link: dict, where: str, path: str) -> list[Problem]:
    """Each field of a host's `link:` as `labctl link` would read it."""
    problems = []
    checks = {
        "delay": lambda v: tc.parse_time("delay", v, ""),
        "jitter": lambda v: tc.parse_time("jitter", v, ""),
        "loss": lambda v: tc.parse_loss(v, ""),
        "rate": lambda v: tc.parse_rate(v, ""),
    }
    for key, check in checks.items():
        if key in link:
            try:
                check(link[key])
            except InvalidInput as e:
                problems.append(Problem(where, f"{path}.{key}", str(e)[len(key) + 1 :]))
    if "jitter" in link and "delay" not in link:
        problems.append(Problem(where, f"{path}.jitter", "needs delay (netem varies the delay by the jitter)"))
    return problems


def hosts(spec: LabSpec, where: str) -> list[Problem]:
    """Addresses and pod CIDRs of nodes and externals, per family (the networks are valid)."""
    fams = family.lab_families(spec)
    problems: list[Problem] = []
    for group, items in (("nodes", spec.nodes), ("externals", spec.externals)):
        for i, h in enumerate(items):
            for fld, values in (("ips", h.ips), ("podCIDRs", getattr(h, "pod_cidrs", ()))):
                if len(values) > len(fams):
                    problems.append(
                        Problem(
                            where,
                            f"spec.{group}[{i}].{fld}",
                            f"gives {len(values)} values for {len(fams)} famil{'ies' if len(fams) > 1 else 'y'} {list(spec.ip_families)}",
                        )
                    )
    if problems:
        return problems
    for i, fam in enumerate(fams):
        problems += indexed(_hosts(family.spec_view(spec, fam), where, fam), i, len(fams) > 1)
    return problems


def _hosts(spec: LabSpec, where: str, fam: int) -> list[Problem]:
    problems: list[Problem] = []
    groups = [("nodes", spec.nodes), ("externals", spec.externals)]
    node_net = ipaddress.ip_network(spec.node_network, strict=False)
    pod_net = ipaddress.ip_network(spec.pod_network, strict=False)
    ips: dict[str, str] = {}
    lb = lb_pool_range(spec.load_balancer_pool) if spec.load_balancer_pool else None
    for group, items in groups:
        for i, h in enumerate(items):
            path = f"spec.{group}[{i}]"
            if h.ip is None:
                continue
            try:
                ip = ipaddress.ip_address(h.ip)
                if ip.version != fam:
                    raise ValueError(h.ip)
            except ValueError:
                problems.append(Problem(where, f"{path}.ip", f"{h.ip!r} is not an IPv{fam} address"))
                continue
            if ip not in node_net or ip in (node_net.network_address, node_net.broadcast_address):
                problems.append(Problem(where, f"{path}.ip", f"{ip} is not a host address of nodeNetwork {node_net}"))
            elif ip == node_net.network_address + 1:
                problems.append(Problem(where, f"{path}.ip", f"{ip} is the node network's gateway (the underlay switch)"))
            if str(ip) in ips:
                problems.append(Problem(where, f"{path}.ip", f"{ip} is already the address of {ips[str(ip)]}"))
            ips[str(ip)] = path
            if lb and lb[0] <= ip <= lb[1]:
                problems.append(Problem(where, f"{path}.ip", f"{ip} is inside loadBalancerPool {spec.load_balancer_pool}"))
    cidrs: dict[ipaddress.IPv4Network, str] = {}
    for i, n in enumerate(spec.nodes):
        path = f"spec.nodes[{i}]"
        if n.pod_cidr is None:
            continue
        net = parse_cidr(n.pod_cidr, where, f"{path}.podCIDR", problems, family=fam)
        if net is None:
            continue
        if not net.subnet_of(pod_net):
            problems.append(Problem(where, f"{path}.podCIDR", f"{net} is not inside podNetwork {pod_net}"))
        if net.prefixlen > net.max_prefixlen - 2:
            problems.append(Problem(where, f"{path}.podCIDR", f"{net} is too small for pods (at most /{net.max_prefixlen - 2})"))
        for other, opath in cidrs.items():
            if net.overlaps(other):
                problems.append(Problem(where, f"{path}.podCIDR", f"{net} overlaps {opath}.podCIDR {other}"))
        cidrs[net] = path
    return problems


# -- Kubernetes objects -------------------------------------------------------


def pods(topo_pods: list[Pod], spec: LabSpec | None, namespaces: dict[str, dict[str, str]], where: Callable[[int], str]) -> list[Problem]:
    """Pod names, namespaces, nodes and ports. `spec` is None when the Lab document is itself invalid."""
    problems: list[Problem] = []
    node_names = {n.name for n in spec.nodes} if spec else None
    seen: dict[str, Pod] = {}
    for pod in topo_pods:
        w = where(pod.doc)
        base = "spec.template" if pod.owner else ""
        meta = f"{base}.metadata" if base else "metadata"
        spec_path = f"{base}.spec" if base else "spec"
        if pod.owner is None:
            why = dns1123_subdomain(pod.name)
            if why:
                problems.append(Problem(w, "metadata.name", why))
        if pod.key in seen:
            first = seen[pod.key]
            problems.append(Problem(w, "metadata.name", f"pod {pod.key} is already made by {where(first.doc)}"))
        seen[pod.key] = pod
        if pod.namespace not in namespaces:
            problems.append(Problem(w, "metadata.namespace", f"namespace {pod.namespace!r} is not defined: add a Namespace document for it"))
        if node_names is not None and pod.node is not None and pod.node not in node_names:
            known = ", ".join(sorted(node_names))
            problems.append(Problem(w, f"{spec_path}.nodeName", f"no node named {pod.node!r} in the lab (nodes: {known})"))
        if pod.owner is None:
            problems += label_problems(pod.labels, w, f"{meta}.labels")
        problems += _containers(pod, w, spec_path)
        problems += dns.check_pod(pod, w, spec_path)
        netns = names.pod_netns(spec.name if spec else "lab", pod.namespace, pod.name)
        if len(netns) > names.NETNS_NAME_MAX:
            problems.append(Problem(w, "metadata.name", f"too long: the namespace name {netns[:40]}... exceeds 255 characters"))
    return problems


def _containers(pod: Pod, w: str, spec_path: str) -> list[Problem]:
    problems: list[Problem] = []
    cnames: set[str] = set()
    port_names: set[str] = set()
    numbers: dict[tuple[int, str], str] = {}
    for ci, c in enumerate(pod.containers):
        cpath = f"{spec_path}.containers[{ci}]"
        why = dns1123_label(c.name)
        if why:
            problems.append(Problem(w, f"{cpath}.name", why))
        if c.name in cnames:
            problems.append(Problem(w, f"{cpath}.name", f"duplicate container name {c.name!r}"))
        cnames.add(c.name)
        for pi, p in enumerate(c.ports):
            ppath = f"{cpath}.ports[{pi}]"
            if not 1 <= p.port <= 65535:
                problems.append(Problem(w, f"{ppath}.containerPort", f"{p.port} is out of range 1-65535"))
            if p.protocol not in PROTOCOLS:
                problems.append(Problem(w, f"{ppath}.protocol", f"must be one of TCP, UDP, SCTP, not {p.protocol!r}"))
            if p.name is not None:
                why = port_name(p.name)
                if why:
                    problems.append(Problem(w, f"{ppath}.name", why))
                elif p.name in port_names:
                    problems.append(Problem(w, f"{ppath}.name", f"duplicate port name {p.name!r} in the pod"))
                port_names.add(p.name)
            key = (p.port, p.protocol)
            if key in numbers:
                problems.append(Problem(w, f"{ppath}.containerPort", f"{p.port}/{p.protocol} is already declared at {numbers[key]}"))
            numbers[key] = ppath
    return problems


def namespaces(declared: dict[str, dict[str, str]], where_of: dict[str, str]) -> list[Problem]:
    problems: list[Problem] = []
    for name, labels in declared.items():
        w = where_of.get(name, "namespace")
        why = dns1123_label(name)
        if why:
            problems.append(Problem(w, "metadata.name", why))
        problems += label_problems({k: v for k, v in labels.items() if k != "kubernetes.io/metadata.name"}, w, "metadata.labels")
    return problems


def all_namespaces(declared: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    out = {n: {"kubernetes.io/metadata.name": n} for n in DEFAULT_NAMESPACES}
    out.update(declared)
    return out


def interface_names(topo: Topology) -> list[Problem]:
    """Derived interface names fit IFNAMSIZ and are unique where they live."""
    problems: list[Problem] = []
    lab = topo.lab.name
    ports: dict[str, str] = {}
    for h in list(topo.lab.nodes) + list(topo.lab.externals):
        port = names.switch_port(lab, h.name)
        if len(port) > names.IFNAMSIZ:
            problems.append(Problem("lab", h.name, f"switch port name {port!r} is longer than 15 characters"))
        if port in ports:
            problems.append(Problem("lab", h.name, f"switch port name {port!r} collides with {ports[port]}'s"))
        ports[port] = h.name
    per_node: dict[tuple[str | None, str], str] = {}
    for p in topo.pods:
        veth = names.pod_veth(lab, p.namespace, p.name)
        if (p.node, veth) in per_node:
            problems.append(Problem("lab", p.key, f"veth name {veth} collides with pod {per_node[(p.node, veth)]} on node {p.node}"))
        per_node[(p.node, veth)] = p.key
    return problems
