"""Dual-stack and IPv6 labs in the model: families, per-family IPAM, Services'
ipFamilyPolicy as the API server resolves it, and each family's view."""

import pytest

from labctl.model import family
from tests.helpers import dump, lab_doc, load, one, pod, problems, svc

DUAL = {
    "ipFamilies": ["IPv4", "IPv6"],
    "nodeNetwork": ["10.10.20.0/24", "fd00:10:20::/64"],
    "podNetwork": ["10.244.0.0/16", "fd00:10:244::/56"],
    "serviceNetwork": ["10.96.0.0/16", "fd00:10:96::/112"],
}
V6 = {"ipFamilies": ["IPv6"]}


def dual(**more):
    return lab_doc(**{**DUAL, **more})


def test_a_dual_stack_lab_gives_every_node_pod_and_external_one_address_per_family():
    topo = load(dump(dual(externals=[{"name": "x"}]), pod("a"), pod("b")))
    n1, n2 = topo.lab.nodes
    assert n1.ips == ("10.10.20.10", "fd00:10:20::a") and n1.ip == "10.10.20.10"
    assert n2.pod_cidrs == ("10.244.1.0/24", "fd00:10:244:1::/64") and n2.pod_cidr == "10.244.1.0/24"
    assert topo.lab.externals[0].ips == ("10.10.20.100", "fd00:10:20::64")
    assert {p.name: p.ips for p in topo.pods} == {"a": ("10.244.0.2", "fd00:10:244::2"), "b": ("10.244.1.2", "fd00:10:244:1::2")}


def test_an_ipv6_lab_takes_the_ipv6_defaults_and_a_64_per_node():
    topo = load(dump(lab_doc(**V6), pod("a")))
    assert topo.lab.node_network == "fd00:10:20::/64" and topo.lab.service_network == "fd00:10:96::/112"
    assert [n.pod_cidr for n in topo.lab.nodes] == ["fd00:10:244::/64", "fd00:10:244:1::/64"]
    assert topo.pods[0].ip == "fd00:10:244::2"
    kube = topo.service("default/kubernetes")
    assert kube.cluster_ip == "fd00:10:96::1" and kube.static_endpoints == ("[fd00:10:20::a]:6443",)


def test_ipv6_first_makes_ipv6_the_primary_family():
    topo = load(dump(lab_doc(ipFamilies=["IPv6", "IPv4"], nodeNetwork=["fd00:1::/64", "10.1.0.0/24"]), pod("a")))
    assert topo.lab.nodes[0].ip == "fd00:1::a" and topo.pods[0].ip.startswith("fd00:10:244:")
    assert topo.pods[0].ips[1].startswith("10.244.")


def test_addresses_are_kept_across_up_in_both_families():
    text = dump(dual(), pod("a"), pod("b"), svc("web", {"app": "a"}, ipFamilyPolicy="PreferDualStack"))
    first = load(text)
    again = load(dump(dual(), pod("b"), pod("c"), svc("web", {"app": "a"}, ipFamilyPolicy="PreferDualStack")), previous=first)
    assert again.pod("default/b").ips == first.pod("default/b").ips
    assert again.service("default/web").cluster_ips == first.service("default/web").cluster_ips
    # host-local's cursor, per family: c does not get a's freed addresses at once
    assert again.pod("default/c").ips == ("10.244.0.3", "fd00:10:244::3")


@pytest.mark.parametrize(
    "spec,families,policy,count",
    [
        ({}, ("IPv4",), "SingleStack", 1),
        ({"ipFamilyPolicy": "PreferDualStack"}, ("IPv4", "IPv6"), "PreferDualStack", 2),
        ({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]}, ("IPv6", "IPv4"), "RequireDualStack", 2),
        ({"ipFamilies": ["IPv6", "IPv4"]}, ("IPv6", "IPv4"), "RequireDualStack", 2),  # inferred from two families
        ({"ipFamilies": ["IPv6"]}, ("IPv6",), "SingleStack", 1),
        ({"clusterIPs": ["10.96.0.50", "fd00:10:96::50"], "clusterIP": "10.96.0.50"}, ("IPv4", "IPv6"), "RequireDualStack", 2),
    ],
)
def test_services_get_the_families_the_api_server_gives_them(spec, families, policy, count):
    s = load(dump(dual(), svc("web", {"app": "a"}, **spec))).service("default/web")
    assert (s.ip_families, s.ip_family_policy, len(s.cluster_ips)) == (families, policy, count)
    assert s.cluster_ip == s.cluster_ips[0] and all(family.of(ip) == family.NAMES[f] for ip, f in zip(s.cluster_ips, s.ip_families))


def test_prefer_dual_stack_is_single_stack_in_a_single_stack_lab():
    s = load(dump(lab_doc(), svc("web", {"app": "a"}, ipFamilyPolicy="PreferDualStack"))).service("default/web")
    assert s.ip_families == ("IPv4",) and s.cluster_ips == (s.cluster_ip,)


def test_a_load_balancer_gets_an_address_from_each_familys_pool():
    pools = ["10.10.20.200-10.10.20.210", "fd00:10:20::200-fd00:10:20::210"]
    s = load(dump(dual(loadBalancerPool=pools), svc("lb", {"app": "a"}, type="LoadBalancer", ipFamilyPolicy="RequireDualStack"))).service("default/lb")
    assert s.load_balancer_ips == ("10.10.20.200", "fd00:10:20::200") and s.load_balancer_ip == "10.10.20.200"


@pytest.mark.parametrize(
    "lab,service,expect",
    [
        (lab_doc(), {"ipFamilyPolicy": "RequireDualStack"}, "spec.ipFamilyPolicy: this lab is not dual-stack"),
        (lab_doc(), {"ipFamilies": ["IPv6"]}, "spec.ipFamilies[0]: IPv6 is not configured in this lab"),
        (dual(), {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}, "spec.ipFamilyPolicy: SingleStack allows one family"),
        (dual(), {"ipFamilies": ["IPv4", "IPv4"]}, "spec.ipFamilies[1]: IPv4 is given twice"),
        (dual(), {"ipFamilyPolicy": "Dual"}, "spec.ipFamilyPolicy: 'Dual': must be one of SingleStack"),
        (dual(), {"clusterIP": "fd00:10:96::50", "ipFamilies": ["IPv4"]}, "spec.ipFamilies[0]: IPv4 does not match clusterIPs[0] fd00:10:96::50"),
        (dual(), {"clusterIP": "fd00:99::1"}, "spec.clusterIP: fd00:99::1 is not inside serviceNetwork fd00:10:96::/112"),
        (dual(), {"clusterIPs": ["10.96.0.50", "10.96.0.51"], "clusterIP": "10.96.0.50"}, "spec.clusterIPs[1]: 10.96.0.51 is of the same family"),
        (dual(), {"clusterIPs": ["10.96.0.50"], "clusterIP": "10.96.0.51"}, "spec.clusterIPs[0]: 10.96.0.50 must be the same as spec.clusterIP"),
        (dual(), {"clusterIP": "fd00:10:96::1"}, "spec.clusterIP: fd00:10:96::1 is reserved for default/kubernetes"),
    ],
)
def test_bad_families_of_a_service_are_refused(lab, service, expect):
    assert expect in one(dump(lab, svc("web", {"app": "a"}, **service)))


@pytest.mark.parametrize(
    "spec,expect",
    [
        ({**DUAL, "podNetwork": "10.244.0.0/16"}, "spec.podNetwork: gives 1 value(s) for 2 families"),
        ({**DUAL, "podNetwork": ["fd00:10:244::/56", "10.244.0.0/16"]}, "spec.podNetwork[0]: fd00:10:244::/56 is not IPv4 (spec.ipFamilies[0] is IPv4)"),
        ({"ipFamilies": ["IPv6", "IPv6"]}, "spec.ipFamilies: ['IPv6', 'IPv6']: a family may be given once"),
        ({**V6, "serviceNetwork": "fd00:10:96::/64"}, "an IPv6 service CIDR is at least /108"),
        ({**V6, "nodeCIDRMaskSizeIPv6": 80}, "spec.nodeCIDRMaskSizeIPv6: /80 is more than 16 bits longer than podNetwork fd00:10:244::/56"),
        ({**DUAL, "podNetwork": ["10.244.0.0/16", "fd00:10:244::1/56"]}, "spec.podNetwork[1]: 'fd00:10:244::1/56' has host bits set"),
        (
            {**DUAL, "serviceNetwork": ["10.96.0.0/16", "fd00:10:20::/112"]},
            "spec.serviceNetwork[1]: fd00:10:20::/112 overlaps spec.nodeNetwork fd00:10:20::/64",
        ),
        ({**DUAL, "nodes": [{"name": "n", "ips": ["fd00:10:20::5", "10.10.20.5"]}]}, "spec.nodes[0].ips[0]: 'fd00:10:20::5' is not an IPv4 address"),
        (
            {**DUAL, "nodes": [{"name": "n", "podCIDRs": ["10.244.0.0/24", "fd00:10:245::/64"]}]},
            "spec.nodes[0].podCIDRs[1]: fd00:10:245::/64 is not inside podNetwork",
        ),
        (
            {**DUAL, "loadBalancerPool": ["fd00:10:20::200-fd00:10:20::210", "10.10.20.200-10.10.20.210"]},
            "spec.loadBalancerPool[0]: fd00:10:20::200-fd00:10:20::210 is not IPv4",
        ),
        ({"nodes": [{"name": "n", "ip": "fd00::5"}]}, "spec.nodes[0].ip: 'fd00::5' is not an IPv4 address"),
    ],
)
def test_bad_family_networks_are_refused_naming_the_slot(spec, expect):
    found = problems(dump(lab_doc(**spec)))
    assert any(expect in p for p in found), found


def test_the_ipv6_view_is_the_lab_as_an_ipv6_cluster_sees_it():
    topo = load(
        dump(
            dual(),
            pod("a", labels={"app": "a"}),
            svc("both", {"app": "a"}, ipFamilyPolicy="PreferDualStack"),
            svc("four", {"app": "a"}),
            svc("head", {"app": "a"}, clusterIP="None"),
        )
    )
    v = family.view(topo, 6)
    assert v.lab.pod_network == "fd00:10:244::/56" and v.lab.nodes[0].ip == "fd00:10:20::a"
    assert v.pod("default/a").ip == "fd00:10:244::2"
    assert {s.key: s.cluster_ip for s in v.services} == {"default/both": topo.service("default/both").cluster_ips[1]}
    assert family.view(topo, 4).service("default/four").cluster_ip.startswith("10.96.")
    assert family.view(topo, 4).service("default/head").headless
    assert family.view(load(dump(lab_doc(), pod("a"))), 4) is not None


def test_a_policy_ipblock_of_the_other_family_matches_nothing_in_this_one():
    pol = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {
            "podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": "fd00:99::/64", "except": ["fd00:99::/80"]}}]}, {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}],
        },
    }
    topo = load(dump(dual(), pod("a"), pol))
    four, six = family.view(topo, 4).policies[0], family.view(topo, 6).policies[0]
    assert [r.peers[0].ip_block.cidr for r in four.ingress] == ["10.0.0.0/8"]
    assert [r.peers[0].ip_block.cidr for r in six.ingress] == ["fd00:99::/64"]
    assert "except" in one(
        dump(dual(), pod("a"), {**pol, "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00:99::/64", "except": ["10.0.0.0/8"]}}]}]}})
    )


def test_host_ports_join_as_go_does():
    assert family.hostport("fd00::1", 80) == "[fd00::1]:80" and family.hostport("10.0.0.1", 80) == "10.0.0.1:80"
    assert family.split_hostport("[fd00::1]:80") == ("fd00::1", 80) and family.split_hostport("10.0.0.1:53") == ("10.0.0.1", 53)


@pytest.mark.parametrize("field,value", [("proxyMode", "ebpf"), ("proxyMode", "ipvs"), ("overlay", "bgp"), ("overlay", "ipip")])
def test_what_serves_ipv4_alone_is_refused_in_a_lab_with_ipv6(field, value):
    for spec in (DUAL, V6):
        assert f"spec.{field}: {value} serves IPv4 alone" in one(dump(lab_doc(**spec, **{field: value})))
    assert load(dump(lab_doc(**{field: value}))) is not None
