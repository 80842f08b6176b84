"""Services, pure: validation, allocation, endpoints."""

from __future__ import annotations

import pytest

from labctl.proxy.endpoints import endpoints, service_ports
from tests.helpers import deployment, dump, lab_doc, load, namespace, one, pod, problems, svc

LB = {"loadBalancerPool": "10.10.20.200-10.10.20.201"}


# -- allocation ---------------------------------------------------------------------


def test_cluster_ips_start_after_the_reserved_ones():
    topo = load(dump(lab_doc(), svc("a", {"app": "a"}), svc("b", {"app": "b"})))
    got = {s.key: s.cluster_ip for s in topo.services}
    assert got == {"default/kubernetes": "10.96.0.1", "default/a": "10.96.0.11", "default/b": "10.96.0.12"}
    k = topo.service("default/kubernetes")
    assert k.ports[0].name == "https" and k.ports[0].port == 443 and k.static_endpoints == ("10.10.20.10:6443",)


def test_explicit_cluster_ip_and_collisions():
    topo = load(dump(lab_doc(), svc("a", {"app": "a"}, clusterIP="10.96.0.11"), svc("b", {"app": "b"})))
    assert topo.service("default/b").cluster_ip == "10.96.0.12"
    msg = one(dump(lab_doc(), svc("a", {"app": "a"}, clusterIP="10.96.0.50"), svc("b", {"app": "b"}, clusterIP="10.96.0.50")))
    assert "10.96.0.50 is already the ClusterIP of default/a" in msg
    assert "is not inside serviceNetwork" in one(dump(lab_doc(), svc("a", {"app": "a"}, clusterIP="10.97.0.5")))
    assert "10.96.0.10 is reserved for kube-system/kube-dns" in one(dump(lab_doc(), svc("a", {"app": "a"}, clusterIP="10.96.0.10")))


def test_node_ports_allocated_in_order_and_checked():
    topo = load(dump(lab_doc(), svc("a", {"app": "a"}, type="NodePort"), svc("b", {"app": "b"}, type="NodePort")))
    assert [s.ports[0].node_port for s in topo.services[1:]] == [30000, 30001]
    given = svc("a", {"app": "a"}, type="NodePort")
    given["spec"]["ports"][0]["nodePort"] = 30000
    topo = load(dump(lab_doc(), svc("b", {"app": "b"}, type="NodePort"), given))
    assert {s.name: s.ports[0].node_port for s in topo.services[1:]} == {"b": 30001, "a": 30000}
    clash = svc("b", {"app": "b"}, type="NodePort")
    clash["spec"]["ports"][0]["nodePort"] = 30000
    assert "nodePort 30000/TCP is already used by default/a" in one(dump(lab_doc(), given, clash))
    out = svc("c", {"app": "c"}, type="NodePort")
    out["spec"]["ports"][0]["nodePort"] = 80
    assert "80 is outside nodePortRange 30000-32767" in one(dump(lab_doc(), out))
    cip = svc("d", {"app": "d"})
    cip["spec"]["ports"][0]["nodePort"] = 30005
    assert "only NodePort and LoadBalancer services have node ports" in one(dump(lab_doc(), cip))


def test_load_balancer_ips_come_from_the_pool():
    topo = load(dump(lab_doc(**LB), svc("a", {"app": "a"}, type="LoadBalancer"), svc("b", {"app": "b"}, type="LoadBalancer")))
    assert [s.load_balancer_ip for s in topo.services[1:]] == ["10.10.20.200", "10.10.20.201"]
    assert all(s.ports[0].node_port for s in topo.services[1:])
    assert "has no address left" in one(dump(lab_doc(**LB), *[svc(n, {"app": n}, type="LoadBalancer") for n in "abc"]))
    assert "need spec.loadBalancerPool" in one(dump(lab_doc(), svc("a", {"app": "a"}, type="LoadBalancer")))
    assert "is not in loadBalancerPool" in one(dump(lab_doc(**LB), svc("a", {"app": "a"}, type="LoadBalancer", loadBalancerIP="10.10.20.50")))
    no_np = load(dump(lab_doc(**LB), svc("a", {"app": "a"}, type="LoadBalancer", allocateLoadBalancerNodePorts=False)))
    assert no_np.services[1].ports[0].node_port is None


def test_allocations_are_stable_against_the_running_lab():
    first = load(dump(lab_doc(**LB), svc("a", {"app": "a"}, type="LoadBalancer"), svc("b", {"app": "b"}, type="NodePort")))
    again = load(
        dump(lab_doc(**LB), svc("c", {"app": "c"}, type="LoadBalancer"), svc("b", {"app": "b"}, type="NodePort"), svc("a", {"app": "a"}, type="LoadBalancer")),
        previous=first,
    )
    before = {s.key: (s.cluster_ip, s.ports[0].node_port, s.load_balancer_ip) for s in first.services}
    after = {s.key: (s.cluster_ip, s.ports[0].node_port, s.load_balancer_ip) for s in again.services}
    assert after["default/a"] == before["default/a"] and after["default/b"] == before["default/b"]
    assert after["default/c"] == ("10.96.0.13", 30002, "10.10.20.201")


def test_health_check_node_ports_are_allocated_as_the_api_server_does():
    """A LoadBalancer with externalTrafficPolicy Local gets a healthCheckNodePort from the
    node port range (TCP, shared with node ports); given ones are kept; others get none."""
    local = svc("a", {"app": "a"}, type="LoadBalancer", externalTrafficPolicy="Local")
    topo = load(dump(lab_doc(**LB), local, svc("b", {"app": "b"}, type="LoadBalancer")))
    a, b = topo.service("default/a"), topo.service("default/b")
    assert (a.ports[0].node_port, a.health_check_node_port) == (30000, 30001)
    assert (b.ports[0].node_port, b.health_check_node_port) == (30002, None)
    local["spec"]["healthCheckNodePort"] = 32000
    again = load(dump(lab_doc(**LB), local), previous=topo)
    assert again.service("default/a").health_check_node_port == 32000
    del local["spec"]["healthCheckNodePort"]
    assert load(dump(lab_doc(**LB), svc("c", {"app": "c"}, type="NodePort"), local), previous=topo).service("default/a").health_check_node_port == 30001, (
        "kept across changes"
    )
    cluster = svc("c", {"app": "c"}, type="LoadBalancer", healthCheckNodePort=31000)
    assert "spec.healthCheckNodePort: may only be set when type is LoadBalancer and externalTrafficPolicy is Local" in one(dump(lab_doc(**LB), cluster))
    clash = svc("d", {"app": "d"}, type="NodePort")
    clash["spec"]["ports"][0]["nodePort"] = 30001
    local["spec"]["healthCheckNodePort"] = 30001
    assert "spec.healthCheckNodePort: nodePort 30001/TCP is already used by default/d" in one(dump(lab_doc(**LB), clash, local))


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,expect",
    [
        ({"type": "Nodeport"}, "spec.type: must be one of ClusterIP, NodePort, LoadBalancer, ExternalName"),
        ({"type": "ExternalName"}, "spec.externalName: is required for type ExternalName"),
        ({"type": "NodePort", "clusterIP": "None"}, "spec.clusterIP: may not be None for type NodePort"),
        ({"externalTrafficPolicy": "Local"}, "Local only applies to NodePort and LoadBalancer"),
        ({"sessionAffinity": "Sticky"}, "spec.sessionAffinity: must be None or ClientIP"),
        ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}, "timeoutSeconds: 0 is out of range"),
        ({"externalIPs": ["1.2.3"]}, "spec.externalIPs[0]: '1.2.3' is not an IP address"),
        ({"loadBalancerSourceRanges": ["10.0.0.0/8"]}, "spec.loadBalancerSourceRanges: only applies to type LoadBalancer"),
    ],
)
def test_service_spec_problems(spec, expect):
    assert expect in one(dump(lab_doc(), svc("a", {"app": "a"}, **spec)))


def test_load_balancer_source_ranges_are_cidrs():
    lb = {"type": "LoadBalancer", "loadBalancerSourceRanges": [" 10.10.20.0/25", "10.10.20.300/32", "10.0.0.1/8"]}
    msgs = problems(dump(lab_doc(**LB), svc("a", {"app": "a"}, **lb)))
    assert any("spec.loadBalancerSourceRanges[1]: '10.10.20.300/32' is not a CIDR" in m for m in msgs), msgs
    assert any("spec.loadBalancerSourceRanges[2]: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?" in m for m in msgs), msgs
    assert len(msgs) == 2, "the first one is fine once its spaces are stripped, as kube-proxy does"
    ok = {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.10.20.0/25"]}
    assert load(dump(lab_doc(**LB), svc("a", {"app": "a"}, **ok))).service("default/a").load_balancer_source_ranges == ("10.10.20.0/25",)


def test_port_problems():
    s = svc("a", {"app": "a"}, ports=((80, 8080), (80, 8081)))
    s["spec"]["ports"][1]["name"] = "p80"
    found = problems(dump(lab_doc(), s))
    assert any("spec.ports[1].name: duplicate port name 'p80'" in p for p in found)
    assert any("spec.ports[1].port: 80/TCP is already spec.ports[0]" in p for p in found)
    unnamed = svc("b", {"app": "b"}, ports=((80, 8080), (81, 8081)))
    del unnamed["spec"]["ports"][1]["name"]
    assert "spec.ports[1].name: is required when a service has more than one port" in one(dump(lab_doc(), unnamed))
    bad_target = svc("c", {"app": "c"}, ports=((80, "No_Such"),))
    assert "targetPort" in one(dump(lab_doc(), bad_target))
    assert "a service needs at least one port" in one(dump(lab_doc(), svc("d", {"app": "d"}, ports=())))


def test_names_namespaces_and_the_kubernetes_service():
    assert "not a DNS-1035 label" in one(dump(lab_doc(), svc("1st", {"app": "a"})))
    assert "the lab's own service" in one(dump(lab_doc(), svc("kubernetes", {"app": "a"})))
    assert "namespace 'shop' is not defined" in one(dump(lab_doc(), svc("a", {"app": "a"}, namespace="shop")))
    assert "is already defined by document 2" in one(dump(lab_doc(), svc("a", {"app": "a"}), svc("a", {"app": "b"})))


def test_headless_and_external_name_get_no_cluster_ip():
    topo = load(dump(lab_doc(), svc("h", {"app": "a"}, clusterIP="None"), svc("x", None, ports=(), type="ExternalName", externalName="example.com")))
    assert topo.service("default/h").headless and not topo.service("default/h").proxied
    assert topo.service("default/x").cluster_ip is None and not topo.service("default/x").proxied
    assert [i.service.name for i in service_ports(topo)] == ["kubernetes"]


# -- endpoints ---------------------------------------------------------------------------


def test_endpoints_follow_labels_namespace_readiness_and_named_ports():
    named = pod("n1", labels={"app": "web"}, ports=(9090,))
    named["spec"]["containers"][0]["ports"][0]["name"] = "http"
    unnamed = pod("n2", labels={"app": "web"}, ports=(9091,))
    not_ready = pod("n3", labels={"app": "web"}, ports=(9092,))
    not_ready["status"] = {"conditions": [{"type": "Ready", "status": "False"}]}
    other_ns = pod("n4", namespace="shop", labels={"app": "web"})
    topo = load(
        dump(
            lab_doc(),
            namespace("shop"),
            named,
            unnamed,
            not_ready,
            other_ns,
            pod("n5", labels={"app": "db"}),
            svc("by-name", {"app": "web"}, ports=((80, "http"),)),
            svc("by-number", {"app": "web"}, ports=((80, 7000),)),
        )
    )
    by_name = topo.service("default/by-name")
    assert [e.addr for e in endpoints(topo, by_name, by_name.ports[0])] == [f"{topo.pod('default/n1').ip}:9090"]
    by_number = topo.service("default/by-number")
    eps = endpoints(topo, by_number, by_number.ports[0])
    assert [e.pod for e in eps] == ["default/n1", "default/n2"], "ready pods of the namespace, in address order"
    assert {e.port for e in eps} == {7000}


def test_publish_not_ready_and_udp_named_ports():
    p = pod("u", labels={"app": "dns"}, ports=(), udp=(5353,))
    p["spec"]["containers"][0]["ports"][0]["name"] = "dns"
    p["status"] = {"conditions": [{"type": "Ready", "status": "False"}]}
    s = svc("dns", {"app": "dns"}, ports=((53, "dns"),), publishNotReadyAddresses=True)
    s["spec"]["ports"][0]["protocol"] = "UDP"
    tcp = svc("dns-tcp", {"app": "dns"}, ports=((53, "dns"),), publishNotReadyAddresses=True)
    topo = load(dump(lab_doc(), p, s, tcp))
    assert len(endpoints(topo, topo.service("default/dns"), topo.service("default/dns").ports[0])) == 1
    assert endpoints(topo, topo.service("default/dns-tcp"), topo.service("default/dns-tcp").ports[0]) == (), "a named port matches its protocol"


def test_deployment_pods_are_endpoints():
    topo = load(dump(lab_doc(), deployment("web", 3), svc("web", {"app": "web"})))
    s = topo.service("default/web")
    assert len(endpoints(topo, s, s.ports[0])) == 3


def test_port_policy_decisions():
    from labctl.proxy.policy import decide

    p1 = pod("a", node="node1", labels={"app": "web"})
    topo = load(dump(lab_doc(), p1, svc("l", {"app": "web"}, type="NodePort", externalTrafficPolicy="Local", internalTrafficPolicy="Local")))
    [info] = [i for i in service_ports(topo) if i.service.name == "l"]
    here, there = decide(info, "node1"), decide(info, "node2")
    assert here.has_internal and here.has_external and here.uses_local and len(here.reached()) == 1
    assert not there.has_internal and not there.has_external and there.refusal == "drop"
    assert there.uses_cluster, "pods on node2 still reach it through the NodePort's short-circuit"
    empty = load(dump(lab_doc(), svc("e", {"app": "none"})))
    [info] = [i for i in service_ports(empty) if i.service.name == "e"]
    assert decide(info, "node1").refusal == "reject"
