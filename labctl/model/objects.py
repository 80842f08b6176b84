"""The lab's desired state as plain data.

The topology file is parsed into these objects (labctl.model.parse), the
defaults are filled in (labctl.model.resolve) and the result is checked
(labctl.model.validate). The same objects are stored as the applied state of a
running lab, so `up` and `apply` compare two of them (labctl.plan.topology).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import cached_property
from typing import Any

from labctl.model import ingress
from labctl.model.policy import from_manifest

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def _plain(obj: Any) -> Any:
    """Dataclasses, tuples and dicts as JSON-ready data (what dataclasses.asdict
    gives, without its deep copies: writing a big lab's state stays fast)."""
    if is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"  # TCP | UDP | SCTP
    name: str | None = None


@dataclass(frozen=True)
class Container:
    name: str
    ports: tuple[ContainerPort, ...] = ()
    command: tuple[str, ...] | None = None  # command + args; None: the lab's responder serves the ports


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    containers: tuple[Container, ...] = ()
    node: str | None = None  # requested nodeName, then the node it was placed on
    ip: str | None = None  # its address of the lab's first family (status.podIP)
    owner: str | None = None  # the Deployment that made it
    hostname: str | None = None
    subdomain: str | None = None
    dns_policy: str = "ClusterFirst"  # ClusterFirst | ClusterFirstWithHostNet | Default | None
    dns_config: dict[str, Any] = field(default_factory=dict, hash=False)  # spec.dnsConfig as given
    service_links: bool = True  # spec.enableServiceLinks: service environment variables in `labctl exec`
    ready: bool = True  # a failed readiness probe takes a pod out of its services' endpoints
    terminating: bool = False  # deleted with a grace period: still serving, no longer ready
    grace: float | None = None  # spec.terminationGracePeriodSeconds when the manifest gives it
    ips: tuple[str, ...] = ()  # one address per lab family, the first being `ip` (status.podIPs)
    doc: int = 0  # index of the document it came from, for messages

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ports(self) -> list[ContainerPort]:
        return [p for c in self.containers for p in c.ports]

    def served_ports(self) -> list[ContainerPort]:
        """Ports the lab's responder serves (containers without a command)."""
        return [p for c in self.containers if c.command is None for p in c.ports]


@dataclass(frozen=True)
class ServicePort:
    port: int
    protocol: str = "TCP"
    name: str | None = None
    target_port: int | str | None = None  # None: the same as port; a string names a container port
    node_port: int | None = None

    def target(self) -> int | str:
        return self.port if self.target_port is None else self.target_port


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ip: str | None = None  # "None": headless
    selector: dict[str, str] | None = field(default=None, hash=False)
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ip: str | None = None
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    session_affinity: str = "None"
    affinity_timeout: int = 10800
    external_name: str | None = None
    publish_not_ready: bool = False
    allocate_lb_node_ports: bool = True
    load_balancer_source_ranges: tuple[str, ...] = ()  # CIDRs allowed to the LoadBalancer IP (KUBE-FW-)
    static_endpoints: tuple[str, ...] = ()  # "ip:port" for services without a selector (the built-in kubernetes)
    health_check_node_port: int | None = None  # LoadBalancer with externalTrafficPolicy Local: kube-proxy answers its health check there
    traffic_distribution: str | None = None  # spec.trafficDistribution (PreferClose...): same-zone hints
    topology_mode: str | None = None  # the service.kubernetes.io/topology-mode annotation (Auto)
    ip_family_policy: str | None = None  # SingleStack | PreferDualStack | RequireDualStack (None: not given)
    ip_families: tuple[str, ...] = ()  # IPv4 / IPv6, in order: given, then as the API server defaults them
    cluster_ips: tuple[str, ...] = ()  # one per family of ip_families, the first being cluster_ip
    load_balancer_ips: tuple[str, ...] = ()  # one per family the pools give, the first being load_balancer_ip
    doc: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"

    @property
    def proxied(self) -> bool:
        """Whether kube-proxy programs it (headless and ExternalName services have no rules)."""
        return self.type != "ExternalName" and not self.headless and self.cluster_ip is not None

    @property
    def wants_node_ports(self) -> bool:
        return self.type == "NodePort" or (self.type == "LoadBalancer" and self.allocate_lb_node_ports)

    @property
    def needs_health_check(self) -> bool:
        """The API server's NeedsHealthCheck: a LoadBalancer that keeps client addresses."""
        return self.type == "LoadBalancer" and self.external_traffic_policy == "Local"


@dataclass(frozen=True)
class Node:
    name: str
    ip: str | None = None
    pod_cidr: str | None = None
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    link: dict[str, str] = field(default_factory=dict, hash=False)  # impairment of its underlay link (delay, jitter, loss, rate)
    ips: tuple = ()  # one address per lab family (None where not given yet), the first being `ip`
    pod_cidrs: tuple = ()  # one pod CIDR per lab family, the first being `pod_cidr`


@dataclass(frozen=True)
class External:
    name: str
    ip: str | None = None
    link: dict[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[tuple[int, str], ...] = field(default=(), hash=False)  # (port, protocol) its responder serves
    command: tuple[str, ...] | None = field(default=None, hash=False)  # a program of the user's run in its namespace
    ips: tuple = ()  # one address per lab family, the first being `ip`


@dataclass(frozen=True)
class Deployment:
    namespace: str
    name: str
    replicas: int
    doc: int = 0


@dataclass(frozen=True)
class LabSpec:
    name: str
    node_network: str = "10.10.20.0/24"
    pod_network: str = "10.244.0.0/16"
    service_network: str = "10.96.0.0/16"
    node_port_range: str = "30000-32767"
    overlay: str = "vxlan"
    proxy_mode: str = "iptables"
    ipvs_scheduler: str = "rr"
    dns: bool = True
    cluster_domain: str = "cluster.local"
    dns_upstream: str | None = None  # "IP" or "IP:PORT": where the cluster DNS forwards other names
    load_balancer_pool: str | None = None
    node_cidr_mask: int = 24
    expect: tuple[str, ...] = ()  # "FROM -> TO:PORT[/udp] allowed|denied", checked by `labctl verify`
    nodes: tuple[Node, ...] = ()
    externals: tuple[External, ...] = ()
    ingress: Any = None  # labctl.model.ingress.IngressSpec: the ingress controller (None: none)
    gateway_api: bool = False  # GatewayClass nginx: each Gateway of it gets nginx pods and a LoadBalancer Service
    bgp_as: int | None = None  # overlay bgp: spec.bgp.asNumber (None: 64512, Calico's default)
    # Dual-stack and IPv6 (labctl.model.family): the singular fields above are the first
    # family's; these hold one value per family of ip_families (empty: the singular one).
    ip_families: tuple[str, ...] = ("IPv4",)
    node_networks: tuple[str, ...] = ()
    pod_networks: tuple[str, ...] = ()
    service_networks: tuple[str, ...] = ()
    load_balancer_pools: tuple = ()  # per family, None where that family has no pool
    node_cidr_mask4: int = 24  # nodeCIDRMaskSize (node_cidr_mask is the first family's)
    node_cidr_mask6: int = 64  # nodeCIDRMaskSizeIPv6

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


@dataclass(frozen=True)
class Topology:
    """A whole lab: the Lab document plus the Kubernetes objects."""

    lab: LabSpec
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    pods: tuple[Pod, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    services: tuple[Service, ...] = ()
    policies: tuple = ()  # labctl.model.policy.NetworkPolicy
    ingresses: tuple = ()  # labctl.model.ingress.Ingress, in creation order
    ingress_classes: tuple = ()  # labctl.model.ingress.IngressClass (the lab's own first)
    documents: tuple[dict[str, Any], ...] = ()  # the Kubernetes manifests as given (for apply/delete)
    ipam: dict[str, str] = field(default_factory=dict)  # node -> last pod address given (host-local's cursor)
    created: dict[str, list] = field(default_factory=dict)  # "Kind/ns/name" -> [creation order, creationTimestamp] when labctl first made it
    readiness: dict[str, bool] = field(default_factory=dict)  # pod -> ready, set with `labctl ready`
    terminating: dict[str, float] = field(default_factory=dict)  # pod -> end of its grace period (epoch seconds)

    def pod(self, key: str) -> Pod:
        for p in self.pods:
            if p.key == key:
                return p
        raise KeyError(key)

    def service(self, key: str) -> Service:
        for s in self.services:
            if s.key == key:
                return s
        raise KeyError(key)

    @cached_property
    def zones(self) -> dict[str, str]:
        """node -> its topology.kubernetes.io/zone label ("" without one)."""
        from labctl.model.slices import ZONE_LABEL

        return {n.name: n.labels.get(ZONE_LABEL, "") for n in self.lab.nodes}

    @cached_property
    def user_slices(self) -> tuple[dict[str, Any], ...]:
        """EndpointSlices the user wrote, and those mirrored from Endpoints of Services
        without a selector (labctl.model.slices)."""
        from labctl.model import slices

        selectorless = {s.key for s in self.services if not s.selector and not s.static_endpoints}
        family = "IPv6" if ":" in self.lab.pod_network else "IPv4"  # a family's view has its slices
        return tuple(x for x in slices.from_documents(self.documents, selectorless) if x["addressType"] == family)

    def pods_on(self, node: str) -> list[Pod]:
        return [p for p in self.pods if p.node == node]

    def with_pods(self, pods: tuple[Pod, ...]) -> "Topology":
        return replace(self, pods=pods)

    # -- serialisation of the applied state ---------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data for state.json (policies are rebuilt from the documents)."""
        d = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in ("policies", "ingresses", "ingress_classes", "documents")}
        d["documents"] = list(self.documents)  # already plain: parsed YAML
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Topology":
        lab = dict(d["lab"])
        for k in ("ip_families", "node_networks", "pod_networks", "service_networks", "load_balancer_pools"):
            if k in lab:
                lab[k] = tuple(lab[k])
        lab["nodes"] = tuple(Node(**{**n, "ips": tuple(n.get("ips") or ()), "pod_cidrs": tuple(n.get("pod_cidrs") or ())}) for n in lab["nodes"])
        lab["externals"] = tuple(
            External(
                **{
                    **e,
                    "ports": tuple(tuple(p) for p in e.get("ports") or ()),
                    "command": tuple(e["command"]) if e.get("command") else None,
                    "ips": tuple(e.get("ips") or ()),
                }
            )
            for e in lab["externals"]
        )
        lab["expect"] = tuple(lab.get("expect") or ())
        lab["ingress"] = ingress.IngressSpec(**lab["ingress"]) if lab.get("ingress") else None
        pods = []
        for p in d["pods"]:
            p = dict(p)
            p["containers"] = tuple(
                Container(
                    name=c["name"],
                    ports=tuple(ContainerPort(**cp) for cp in c["ports"]),
                    command=tuple(c["command"]) if c["command"] is not None else None,
                )
                for c in p["containers"]
            )
            p["ips"] = tuple(p.get("ips") or ())
            pods.append(Pod(**p))
        services = []
        for sv in d.get("services") or []:
            sv = dict(sv)
            sv["ports"] = tuple(ServicePort(**p) for p in sv["ports"])
            sv["external_ips"] = tuple(sv["external_ips"])
            sv["static_endpoints"] = tuple(sv["static_endpoints"])
            sv["load_balancer_source_ranges"] = tuple(sv.get("load_balancer_source_ranges") or ())
            for k in ("ip_families", "cluster_ips", "load_balancer_ips"):
                sv[k] = tuple(sv.get(k) or ())
            services.append(Service(**sv))
        policies = tuple(from_manifest(-i, doc) for i, doc in enumerate(d["documents"], start=1) if doc.get("kind") == "NetworkPolicy")
        created = {k: list(v) for k, v in (d.get("created") or {}).items()}
        ingresses, classes = ingress.from_documents(LabSpec(**lab), d["documents"], created)
        return Topology(
            lab=LabSpec(**lab),
            namespaces={k: dict(v) for k, v in d["namespaces"].items()},
            pods=tuple(pods),
            deployments=tuple(Deployment(**x) for x in d["deployments"]),
            services=tuple(services),
            policies=policies,
            ingresses=ingresses,
            ingress_classes=classes,
            documents=tuple(d["documents"]),
            ipam=dict(d.get("ipam") or {}),
            created=created,
            readiness=dict(d.get("readiness") or {}),
            terminating={k: float(v) for k, v in (d.get("terminating") or {}).items()},
        )
