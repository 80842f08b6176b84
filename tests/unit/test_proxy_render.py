"""Rendered kube-proxy rules, as text: golden layouts, jump targets, partial syncs."""

from __future__ import annotations

import re

from labctl import registry
from labctl.proxy import iptables, names, nftables
from tests.helpers import svc, topo_with, web_pod


def chains(rs: iptables.Ruleset, table: str) -> dict[str, list[str]]:
    return rs.tables[table]


def web_http():
    s = svc("web", {"app": "web"}, ports=((80, "http"),))
    s["spec"]["ports"][0]["name"] = "http"
    return s


def test_chain_names_are_those_of_a_real_cluster():
    rs = iptables.render(topo_with(web_http()), "node1")
    nat = chains(rs, "nat")
    assert "KUBE-SVC-NPX46M4PTMTKRN6Y" in nat  # default/kubernetes:https, in every cluster
    assert "KUBE-SVC-CDGGSHYLG3RE2FKL" in nat  # default/web:http


def test_cluster_ip_service_golden():
    topo = topo_with(web_http())
    nat = chains(iptables.render(topo, "node1"), "nat")
    sep_a = names.ipt_sep("default/web:http", "tcp", "10.244.0.2:8080")
    sep_b = names.ipt_sep("default/web:http", "tcp", "10.244.1.2:8080")
    assert (
        '-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-CDGGSHYLG3RE2FKL'
        in nat["KUBE-SERVICES"]
    )
    assert nat["KUBE-SERVICES"][-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"), "the last rule of KUBE-SERVICES"
    assert nat["KUBE-SVC-CDGGSHYLG3RE2FKL"] == [
        '-A KUBE-SVC-CDGGSHYLG3RE2FKL ! -s 10.244.0.0/16 -d 10.96.0.11/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ',
        f'-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.0.2:8080" -m statistic --mode random --probability 0.5000000000 -j {sep_a}',
        f'-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.1.2:8080" -j {sep_b}',
    ]
    assert nat[sep_a] == [
        f'-A {sep_a} -s 10.244.0.2/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ',
        f'-A {sep_a} -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.0.2:8080',
    ]
    assert nat["KUBE-MARK-MASQ"] == ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
    assert nat["KUBE-POSTROUTING"] == [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    ]


def test_probabilities_for_three_endpoints():
    topo = topo_with(web_http(), pods=[web_pod("a", "node1"), web_pod("b", "node2"), web_pod("c", "node1")])
    rules = chains(iptables.render(topo, "node1"), "nat")["KUBE-SVC-CDGGSHYLG3RE2FKL"]
    probs = [re.search(r"--probability (\S+)", r).group(1) if "--probability" in r else None for r in rules[1:]]
    assert probs == ["0.3333333333", "0.5000000000", None]


def test_a_service_without_endpoints_is_rejected_in_the_filter_table():
    topo = topo_with(svc("empty", {"app": "nobody"}))
    rs = iptables.render(topo, "node1")
    assert (
        '-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m comment --comment "default/empty has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable'
        in chains(rs, "filter")["KUBE-SERVICES"]
    )
    assert not any("default/empty" in r for r in chains(rs, "nat")["KUBE-SERVICES"])
    assert names.ipt_chain("KUBE-SVC-", "default/empty", "tcp") not in chains(rs, "nat")


def test_node_port_with_cluster_policy():
    topo = topo_with(svc("np", {"app": "web"}, type="NodePort", ports=((80, 8080),)))
    nat = chains(iptables.render(topo, "node2"), "nat")
    ext = names.ipt_chain("KUBE-EXT-", "default/np", "tcp")
    svc_chain = names.ipt_chain("KUBE-SVC-", "default/np", "tcp")
    assert nat["KUBE-NODEPORTS"] == [
        f'-A KUBE-NODEPORTS -d 127.0.0.0/8 -p tcp -m comment --comment "default/np" -m tcp --dport 30000 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j {ext}',
        f'-A KUBE-NODEPORTS -p tcp -m comment --comment "default/np" -m tcp --dport 30000 -j {ext}',
    ], "localhost NodePorts are counted apart, as kube-proxy does"
    without = chains(iptables.render(topo, "node2", nfacct=False), "nat")
    assert without["KUBE-NODEPORTS"] == nat["KUBE-NODEPORTS"][1:], "a kernel without nfnetlink_acct: no counting rule"
    assert nat[ext] == [
        f'-A {ext} -m comment --comment "masquerade traffic for default/np external destinations" -j KUBE-MARK-MASQ',
        f"-A {ext} -j {svc_chain}",
    ]


def test_node_port_with_local_policy_on_nodes_with_and_without_endpoints():
    topo = topo_with(
        svc("np", {"app": "web"}, type="NodePort", externalTrafficPolicy="Local", ports=((80, 8080),)), pods=[web_pod("a", "node1"), web_pod("c", "node1")]
    )
    ext = names.ipt_chain("KUBE-EXT-", "default/np", "tcp")
    svl = names.ipt_chain("KUBE-SVL-", "default/np", "tcp")
    on1 = iptables.render(topo, "node1")
    assert chains(on1, "nat")[ext][-1] == f"-A {ext} -j {svl}"
    assert len(chains(on1, "nat")[svl]) == 2, "both local endpoints"
    on2 = iptables.render(topo, "node2")
    assert svl not in chains(on2, "nat"), "no local endpoint: no SVL chain"
    assert not any(r.endswith(f"-j {svl}") for r in chains(on2, "nat")[ext])
    assert chains(on2, "filter")["KUBE-EXTERNAL-SERVICES"] == [
        '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "default/np has no local endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30000 -j DROP'
    ]
    hc = topo_with(
        svc("lb", {"app": "web"}, type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=31111, ports=((80, 8080),)),
        loadBalancerPool="10.10.20.200-10.10.20.201",
    )
    for node in ("node1", "node2"):  # open whether or not the node has endpoints: the answer tells
        assert chains(iptables.render(hc, node), "filter")["KUBE-NODEPORTS"] == [
            '-A KUBE-NODEPORTS -p tcp -m comment --comment "default/lb health check node port" -m tcp --dport 31111 -j ACCEPT'
        ]
    # pod and node-local sources still reach the service through the cluster chain
    assert any("pod traffic for default/np" in r for r in chains(on2, "nat")[ext])
    assert any("--src-type LOCAL -j KUBE-MARK-MASQ" in r for r in chains(on2, "nat")[ext])


def test_internal_traffic_policy_local():
    topo = topo_with(svc("itp", {"app": "web"}, internalTrafficPolicy="Local", ports=((80, 8080),)), pods=[web_pod("a", "node1")])
    svl = names.ipt_chain("KUBE-SVL-", "default/itp", "tcp")
    on1 = iptables.render(topo, "node1")
    assert any(r.endswith(f"-j {svl}") and "cluster IP" in r for r in chains(on1, "nat")["KUBE-SERVICES"])
    on2 = iptables.render(topo, "node2")
    assert any("has no local endpoints" in r and r.endswith("-j DROP") for r in chains(on2, "filter")["KUBE-SERVICES"])


def test_session_affinity_uses_recent():
    topo = topo_with(svc("sticky", {"app": "web"}, sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}, ports=((80, 8080),)))
    nat = chains(iptables.render(topo, "node1"), "nat")
    svc_chain = names.ipt_chain("KUBE-SVC-", "default/sticky", "tcp")
    sep = names.ipt_sep("default/sticky", "tcp", "10.244.0.2:8080")
    assert (
        f'-A {svc_chain} -m comment --comment "default/sticky -> 10.244.0.2:8080" -m recent --name {sep} --mask 255.255.255.255 --rcheck --seconds 60 --reap -j {sep}'
        in nat[svc_chain]
    )
    assert any("-m recent --set --name" in r and "DNAT" in r for r in nat[sep])


def full_shapes():
    return topo_with(
        web_http(),
        svc("np", {"app": "web"}, type="NodePort", externalTrafficPolicy="Local", ports=((80, 8080),)),
        svc("lb", {"app": "web"}, type="LoadBalancer", ports=((80, 8080),), externalIPs=["192.0.2.7"]),
        svc("itp", {"app": "web"}, internalTrafficPolicy="Local", ports=((80, 8080),)),
        svc("sticky", {"app": "web"}, sessionAffinity="ClientIP", ports=((80, 8080),)),
        svc("empty", {"app": "none"}, type="NodePort"),
        svc("fw", {"app": "web"}, type="LoadBalancer", ports=((80, 8080),), loadBalancerSourceRanges=["10.10.20.0/24"]),
        pods=[web_pod("a", "node1"), web_pod("b", "node1")],
        loadBalancerPool="10.10.20.200-10.10.20.201",
    )


def test_load_balancer_source_ranges_iptables_golden():
    lb = svc("db", {"app": "web"}, type="LoadBalancer", ports=((80, 8080),), loadBalancerSourceRanges=["10.10.20.96/27", "192.0.2.0/24"])
    topo = topo_with(lb, pods=[web_pod("a", "node1")], loadBalancerPool="10.10.20.200-10.10.20.201")
    rs = iptables.render(topo, "node1")
    nat, filt = chains(rs, "nat"), chains(rs, "filter")
    fw, ext = names.ipt_chain("KUBE-FW-", "default/db", "tcp"), names.ipt_chain("KUBE-EXT-", "default/db", "tcp")
    assert f'-A KUBE-SERVICES -d 10.10.20.200/32 -p tcp -m comment --comment "default/db loadbalancer IP" -m tcp --dport 80 -j {fw}' in nat["KUBE-SERVICES"]
    assert nat[fw] == [
        f'-A {fw} -s 10.10.20.96/27 -m comment --comment "default/db loadbalancer IP" -j {ext}',
        f'-A {fw} -s 192.0.2.0/24 -m comment --comment "default/db loadbalancer IP" -j {ext}',
        f'-A {fw} -m comment --comment "other traffic to default/db will be dropped by KUBE-PROXY-FIREWALL"',
    ], "node1 (10.10.20.10) is outside the ranges: no rule for its own LoadBalancer-IP-sourced traffic"
    assert filt["KUBE-PROXY-FIREWALL"] == [
        f'-A KUBE-PROXY-FIREWALL -d 10.10.20.200/32 -p tcp -m comment --comment "default/db traffic not accepted by {fw}" -m tcp --dport 80 -j DROP'
    ]
    covering = topo_with(
        svc("db", {"app": "web"}, type="LoadBalancer", ports=((80, 8080),), loadBalancerSourceRanges=["10.10.20.0/24"]),
        pods=[web_pod("a", "node1")],
        loadBalancerPool="10.10.20.200-10.10.20.201",
    )
    rules = chains(iptables.render(covering, "node1"), "nat")[fw]
    assert f'-A {fw} -s 10.10.20.200/32 -m comment --comment "default/db loadbalancer IP" -j {ext}' in rules, (
        "the node is in a range: its LB-sourced traffic too"
    )
    nft = nftables.render(covering, "node1")
    fwc = "firewall-" + names.nft_base("default", "db", "tcp", None)
    assert nft.maps["firewall-ips"] == {"10.10.20.200 . tcp . 80": f"goto {fwc}"}
    assert nft.chains[fwc] == ["ip saddr != { 10.10.20.0/24, 10.10.20.200 } drop"]


def test_every_iptables_jump_target_is_defined():
    topo = full_shapes()
    targets = {"ACCEPT", "DROP", "RETURN", "REJECT", "MARK", "DNAT", "MASQUERADE"}
    for node in ("node1", "node2"):
        rs = iptables.render(topo, node)
        for table, chs in rs.tables.items():
            for rules in chs.values():
                for r in rules:
                    if " -j " not in r:  # KUBE-FW-'s last rule only counts what falls through
                        assert "will be dropped by KUBE-PROXY-FIREWALL" in r, r
                        continue
                    target = r.split(" -j ")[1].split()[0]
                    assert target in chs or target in targets, f"{node} {table}: {r}"


def _plan_node(topo, node, infos, rec, scope=None):
    """The lab's proxy mode planning one node from these service ports (a scoped plan with `scope`)."""
    from labctl import registry
    from labctl.proxy.mode import NodeContext

    ctx = NodeContext(topo, node, rec, scope, lambda: infos, lambda: infos)
    return registry.proxy_mode(topo.lab.proxy_mode)._plan(ctx, infos, scope)


def node_sync(topo, node="node1", rec=None):
    from labctl.proxy.endpoints import service_ports

    return _plan_node(topo, node, service_ports(topo), rec)


def as_record(ns):
    return {"mode": ns.mode, "services": ns.services}


def test_a_plan_from_the_difference_equals_the_plan_from_every_service():
    """What `up` does with the lab's state at hand: only the services that differ, or
    select a pod that differs, are looked at; the transaction and the record must be
    those of a plan that looks at every service."""
    from dataclasses import replace

    from labctl.proxy.endpoints import affected_services, service_ports
    from labctl.proxy.mode import RESCAN

    dns = svc("dns", {"app": "web"}, ports=((53, 8080),))
    dns["spec"]["ports"][0]["protocol"] = "UDP"
    pods = [web_pod("a", "node1"), web_pod("b", "node2"), web_pod("o", "node2", labels={"app": "other"})]
    for mode in ("iptables", "nftables"):
        base = topo_with(
            web_http(), dns, svc("other", {"app": "other"}, ports=((81, 8080),)), pods=pods, proxyMode=mode, loadBalancerPool="10.10.20.200-10.10.20.201"
        )
        rec = as_record(node_sync(base))
        a, b, o = base.pod("default/a"), base.pod("default/b"), base.pod("default/o")
        other = base.service("default/other")
        variants = {
            "relabel out": replace(base, pods=(a, replace(b, labels={"app": "none"}), o)),
            "not ready": replace(base, pods=(replace(a, ready=False), b, o)),
            "pod gone": replace(base, pods=(a, o)),
            "pod added": replace(base, pods=(a, b, o, replace(b, name="c", ip="10.244.1.9"))),
            "service changed": replace(base, services=tuple(replace(s, session_affinity="ClientIP") if s is other else s for s in base.services)),
            "service gone": replace(base, services=tuple(s for s in base.services if s is not other)),
            "service added": replace(base, services=base.services + (replace(other, name="more", cluster_ip="10.96.0.99"),)),
            "nothing": base,
        }
        for what, new in variants.items():
            scope = affected_services(base, new)
            full = _plan_node(new, "node1", service_ports(new), rec)
            scoped = _plan_node(new, "node1", service_ports(new, only=scope), rec, scope)
            assert scoped is not RESCAN, what
            assert (scoped is None) == (full is None), what
            if full is not None:
                assert (scoped.text, scoped.services, scoped.touched, scoped.udp) == (full.text, full.services, full.touched, full.udp), (mode, what)
            assert len(scope) <= 2, (what, scope)
        assert affected_services(base, variants["not ready"]) == {"default/web", "default/dns"}
        assert affected_services(None, base) is None and affected_services(base, replace(base, lab=replace(base.lab, name="x"))) is None


def test_full_sync_replaces_the_tables_with_flannel_and_kube_proxy_chains():
    ns = node_sync(topo_with(web_http()))
    assert ns.full and registry.proxy_mode("iptables").argv(ns.full) == ["iptables-restore"]
    text = ns.text
    assert ":POSTROUTING ACCEPT [0:0]" in text and ":FLANNEL-POSTRTG - [0:0]" in text and ":KUBE-SVC-CDGGSHYLG3RE2FKL - [0:0]" in text
    nat = text[text.index("*nat") :]
    posts = [line for line in nat.splitlines() if line.startswith("-A POSTROUTING")]
    assert posts[0].endswith("-j KUBE-POSTROUTING") and posts[1].endswith("-j FLANNEL-POSTRTG"), "kube-proxy's jumps come first"
    filt = text[: text.index("*nat")]
    fwd = [line for line in filt.splitlines() if line.startswith("-A FORWARD")]
    assert fwd[-1].endswith("-j FLANNEL-FWD") and len(fwd) == 5


def test_partial_sync_rewrites_only_what_changed():
    pods = [web_pod("a", "node1"), web_pod("o", "node2", labels={"app": "other"})]
    topo = topo_with(web_http(), svc("other", {"app": "other"}, ports=((81, 9000),)), pods=pods)
    rec = as_record(node_sync(topo))
    assert node_sync(topo, rec=rec) is None, "nothing changed: no transaction"
    grown = topo_with(web_http(), svc("other", {"app": "other"}, ports=((81, 9000),)), pods=pods + [web_pod("b", "node2")])
    ns = node_sync(grown, rec=rec)
    assert not ns.full and registry.proxy_mode("iptables").argv(ns.full) == ["iptables-restore", "--noflush"] and ns.changed == 1
    declared = iptables.chains_in(ns.text)
    new_sep = names.ipt_sep("default/web:http", "tcp", f"{grown.pod('default/b').ip}:8080")
    assert sorted(declared) == sorted(["KUBE-SVC-CDGGSHYLG3RE2FKL", new_sep]), "only the changed service's chains"
    assert "KUBE-SERVICES" not in ns.text, "its dispatch rule did not change: KUBE-SERVICES is left alone"
    gone = topo_with(svc("other", {"app": "other"}, ports=((81, 9000),)), pods=pods[1:])
    text = node_sync(gone, rec=rec).text
    assert "-X KUBE-SVC-CDGGSHYLG3RE2FKL" in text and ":KUBE-SVC-CDGGSHYLG3RE2FKL - [0:0]" in text, "stale chains flushed and deleted"
    assert '-D KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m comment --comment "default/web:http cluster IP"' in text
    assert text.index("-D KUBE-SERVICES") < text.index("-X KUBE-SVC-CDGGSHYLG3RE2FKL"), "the jump goes before the chain"


def test_a_new_service_is_inserted_ahead_of_the_nodeport_rule():
    pods = [web_pod("a", "node1")]
    rec = as_record(node_sync(topo_with(web_http(), pods=pods)))
    text = node_sync(topo_with(web_http(), svc("more", {"app": "web"}, ports=((82, 8080),)), pods=pods), rec=rec).text
    assert '-I KUBE-SERVICES 1 -d 10.96.0.12/32 -p tcp -m comment --comment "default/more cluster IP"' in text


def test_a_record_of_another_mode_means_a_full_sync():
    topo = topo_with(web_http())
    rec = as_record(node_sync(topo))
    assert node_sync(topo, rec=dict(rec, mode="nftables")).full


def many_services(n: int, per_service: int = 5):
    """n ClusterIP services with static endpoints (no pods), as the benchmark builds them."""
    from labctl.model.objects import LabSpec, Node, Service, ServicePort, Topology

    spec = LabSpec(name="big", service_network="10.96.0.0/12", nodes=(Node("node1", "10.10.20.10", "10.244.0.0/24"),))
    return Topology(
        lab=spec,
        services=tuple(
            Service(
                namespace="big",
                name=f"s{i}",
                cluster_ip=f"10.96.{1 + i // 250}.{1 + i % 250}",
                ports=(ServicePort(port=80, name="http", target_port=8080),),
                static_endpoints=tuple(f"10.128.{i // 50}.{(i % 50) * 5 + k}:8080" for k in range(per_service)),
            )
            for i in range(n)
        ),
    )


def test_large_cluster_mode_drops_the_endpoint_comments_past_1000_endpoints():
    def rules_of(topo, service):
        nat = chains(iptables.render(topo, "node1"), "nat")
        svc = names.ipt_chain("KUBE-SVC-", f"big/{service}:http", "tcp")
        sep = names.ipt_sep(f"big/{service}:http", "tcp", "10.128.0.0:8080")
        return nat["KUBE-SERVICES"][0], nat[svc], nat[sep]

    top, svc, sep = rules_of(many_services(200), "s0")  # 1,000 endpoints: not yet
    assert all("--comment" in r for r in svc + sep)
    top, svc, sep = rules_of(many_services(201), "s0")  # 1,005
    assert '--comment "big/s0:http cluster IP"' in top and '--comment "big/s0:http cluster IP"' in svc[0], "dispatch and masquerade rules keep theirs"
    assert not any("--comment" in r for r in svc[1:] + sep)
    assert svc[1].split(" ", 2)[2].startswith("-m statistic --mode random --probability 0.2000000000 -j KUBE-SEP-")
    assert sep == [
        f"-A {sep[0].split()[1]} -s 10.128.0.0/32 -j KUBE-MARK-MASQ",
        f"-A {sep[0].split()[1]} -p tcp -m tcp -j DNAT --to-destination 10.128.0.0:8080",
    ]


def test_crossing_the_large_cluster_threshold_rewrites_every_service():
    from labctl.proxy.endpoints import affected_services, service_ports
    from labctl.proxy.mode import RESCAN

    rec = as_record(node_sync(many_services(200)))
    base, grown = many_services(200), many_services(201)
    scope = affected_services(base, grown)
    assert scope == {"big/s200"}
    assert _plan_node(grown, "node1", service_ports(grown, only=scope), rec, scope) is RESCAN, "one new service, but every one's rules change"
    ns = node_sync(grown, rec=rec)
    assert not ns.full and ns.changed == 201
    rec = as_record(ns)
    ns = node_sync(many_services(202), rec=rec)
    assert ns.changed == 1, "past the threshold, one new service is one change"


# -- nftables -------------------------------------------------------------------------------


def test_nft_dispatch_maps_and_chains():
    topo = topo_with(web_http(), svc("np", {"app": "web"}, type="NodePort", ports=((80, 8080),)), svc("empty", {"app": "none"}))
    r = nftables.render(topo, "node1")
    svc_chain = "service-" + names.nft_base("default", "web", "tcp", "http")
    assert svc_chain.startswith("service-") and svc_chain.endswith("-default/web/tcp/http")
    assert r.maps["service-ips"]["10.96.0.11 . tcp . 80"] == f"goto {svc_chain}"
    ext = "external-" + names.nft_base("default", "np", "tcp", None)
    assert r.maps["service-nodeports"]["tcp . 30000"] == f"goto {ext}"
    assert r.maps["no-endpoint-services"]["10.96.0.13 . tcp . 80"] == 'goto reject-chain comment "default/empty"', "a reader can tell which service"
    assert set(r.maps["cluster-ips"]) == {"10.96.0.1", "10.96.0.11", "10.96.0.12", "10.96.0.13"}
    ep_a = "endpoint-" + names.nft_endpoint_base("default", "web", "tcp", "http", "10.244.0.2", 8080)
    assert r.chains[svc_chain] == [
        "ip daddr 10.96.0.11 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        f"numgen random mod 2 vmap {{ 0 : goto {ep_a} , 1 : goto {'endpoint-' + names.nft_endpoint_base('default', 'web', 'tcp', 'http', '10.244.1.2', 8080)} }}",
    ]
    assert r.chains[ep_a] == ["ip saddr 10.244.0.2 jump mark-for-masquerade", "meta l4proto tcp dnat to 10.244.0.2:8080"]
    assert r.chains[ext] == ["jump mark-for-masquerade", f"goto service-{names.nft_base('default', 'np', 'tcp', None)}"]
    text = nftables.full(r, "10.96.0.0/16", "10.10.20.10")
    assert 'add element ip kube-proxy no-endpoint-services { 10.96.0.13 . tcp . 80 comment "default/empty" : goto reject-chain }' in text
    assert "add element ip kube-proxy nodeport-ips { 10.10.20.10 }" in text, "NodePorts on the node's address alone, not cni0's"
    assert "add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports" in text
    assert "add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }" in text
    assert "add rule ip kube-proxy filter-output ct state new jump cluster-ips-check" in text


def test_nft_affinity_sets():
    topo = topo_with(svc("sticky", {"app": "web"}, sessionAffinity="ClientIP", ports=((80, 8080),)), proxyMode="nftables")
    r = nftables.render(topo, "node1")
    base = names.nft_endpoint_base("default", "sticky", "tcp", None, "10.244.0.2", 8080)
    assert r.affinity[f"affinity-{base}"] == 10800
    assert f"update @affinity-{base} {{ ip saddr }}" in r.chains[f"endpoint-{base}"]
    text = nftables.full(r, "10.96.0.0/16", "10.10.20.10")
    assert f"add set ip kube-proxy affinity-{base} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }}" in text


def test_every_nft_goto_and_jump_target_is_defined():
    topo = full_shapes()
    for node in ("node1", "node2"):
        text = nftables.full(nftables.render(topo, node), "10.96.0.0/16", topo.lab.node(node).ip)
        defined = set(re.findall(r"^add chain ip kube-proxy (\S+)", text, flags=re.M))
        used = set(re.findall(r"(?:goto|jump) (\S+?)(?: |,|$|\})", text, flags=re.M))
        assert used <= defined, used - defined


def test_nft_partial_sync_touches_only_the_changed_service():
    pods = [web_pod("a", "node1"), web_pod("o", "node2", labels={"app": "other"})]
    topo = topo_with(web_http(), svc("other", {"app": "other"}, ports=((81, 9000),)), pods=pods, proxyMode="nftables")
    first = node_sync(topo)
    assert first.full and first.text.startswith("add table ip kube-proxy")
    rec = as_record(first)
    assert node_sync(topo, rec=rec) is None
    grown = topo_with(web_http(), svc("other", {"app": "other"}, ports=((81, 9000),)), pods=pods + [web_pod("b", "node2")], proxyMode="nftables")
    text = node_sync(grown, rec=rec).text
    assert "delete table" not in text
    assert "default/other" not in text, "the other service is untouched"
    assert "add chain ip kube-proxy service-" in text and f"default/web/tcp/http__{grown.pod('default/b').ip}/8080" in text
    gone = topo_with(svc("other", {"app": "other"}, ports=((81, 9000),)), pods=pods[1:], proxyMode="nftables")
    text = node_sync(gone, rec=rec).text
    assert "delete element ip kube-proxy service-ips { 10.96.0.11 . tcp . 80 }" in text
    assert "delete element ip kube-proxy cluster-ips { 10.96.0.11 }" in text
    assert re.search(r"^delete chain ip kube-proxy service-\S+-default/web/tcp/http$", text, flags=re.M)
