"""Loading a topology: strict parse -> resolve defaults -> validate.

No kernel access and no root: `labctl validate` runs exactly this, and every
other command runs it before touching anything. All problems are collected
and raised together as one InvalidInput (exit 2).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from labctl.model import family, fields, ingress, schema, services, system, validate
from labctl.model.documents import Document, read_file
from labctl.model.errors import InvalidInput, Problem, short_repr
from labctl.model.expect import check_expectations
from labctl.model.manifests import KINDS, Objects, accepted_kinds
from labctl.model.objects import External, LabSpec, Node, Topology
from labctl.model.resolve import resolve

LAB_API_VERSION = "labctl/v1"


def _families(spec: dict[str, Any]) -> tuple[str, ...]:
    fams = spec.get("ipFamilies")
    return tuple(str(f) for f in fams) if isinstance(fams, list) and fams else ("IPv4",)


def _per_family(value: Any, fams: tuple[str, ...], kind: str) -> tuple[str, ...]:
    """A network given as one CIDR or a list (one per family); the families' defaults
    when not given."""
    if value is None:
        return tuple(family.DEFAULTS[family.NAMES.get(f, 4)][kind] for f in fams)
    return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)


def _slots(one: Any, many: Any, fams: tuple[str, ...]) -> tuple:
    """A host's addresses (or pod CIDRs) aligned with the lab's families (None where not
    given): a list in the families' order, or one value in its family's slot."""
    if isinstance(many, list) and many:
        return tuple(str(v) for v in many)
    if one is None:
        return ()
    nums = [family.NAMES.get(f, 4) for f in fams]
    fam = family.of(str(one))
    i = nums.index(fam) if fam in nums else 0
    return tuple(str(one) if j == i else None for j in range(max(len(fams), i + 1)))


def spec_from_lab(data: dict[str, Any]) -> LabSpec:
    """The Lab document (schema-valid) as a LabSpec, defaults filled in."""
    spec = data.get("spec") or {}
    nodes = spec.get("nodes")
    if nodes is None:
        nodes = [{"name": "node1"}]
    fams = _families(spec)
    primary = family.NAMES.get(fams[0], 4)
    node_nets = _per_family(spec.get("nodeNetwork"), fams, "node")
    pod_nets = _per_family(spec.get("podNetwork"), fams, "pod")
    svc_nets = _per_family(spec.get("serviceNetwork"), fams, "service")
    pool = spec.get("loadBalancerPool")
    pools = tuple(str(p) for p in pool) if isinstance(pool, list) else (str(pool),) if pool else ()
    mask4 = spec.get("nodeCIDRMaskSize", 24 if len(fams) > 1 or primary == 4 else None)
    mask6 = spec.get("nodeCIDRMaskSizeIPv6", spec.get("nodeCIDRMaskSize", 64) if len(fams) == 1 else 64)

    def first(values: tuple) -> Any:
        return values[0] if values else None

    def host(h: dict, **more) -> dict:
        ips = _slots(h.get("ip"), h.get("ips"), fams)
        return {"name": h["name"], "ip": first(ips), "ips": ips, "link": dict(h.get("link") or {}), **more}

    def node(n: dict) -> Node:
        cidrs = _slots(n.get("podCIDR"), n.get("podCIDRs"), fams)
        return Node(**host(n, pod_cidr=first(cidrs), pod_cidrs=cidrs, labels=dict(n.get("labels") or {})))

    return LabSpec(
        name=data["metadata"]["name"],
        node_network=node_nets[0],
        pod_network=pod_nets[0],
        service_network=svc_nets[0],
        node_port_range=spec.get("nodePortRange", LabSpec.node_port_range),
        overlay=spec.get("overlay", LabSpec.overlay),
        proxy_mode=spec.get("proxyMode", LabSpec.proxy_mode),
        ipvs_scheduler=spec.get("ipvsScheduler", LabSpec.ipvs_scheduler),
        dns=spec.get("dns", LabSpec.dns),
        cluster_domain=spec.get("clusterDomain", LabSpec.cluster_domain),
        dns_upstream=spec.get("dnsUpstream"),
        load_balancer_pool=first(pools),
        node_cidr_mask=(mask6 if primary == 6 else mask4) or 24,
        expect=tuple(spec.get("expect") or ()),
        nodes=tuple(node(n) for n in nodes),
        externals=tuple(
            External(
                **host(e),
                ports=_external_ports(e.get("ports") or []),
                command=tuple(e["command"]) if e.get("command") else None,
            )
            for e in spec.get("externals") or []
        ),
        ingress=ingress.spec_from_lab(spec.get("ingress")),
        gateway_api=bool(spec.get("gatewayAPI", False)),
        bgp_as=(spec.get("bgp") or {}).get("asNumber"),
        ip_families=fams,
        node_networks=node_nets,
        pod_networks=pod_nets,
        service_networks=svc_nets,
        load_balancer_pools=pools,
        node_cidr_mask4=mask4 or 24,
        node_cidr_mask6=mask6,
    )


def _null_items(where: str, data: Any) -> list[Problem]:
    """Null list items (`ports: [null]`), which the schemas let through; the API
    server would decode them as empty objects and refuse those."""
    out: list[Problem] = []
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack += [(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if v is None:
                    out.append(Problem(where, f"{path}[{i}]", "must not be null"))
                else:
                    stack.append((v, f"{path}[{i}]"))
    return out


def _split(docs: list[Document], require_lab: bool, problems: list[Problem]) -> tuple[Document | None, list[Document]]:
    lab: Document | None = None
    k8s: list[Document] = []
    for pos, d in enumerate(docs):
        if not isinstance(d.data, dict):
            problems.append(Problem(f"document {d.index} (line {d.line})", "", "a document must be a mapping (apiVersion, kind, metadata, ...)"))
            continue
        kind = d.data.get("kind")
        if kind == "Lab" or d.data.get("apiVersion") == LAB_API_VERSION:
            if not require_lab:
                problems.append(Problem(d.where(), "kind", "a Lab document is not accepted here: use `labctl up FILE` to change the lab itself"))
            elif lab is not None:
                problems.append(Problem(d.where(), "kind", f"a topology has exactly one Lab document (the first is document {lab.index})"))
            elif pos != 0:
                problems.append(Problem(d.where(), "kind", "the Lab document must be the first document of the file"))
            else:
                lab = d
                problems += schema.validate_lab(d.where(), d.data)
            continue
        if not isinstance(kind, str) or kind not in KINDS:
            what = f"unknown kind {short_repr(kind)}" if kind is not None else "missing kind"
            problems.append(Problem(d.where(), "kind", f"{what}; labctl accepts Lab ({LAB_API_VERSION}), {accepted_kinds()}"))
            continue
        k = KINDS[kind]
        if not k.serves(d.data.get("apiVersion")):
            problems.append(Problem(d.where(), "apiVersion", f"{kind} is {k.api_version!r}, not {short_repr(d.data.get('apiVersion'))}"))
            continue
        # Manifests of a running lab were validated when they were applied.
        found = []
        if d.index > 0:
            found = schema.validate_kubernetes(d.where(), kind, k.api_version, d.data) if k.kubernetes_schema else []
            found += _null_items(d.where(), d.data)
        meta = d.data.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            found.append(Problem(d.where(), "metadata.name", "is required"))
        problems += found
        # A document whose only faults are unknown fields is well typed: read it
        # anyway, so its other problems are reported in the same run.
        if all(p.message.startswith("unknown field") for p in found):
            k8s.append(d)
    if require_lab and lab is None and not any(p.path == "kind" and "Lab" in p.message for p in problems):
        first = docs[0].where() if docs else "the file"
        problems.append(Problem(first, "", f"the first document must be the Lab (apiVersion: {LAB_API_VERSION}, kind: Lab)"))
    return lab, k8s


def build(
    docs: list[Document],
    source: str,
    previous: Topology | None = None,
    lab_spec: LabSpec | None = None,
) -> Topology:
    """Documents -> a resolved, validated Topology. Raises InvalidInput.

    `lab_spec` is given when the documents are Kubernetes objects for a
    running lab (apply / delete); otherwise the first document must be the Lab.
    """
    problems: list[Problem] = []
    lab, k8s = _split(docs, require_lab=lab_spec is None, problems=problems)
    objs = Objects()
    for d in k8s:
        KINDS[d.kind].read(d, objs)
    problems += objs.problems
    by_index = {d.index: d for d in docs}

    def where_of(index: int) -> str:
        return by_index[index].where() if index in by_index else f"document {index}"

    namespaces = validate.all_namespaces(objs.namespaces)
    problems += validate.namespaces(objs.namespaces, {n: d.where() for n, d in objs.namespace_docs.items()})

    spec = lab_spec
    if lab is not None and all(p.message.startswith("unknown field") for p in problems if p.where == lab.where()):
        spec = spec_from_lab(lab.data)
    topo = None
    if spec is not None:
        where = lab.where() if lab is not None else f"Lab {spec.name}"
        names_found = validate.host_names(spec, where)
        problems += names_found
        found = validate.networks(spec, where)
        if not found:
            found = validate.hosts(spec, where)
        problems += found
        found += names_found
        doc_problems = []
        for addon in system.SYSTEM_ADDONS:
            problems += addon.check(spec, where)
            doc_problems += addon.check_documents(spec, [(d.index, d.data) for d in k8s], where_of)
        problems += doc_problems
        addons = system.on(spec)
        manifests = [d.data for d in k8s]
        for addon in addons:
            namespaces.update({n: {"kubernetes.io/metadata.name": n} for n in addon.namespaces(spec) if n not in namespaces})
        clash = [p for a in addons for p in a.clashes(spec, objs.pods, objs.services, where_of, manifests)]
        problems += clash
        clash += doc_problems  # no add-on objects for manifests the add-on refuses
        if not found:
            # system pods come last: they do not shift the addresses of the lab's own pods
            pods_in = objs.pods + ([p for a in addons for p in a.pods(spec, manifests)] if not clash else [])
            topo, found = resolve(spec, namespaces, pods_in, objs.deployments, [d.data for d in k8s], previous, where, where_of)
            problems += found
            problems += validate.hosts(topo.lab, where)
            problems += validate.interface_names(topo)
    pods = list(topo.pods) if topo else objs.pods
    problems += validate.pods(pods, spec, namespaces, where_of)
    found = services.check(objs.services, spec, namespaces, where_of)
    problems += found
    if topo is not None and not found:
        # an add-on's Services that are allocated like the user's (the ingress controller's LoadBalancer)
        managed = [s for a in system.on(topo.lab) for s in a.allocated_services(topo.lab, list(topo.documents))]
        allocated, found = services.allocate(objs.services + managed, topo.lab, previous, where_of)
        problems += found
        own = [services.kubernetes_service(topo.lab)] + [s for a in system.on(topo.lab) for s in a.services(topo.lab)]
        topo = replace(topo, services=(*own, *allocated))
    for pol in objs.policies:
        if pol.namespace not in namespaces:
            problems.append(Problem(where_of(pol.doc), "metadata.namespace", f"namespace {pol.namespace!r} is not defined: add a Namespace document for it"))
    seen_pol: dict[str, int] = {}
    for pol in objs.policies:
        if pol.key in seen_pol:
            problems.append(Problem(where_of(pol.doc), "metadata.name", f"network policy {pol.key} is already defined by {where_of(seen_pol[pol.key])}"))
        seen_pol[pol.key] = pol.doc
    if topo is not None:
        import datetime

        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        created = ingress.stamp(previous.created if previous is not None else None, topo.documents, now)
        ingresses, classes = ingress.from_documents(topo.lab, topo.documents, created)
        topo = replace(topo, policies=tuple(objs.policies), ingresses=ingresses, ingress_classes=classes, created=created)
        problems += check_expectations(topo, lab.where() if lab is not None else f"Lab {topo.lab.name}")
    if problems:
        order = {d.where(): (d.index if d.index > 0 else 10**6 - d.index) for d in docs}
        raise InvalidInput(sorted(_unique(problems), key=lambda p: order.get(p.where, 0)), source=source)
    assert topo is not None
    return topo


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def load(path: str, previous: Topology | None = None) -> Topology:
    docs, source = read_file(path)
    if not docs:
        raise InvalidInput(f"{source} holds no documents: a topology starts with a Lab document")
    return build(docs, source, previous)


def lab_name_of_docs(docs: list[Document]) -> str | None:
    """The lab's name, if the first document is a Lab that has one."""
    if docs and isinstance(docs[0].data, dict) and docs[0].data.get("kind") == "Lab":
        name = (docs[0].data.get("metadata") or {}).get("name")
        if not fields.lab_name(name):
            return name
    return None


def lab_name_of(path: str) -> str:
    """Just the lab's name from a file (for `down -f`), without full validation."""
    docs, source = read_file(path)
    name = lab_name_of_docs(docs)
    if name is None:
        raise InvalidInput(f"{source}: the first document is not a Lab with a valid metadata.name")
    return name


def _external_ports(given: list) -> tuple[tuple[int, str], ...]:
    """externals[].ports: a number is TCP."""
    return tuple((p, "TCP") if isinstance(p, int) else (p["port"], p.get("protocol") or "TCP") for p in given)
