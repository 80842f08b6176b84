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


@pytest.mark.parametrize("field,value", [("proxyMode", "ebpf"), ("overlay", "ipip")])
def test_what_serves_ipv4_alone_is_refused_in_a_lab_with_ipv6(field, value):
    for spec in (DUAL, V6):
        assert f"spec.{field}: {value} serves IPv4 alone" in one(dump(lab_doc(**spec, **{field: value})))
    assert load(dump(lab_doc(**{field: value}))) is not None


# -- each family's rules, rendered from its view --------------------------------------------


def dual_lab_with_web(*more):
    return load(
        dump(
            dual(loadBalancerPool=["10.10.20.200-10.10.20.210", "fd00:10:20::c8-fd00:10:20::d2"]),
            pod("a", node="node1", labels={"app": "web"}),
            pod("b", node="node2", labels={"app": "web"}),
            svc("web", {"app": "web"}, ipFamilyPolicy="PreferDualStack", sessionAffinity="ClientIP"),
            svc("lb", {"app": "web"}, type="LoadBalancer", ipFamilyPolicy="RequireDualStack", loadBalancerSourceRanges=["fd00:10:20::64/128"]),
            svc("empty", {"app": "nobody"}, ipFamilies=["IPv6"]),
            *more,
        )
    )


def test_ip6tables_rules_are_kube_proxys_ipv6_proxier_s():
    from labctl.proxy import iptables
    from labctl.proxy import names as pn

    topo = dual_lab_with_web()
    six = family.view(topo, 6)
    text = iptables.full(iptables.render(six, "node1"), iptables.masquerade_chains(six.lab, six.lab.node("node1")))
    web6 = six.service("default/web").cluster_ip
    svc_chain = pn.ipt_chain("KUBE-SVC-", "default/web", "tcp")
    assert svc_chain == pn.ipt_chain("KUBE-SVC-", "default/web", "tcp"), "the same chain names as IPv4's (kube-proxy hashes the service port, not the family)"
    assert f"-A KUBE-SERVICES -d {web6}/128 -p tcp" in text
    sep = pn.ipt_sep("default/web", "tcp", "[fd00:10:244::2]:8080")
    assert f"-A {sep} -s fd00:10:244::2/128" in text and "--to-destination [fd00:10:244::2]:8080" in text
    assert "--mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" in text, "ClientIP affinity over the whole IPv6 address"
    assert "--reject-with icmp6-port-unreachable" in text and "icmp-port-unreachable" not in text.replace("icmp6-port-unreachable", "")
    assert "127.0.0.0/8" not in text, "no IPv4 localhost rules in ip6tables"
    assert "-s fd00:10:244::/56 ! -d ff00::/8" in text, "flannel's masquerade, IPv6 multicast left alone"
    four = iptables.full(iptables.render(family.view(topo, 4), "node1"), iptables.masquerade_chains(topo.lab, topo.lab.node("node1")))
    assert "fd00:" not in four and "empty" not in four, "the IPv4 rules hold nothing of IPv6, nor an IPv6-only service"


def test_the_ip6_kube_proxy_table():
    from labctl.proxy import nftables

    six = family.view(dual_lab_with_web(), 6)
    text = nftables.six(nftables.full(nftables.render(six, "node1"), six.lab.service_network, six.lab.node("node1").ip))
    assert "add table ip6 kube-proxy" in text and "ip kube-proxy" not in text
    assert "type ipv6_addr . inet_proto . inet_service : verdict" in text and "ipv4_addr" not in text
    assert "ip6 daddr @cluster-ips reject" in text and "ip daddr" not in text
    assert "endpoint-" in text and "__fd00.10.244..2/8080" in text, "colons of an endpoint's address are dots in its chain's name"
    assert "dnat to [fd00:10:244::2]:8080" in text
    assert "ip6 saddr != { fd00:10:20::64/128 } drop" in text or "ip6 saddr != fd00:10:20::64/128 drop" in text


def test_policy_rules_of_the_ipv6_family():
    from labctl.policy import rules as R

    pol = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"ipBlock": {"cidr": "::/0", "except": ["fd00:10:244::2/128"]}}]}]},
    }
    topo = dual_lab_with_web(pol)
    four, six = R.render(family.view(topo, 4), "node1"), R.render(family.view(topo, 6), "node1")
    assert all(n.startswith(("NP6-", "LABCTL-ISO6-")) for n in six.sets) and not any(n.startswith(("NP6-", "LABCTL-ISO6-")) for n in four.sets)
    assert {s.family for s in six.sets.values()} == {"inet6"} and {s.family for s in four.sets.values()} == {"inet"}
    block = next(s for s in six.sets.values() if s.type == "hash:net")
    assert block.members == {"::/1", "8000::/1", "fd00:10:244::2/128 nomatch"}, "a /0 as two halves, the except as nomatch"
    assert not any(s.type == "hash:net" for s in four.sets.values()), "the IPv6 ipBlock matches nothing in IPv4"
    text = R.chains_text(six, install_jumps=True)
    assert "--match-set LABCTL-ISO6-INGRESS dst" in text and "icmp6-adm-prohibited" in text
    assert "-p ipv6-icmp -m icmp6 --icmpv6-type 135" in text, "neighbour discovery passes"
    assert "create NP6-" in R.ipset_update(six.sets, None)[0] and "family inet6" in R.ipset_update(six.sets, None)[0]


def test_dns_records_of_both_families():
    from labctl.addons.dns.records import zone

    topo = load(
        dump(
            dual(dns=True),
            pod("a", labels={"app": "web"}),
            svc("web", {"app": "web"}, ipFamilyPolicy="PreferDualStack"),
            svc("head", {"app": "web"}, clusterIP="None", ipFamilyPolicy="RequireDualStack"),
        )
    )
    z = zone(topo)["records"]
    web = topo.service("default/web")
    assert z["web.default.svc.cluster.local."] == {"A": [web.cluster_ips[0]], "AAAA": [web.cluster_ips[1]]}
    assert z["head.default.svc.cluster.local."] == {"A": ["10.244.0.2"], "AAAA": ["fd00:10:244::2"]}
    assert "fd00-10-244--2.head.default.svc.cluster.local." in z
    ptr = __import__("ipaddress").ip_address(web.cluster_ips[1]).reverse_pointer + "."
    assert z[ptr] == {"PTR": ["web.default.svc.cluster.local."]} and ptr.endswith(".ip6.arpa.")
    assert "fd00:10:96::/112" in zone(topo)["reverse"]


def test_explain_over_ipv6_names_the_ipv6_rules_and_sets():
    from labctl.cli.common import family_targets
    from labctl.policy.explain import explain

    pol = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]},
    }
    topo = dual_lab_with_web(pod("c", labels={"app": "other"}), pol)
    a, b, view = family_targets(topo, "c", "a", "6")
    assert b.ip == "fd00:10:244::2" and view.lab.pod_network == "fd00:10:244::/56"
    r = explain(view, a, b, 8080, "tcp")
    assert not r["allowed"] and "ip6tables filter LABCTL-NETPOL-INGRESS (the pod is in ipset LABCTL-ISO6-INGRESS)" in " ".join(r["ingress"]["kernel"])
    a, b, view = family_targets(topo, "c", "fd00:10:244::2", None)
    assert b.pod is not None and b.pod.key == "default/a", "an IPv6 address is looked up in the IPv6 view"
