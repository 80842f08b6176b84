"""Guards for the lists that must be edited when a field is added.

A new field of a Service, a service port or a Pod either changes what a
service port's rules are fingerprinted from, or is named here as having no
say in them; a new field of any object of the applied state must appear in
the sample below and survive the state's round trip; a new Pod field is
classified by what a change of it does to a running lab. A field added
without that fails here instead of leaving stale rules or a state that
forgets it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields, replace

from labctl.model.ingress import IngressSpec
from labctl.model.objects import Container, ContainerPort, Deployment, External, LabSpec, Node, Pod, Service, ServicePort, Topology
from labctl.proxy.endpoints import service_ports
from tests.helpers import dump, lab_doc, load, pod, svc

LB = {"loadBalancerPool": "10.10.20.200-10.10.20.210"}


def base() -> Topology:
    """A LoadBalancer service with most features on, two endpoints on two nodes."""
    web = svc(
        "web",
        {"app": "web"},
        ports=((80, 8080), (81, 8081)),
        type="LoadBalancer",
        externalIPs=["10.10.20.150"],
        externalTrafficPolicy="Local",
        sessionAffinity="ClientIP",
        loadBalancerSourceRanges=["10.10.20.0/24"],
    )
    return load(
        dump(
            lab_doc(**LB),
            pod("a", node="node1", labels={"app": "web"}, ports=(8080, 8081)),
            pod("b", node="node2", labels={"app": "web"}, ports=(8080, 8081)),
            web,
        )
    )


def fingerprints(topo: Topology) -> dict[str, str]:
    return {i.key: i.fingerprint(n.name) for i in service_ports(topo) for n in topo.lab.nodes if i.service.name == "web"}


def with_service(topo: Topology, **changes) -> Topology:
    return replace(topo, services=tuple(replace(s, **changes) if s.name == "web" else s for s in topo.services))


def with_port(topo: Topology, **changes) -> Topology:
    web = topo.service("default/web")
    return with_service(topo, ports=(replace(web.ports[0], **changes), *web.ports[1:]))


def with_pod(topo: Topology, key: str, **changes) -> Topology:
    return replace(topo, pods=tuple(replace(p, **changes) if p.key == key else p for p in topo.pods))


# -- service fingerprints ----------------------------------------------------------------

SERVICE_CHANGES = {
    "namespace": "shop",
    "name": "web2",
    "type": "NodePort",
    "cluster_ip": "10.96.0.99",
    "selector": {"app": "other"},
    "external_ips": ("10.10.20.151",),
    "load_balancer_ip": "10.10.20.209",
    "external_traffic_policy": "Cluster",
    "internal_traffic_policy": "Local",
    "session_affinity": "None",
    "affinity_timeout": 60,
    "publish_not_ready": True,
    "allocate_lb_node_ports": False,
    "load_balancer_source_ranges": ("10.0.0.0/8",),
    "static_endpoints": ("10.10.20.10:6443",),
    "health_check_node_port": 31500,
    "traffic_distribution": "PreferClose",
    "topology_mode": "Auto",
}
SERVICE_NO_SAY = {
    "doc": "where the manifest was, for messages",
    "ports": "each port is its own fingerprint (SERVICE_PORT_CHANGES)",
    "headless": "a property",
    "external_name": "ExternalName services have no rules",
    "ip_family_policy": "each family's rules are synced from its view (labctl.model.family), where it is cluster_ip",
    "ip_families": "the same: a family's view has the service or not",
    "cluster_ips": "the same: a family's view's cluster_ip",
    "load_balancer_ips": "the same: a family's view's load_balancer_ip",
}


def test_every_service_field_moves_the_fingerprint_or_has_no_say():
    names = {f.name for f in fields(Service)}
    assert names == set(SERVICE_CHANGES) | set(SERVICE_NO_SAY) - {"headless"}, "classify the new Service field here"
    t = base()
    if_unready = with_pod(t, "default/a", ready=False)  # publishNotReadyAddresses has its say through an unready pod
    before = fingerprints(t)
    for field, value in SERVICE_CHANGES.items():
        ref = if_unready if field == "publish_not_ready" else t
        after = fingerprints(with_service(ref, **{field: value}))
        assert after != fingerprints(ref), f"Service.{field} changed, the fingerprint did not"
    assert before == fingerprints(with_service(t, doc=99, external_name="x.example.com"))


SERVICE_PORT_CHANGES = {"port": 82, "protocol": "UDP", "name": "other", "target_port": 9999, "node_port": 31999}


def test_every_service_port_field_moves_the_fingerprint():
    assert {f.name for f in fields(ServicePort)} == set(SERVICE_PORT_CHANGES), "classify the new ServicePort field here"
    t = base()
    for field, value in SERVICE_PORT_CHANGES.items():
        assert fingerprints(with_port(t, **{field: value})) != fingerprints(t), f"ServicePort.{field} changed, the fingerprint did not"


# What a change of each Pod field does to a running lab, and where that is decided.
POD_FIELDS = {
    "namespace": "another pod (its key)",
    "name": "another pod (its key)",
    "node": "the pod is made again on its node (plan: remove + add)",
    "ip": "the pod is made again (plan: remove + add)",
    "ips": "the pod is made again (plan: remove + add)",
    "labels": "endpoints and policy sets (affected_services, policy sync)",
    "ready": "endpoints (affected_services)",
    "terminating": "endpoints: no longer ready, a fallback while serving (affected_services)",
    "grace": "how long the pod stays terminating when it leaves (changes._graceful); no rule depends on it",
    "containers": "commands restarted (plan: commands_changed), endpoints through named ports",
    "hostname": "files written again (plan: files_changed), DNS records",
    "subdomain": "files written again (plan: files_changed), DNS records",
    "dns_policy": "files written again (plan: files_changed)",
    "dns_config": "files written again (plan: files_changed)",
    "service_links": "environment of the next `labctl exec` and of commands when they start",
    "owner": "scheduling only (spread by owner)",
    "doc": "where the manifest was, for messages",
}


def test_every_pod_field_says_what_changing_it_does():
    assert {f.name for f in fields(Pod)} == set(POD_FIELDS), "classify the new Pod field here, and make the plan or the syncs follow it"


def test_a_pod_change_that_moves_endpoints_moves_the_fingerprint():
    t = base()
    for changes in ({"labels": {"app": "other"}}, {"ready": False}, {"ip": "10.244.0.77"}, {"node": "node2"}):
        assert fingerprints(with_pod(t, "default/a", **changes)) != fingerprints(t), changes


# -- the applied state's round trip ------------------------------------------------------

STATE_CLASSES = (Topology, LabSpec, Node, External, Pod, Container, ContainerPort, Service, ServicePort, Deployment, IngressSpec)


def sample() -> Topology:
    """An applied state with every field of every class set away from its default."""
    text = dump(
        lab_doc(
            ipFamilies=["IPv4", "IPv6"],
            nodeNetwork=["10.10.30.0/24", "fd00:30::/64"],
            podNetwork=["10.200.0.0/16", "fd00:200::/56"],
            serviceNetwork=["10.97.0.0/16", "fd00:97::/112"],
            nodeCIDRMaskSizeIPv6=72,
            nodePortRange="31000-31999",
            overlay="host-gw",
            proxyMode="nftables",
            ipvsScheduler="sh",
            dns=False,
            clusterDomain="lab.local",
            dnsUpstream="10.10.30.100",
            nodeCIDRMaskSize=25,
            expect=["default/a -> default/b:8080 allowed"],
            nodes=[
                {
                    "name": "n1",
                    "ips": ["10.10.30.20", "fd00:30::20"],
                    "podCIDRs": ["10.200.0.0/25", "fd00:200::/72"],
                    "labels": {"zone": "a"},
                    "link": {"rate": "10mbit"},
                },
                {"name": "n2"},
            ],
            externals=[
                {"name": "x", "ip": "10.10.30.120", "link": {"rate": "1mbit"}, "ports": [5432, {"port": 53, "protocol": "UDP"}], "command": ["sleep", "60"]}
            ],
            loadBalancerPool=["10.10.30.200-10.10.30.210", "fd00:30::200-fd00:30::210"],
            ingress={"className": "edge", "service": "NodePort", "replicas": 2, "externalTrafficPolicy": "Cluster"},
            gatewayAPI=True,
            bgp={"asNumber": 65001},
        ),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "s"}}},
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "web", "annotations": {"a": "b"}},
            "spec": {
                "ingressClassName": "edge",
                "defaultBackend": {"service": {"name": "lb", "port": {"name": "p"}}},
                "tls": [{"hosts": ["a.example.com"], "secretName": "t"}],
                "rules": [
                    {"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"resource": {"kind": "K", "name": "n"}}}]}}
                ],
            },
        },
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "other"}, "spec": {"controller": "example.com/other"}},
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "a", "labels": {"app": "a"}},
            "spec": {
                "nodeName": "n1",
                "hostname": "h",
                "subdomain": "sub",
                "terminationGracePeriodSeconds": 5,
                "dnsPolicy": "None",
                "dnsConfig": {"nameservers": ["10.10.30.1"]},
                "enableServiceLinks": False,
                "containers": [{"name": "c", "command": ["sleep", "1"], "ports": [{"containerPort": 8080, "protocol": "UDP", "name": "p"}]}],
            },
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        },
        pod("b"),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "shop"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"k": "v"}},
                "template": {"metadata": {"labels": {"k": "v"}}, "spec": {"containers": [{"name": "c"}]}},
            },
        },
        svc(
            "lb",
            {"app": "a"},
            ports=((80, "p"),),
            type="LoadBalancer",
            clusterIP="10.97.0.50",
            clusterIPs=["10.97.0.50", "fd00:97::50"],
            ipFamilyPolicy="PreferDualStack",
            ipFamilies=["IPv4", "IPv6"],
            externalIPs=["10.10.30.150"],
            loadBalancerIP="10.10.30.205",
            externalTrafficPolicy="Local",
            internalTrafficPolicy="Local",
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
            publishNotReadyAddresses=True,
            allocateLoadBalancerNodePorts=False,
            loadBalancerSourceRanges=["10.0.0.0/8"],
            trafficDistribution="PreferClose",
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ext", "annotations": {"service.kubernetes.io/topology-mode": "Auto"}},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "np"},
            "spec": {"type": "NodePort", "selector": {"app": "b"}, "ports": [{"port": 53, "protocol": "UDP", "nodePort": 31053}]},
        },
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np"}, "spec": {"podSelector": {}}},
    )
    topo = load(text)
    topo = replace(topo, readiness={"default/b": False}, terminating={"default/b": 1.8e9})
    return replace(topo, pods=tuple(replace(p, terminating=p.key == "default/b") for p in topo.pods))


def _defaults(cls) -> dict[str, object]:
    out = {}
    for f in fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _seen(obj, seen: dict[type, set[str]]) -> None:
    if dataclasses.is_dataclass(obj) and type(obj) in STATE_CLASSES:
        d = _defaults(type(obj))
        for f in fields(obj):
            v = getattr(obj, f.name)
            if f.name not in d or v != d[f.name]:
                seen.setdefault(type(obj), set()).add(f.name)
            _seen(v, seen)
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            _seen(x, seen)
    elif isinstance(obj, dict):
        for x in obj.values():
            _seen(x, seen)


def test_the_sample_state_sets_every_field_of_every_class():
    seen: dict[type, set[str]] = {}
    _seen(sample(), seen)
    missing = {cls.__name__: sorted({f.name for f in fields(cls)} - seen.get(cls, set())) for cls in STATE_CLASSES}
    assert {k: v for k, v in missing.items() if v} == {}, "set the new field in sample(), so the round trip below covers it"


def test_the_applied_state_survives_its_round_trip():
    t = sample()
    again = Topology.from_dict(json.loads(json.dumps(t.to_dict())))
    assert replace(again, policies=(), ingresses=()) == replace(t, policies=(), ingresses=())
    # Ingresses too, their creation order kept
    assert [(i.key, i.order) for i in again.ingresses] == [(i.key, i.order) for i in t.ingresses] != []
    # policies are rebuilt from the stored manifests, which count as the running lab's (negative) documents
    assert [replace(p, doc=0) for p in again.policies] == [replace(p, doc=0) for p in t.policies] != []
