"""kube-proxy's IPVS mode as data: virtual servers, kube-ipvs0 addresses, ipsets,
the remaining iptables rules, and the incremental diff of the IPVS table."""

from __future__ import annotations

import pytest

from labctl.errors import InvalidInput
from labctl.proxy import ipvs
from tests.helpers import svc, topo_with, web_pod


def test_one_virtual_server_per_ip_protocol_and_port_with_masquerade_real_servers():
    s = svc("web", {"app": "web"}, type="NodePort", ports=((80, 8080),))
    topo = topo_with(s)
    n = ipvs.render(topo, "node1")
    web = topo.service("default/web")
    np = web.ports[0].node_port
    a, b = topo.pod("default/a").ip, topo.pod("default/b").ip
    cluster = n.servers[(web.cluster_ip, "tcp", 80)]
    assert cluster.dests == ((a, 8080), (b, 8080)) and cluster.scheduler == "rr" and cluster.timeout == 0
    assert n.servers[("10.10.20.10", "tcp", np)].dests == cluster.dests, "the NodePort on the node's own IP"
    nodeports = sorted(k[0] for k in n.servers if k[2] == np)
    assert nodeports == ["10.10.20.10", "10.244.0.0", "10.244.0.1"], "and on every other address but kube-ipvs0's and loopback: flannel.1, cni0"
    assert ("10.10.20.11", "tcp", np) not in n.servers, "each node serves its own addresses"
    assert n.servers[("10.96.0.1", "tcp", 443)].dests == (("10.10.20.10", 6443),)
    assert n.addresses == {web.cluster_ip, "10.96.0.1"}, "ClusterIPs on kube-ipvs0, never node IPs"
    assert n.sets["KUBE-CLUSTER-IP"] == {f"{web.cluster_ip},tcp:80", "10.96.0.1,tcp:443"}
    assert n.sets["KUBE-NODE-PORT-TCP"] == {str(np)} and not n.sets["KUBE-NODE-PORT-LOCAL-TCP"]
    assert n.sets["KUBE-LOOP-BACK"] == {f"{a},tcp:8080,{a}"}, "the node's own endpoints alone"
    assert n.sets["KUBE-IPVS-IPS"] == n.addresses


def test_traffic_policies_affinity_and_scheduler():
    local = svc("loc", {"app": "web"}, type="LoadBalancer", externalTrafficPolicy="Local", ports=((80, 8080),))
    itp = svc("itp", {"app": "web"}, internalTrafficPolicy="Local", sessionAffinity="ClientIP", ports=((81, 8080),))
    topo = topo_with(local, itp, loadBalancerPool="10.10.20.200-10.10.20.210", ipvsScheduler="sh")
    n = ipvs.render(topo, "node1")
    a = topo.pod("default/a").ip
    lb = topo.service("default/loc")
    assert n.servers[(lb.load_balancer_ip, "tcp", 80)].dests == ((a, 8080),), "Local: only this node's endpoints"
    assert len(n.servers[(lb.cluster_ip, "tcp", 80)].dests) == 2, "the ClusterIP keeps every endpoint"
    assert lb.load_balancer_ip in n.addresses
    assert f"{lb.load_balancer_ip},tcp:80" in n.sets["KUBE-LOAD-BALANCER-LOCAL"]
    assert str(lb.ports[0].node_port) in n.sets["KUBE-NODE-PORT-LOCAL-TCP"]
    vs = n.servers[(topo.service("default/itp").cluster_ip, "tcp", 81)]
    assert vs.dests == ((a, 8080),) and vs.timeout == 10800 and vs.scheduler == "sh"
    # node2's only endpoint is b: the LoadBalancer IP's virtual server there has b alone
    assert ipvs.render(topo, "node2").servers[(lb.load_balancer_ip, "tcp", 80)].dests == ((topo.pod("default/b").ip, 8080),)


def test_a_service_without_endpoints_keeps_its_virtual_server_without_real_servers():
    topo = topo_with(svc("empty", {"app": "nobody"}), pods=[web_pod("a", "node1")])
    vs = ipvs.render(topo, "node1").servers[(topo.service("default/empty").cluster_ip, "tcp", 80)]
    assert vs.dests == (), "the kernel answers ICMP port unreachable, as kube-proxy's IPVS mode does"


def test_diff_touches_only_what_changed():
    def vs(ip, dests, sched="rr", timeout=0):
        return ipvs.VirtualServer(ip, "tcp", 80, sched, timeout, tuple(dests))

    have = {v.key: v for v in (vs("10.96.0.5", [("10.244.0.2", 80)]), vs("10.96.0.6", [("10.244.0.3", 80)]), vs("10.96.0.7", []))}
    want = {
        v.key: v
        for v in (
            vs("10.96.0.5", [("10.244.0.2", 80), ("10.244.1.2", 80)]),
            vs("10.96.0.6", [("10.244.0.3", 80)], timeout=60),
            vs("10.96.0.8", [("10.244.0.4", 80)]),
        )
    }
    ch = ipvs.diff(have, want)
    assert [v.ip for v in ch.add] == ["10.96.0.8"] and [v.ip for v in ch.remove] == ["10.96.0.7"]
    assert [v.ip for v in ch.set] == ["10.96.0.6"], "persistence changed: set, not delete and add"
    assert [(v.ip, d) for v, d in ch.add_dests] == [("10.96.0.5", ("10.244.1.2", 80))] and not ch.remove_dests
    assert len(ipvs.diff(want, want)) == 0


def test_ipset_transactions():
    full = ipvs.ipset_full({"KUBE-CLUSTER-IP": {"10.96.0.1,tcp:443"}})
    assert "create KUBE-CLUSTER-IP hash:ip,port -exist\nflush KUBE-CLUSTER-IP\nadd KUBE-CLUSTER-IP 10.96.0.1,tcp:443\n" in full
    assert "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 -exist" in full
    upd = ipvs.ipset_update({"KUBE-CLUSTER-IP": {"10.96.0.1,tcp:443", "10.96.0.9,udp:53"}}, {"KUBE-CLUSTER-IP": ["10.96.0.1,tcp:443", "10.96.0.8,tcp:80"]})
    assert upd == "del KUBE-CLUSTER-IP 10.96.0.8,tcp:80\nadd KUBE-CLUSTER-IP 10.96.0.9,udp:53\n"
    assert ipvs.ipset_update({"KUBE-CLUSTER-IP": {"a"}}, {"KUBE-CLUSTER-IP": ["a"]}) == ""
    # a record written before a set existed (an older labctl): the set is made before its members
    older = ipvs.ipset_update({"KUBE-CLUSTER-IP": {"a"}, "KUBE-LOAD-BALANCER-FW": {"b"}}, {"KUBE-CLUSTER-IP": ["a"]})
    assert older == "create KUBE-LOAD-BALANCER-FW hash:ip,port -exist\nadd KUBE-LOAD-BALANCER-FW b\n"


def test_remaining_iptables_rules_as_kube_proxy_writes_them():
    from labctl.plumbing.node import masquerade_chains

    topo = topo_with()
    text = ipvs.full(ipvs.chains("10.244.0.0/16"), masquerade_chains(topo.lab, topo.lab.nodes[0]))
    assert (
        '-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ'
        in text
    )
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN" in text
    assert "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable" in text
    assert text.index("-j KUBE-POSTROUTING") < text.index("-j FLANNEL-POSTRTG"), "kube-proxy's jumps first, then flannel's"
    assert "KUBE-SVC-" not in text and "KUBE-SEP-" not in text


def test_rules_on_sets_are_written_only_while_the_set_has_members():
    """As kube-proxy's writeIptablesRules: a lab without LoadBalancers has no rule on
    KUBE-LOAD-BALANCER; the health check and IPVS filter rules are always there."""
    topo = topo_with(proxyMode="ipvs")
    ours = ipvs.chains("10.244.0.0/16", ipvs.render(topo, "node1"))
    nat, filt = ours.chains["nat"], ours.chains["filter"]
    assert nat["KUBE-SERVICES"][0] == "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN"
    assert not any("KUBE-LOAD-BALANCER " in r or "KUBE-EXTERNAL-IP" in r for r in nat["KUBE-SERVICES"])
    assert nat["KUBE-LOAD-BALANCER"] == ["-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ"] and nat["KUBE-NODE-PORT"] == []
    assert filt["KUBE-NODE-PORT"] == [
        '-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT'
    ]
    assert len(filt["KUBE-IPVS-FILTER"]) == 6 and filt["KUBE-FORWARD"][0].startswith("-A KUBE-FORWARD -m comment"), "no INVALID drop in IPVS mode"
    assert ("filter", "OUTPUT", '-m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER') in ours.jumps
    local = svc("loc", {"app": "web"}, type="LoadBalancer", externalTrafficPolicy="Local", externalIPs=["10.10.20.150"], ports=((80, 8080),))
    topo = topo_with(local, proxyMode="ipvs", loadBalancerPool="10.10.20.200-10.10.20.201")
    n = ipvs.render(topo, "node1")
    assert n.sets["KUBE-EXTERNAL-IP-LOCAL"] == {"10.10.20.150,tcp:80"} and not n.sets["KUBE-EXTERNAL-IP"], "a Local external IP is in one set"
    assert n.sets["KUBE-HEALTH-CHECK-NODE-PORT"] == {str(topo.service("default/loc").health_check_node_port)}
    nat = ipvs.chains("10.244.0.0/16", n).chains["nat"]
    assert nat["KUBE-LOAD-BALANCER"][0].endswith("KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN")
    assert [r.split(" -j ")[-1] for r in nat["KUBE-NODE-PORT"]] == ["RETURN", "KUBE-MARK-MASQ"]
    assert sum("KUBE-EXTERNAL-IP-LOCAL" in r for r in nat["KUBE-SERVICES"]) == 2


def test_sysctls_leave_conn_reuse_mode_on_kernels_that_fixed_it():
    assert "net.ipv4.vs.conn_reuse_mode" not in ipvs.sysctls("6.1.0-57-amd64")
    assert ipvs.sysctls("5.4.0-150-generic")["net.ipv4.vs.conn_reuse_mode"] == "0"


def test_load_balancer_source_ranges_as_kube_proxy_sets_and_rules():
    lb = svc("db", {"app": "web"}, type="LoadBalancer", ports=((80, 8080),), loadBalancerSourceRanges=["10.10.20.0/24", "0.0.0.0/0"])
    topo = topo_with(lb, proxyMode="ipvs", loadBalancerPool="10.10.20.200-10.10.20.201")
    n = ipvs.render(topo, "node1")
    e = "10.10.20.200,tcp:80"
    assert n.sets["KUBE-LOAD-BALANCER-FW"] == {e}
    assert n.sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == {f"{e},10.10.20.0/24", f"{e},0.0.0.0/1", f"{e},128.0.0.0/1"}, "a /0 cannot be a hash:net member"
    assert n.sets["KUBE-LOAD-BALANCER-SOURCE-IP"] == {f"{e},10.10.20.200"}, "node1 is inside a range: its traffic sourced from the LB IP too"
    text = ipvs.full(ipvs.chains("10.244.0.0/16"), ipvs.Chains({}, []))
    assert (
        '-A KUBE-PROXY-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port for load balancer with sourceRange" -m set --match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL'
        in text
    )
    assert (
        '-A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port + source cidr for packet filter purpose" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN'
        in text
    )
    assert text.index("KUBE-LOAD-BALANCER-SOURCE-IP dst,dst,src -j RETURN") < text.index("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP")
    assert not ipvs.render(topo_with(proxyMode="ipvs"), "node1").sets["KUBE-LOAD-BALANCER-FW"]
    assert n.no_node_access == [], "node1 is inside a range"
    outside = svc("db", {"app": "web"}, type="LoadBalancer", ports=((80, 8080),), loadBalancerSourceRanges=["192.0.2.0/24"])
    n = ipvs.render(topo_with(outside, proxyMode="ipvs", loadBalancerPool="10.10.20.200-10.10.20.201"), "node1")
    assert ipvs.chains("10.244.0.0/16", n).chains["filter"]["KUBE-IPVS-OUT-FILTER"] == [
        "-A KUBE-IPVS-OUT-FILTER -s 10.10.20.200/32 -m ipvs --vaddr 10.10.20.200/32 --vproto tcp --vport 80 -j DROP"
    ], "the node is kept off a LoadBalancer IP its source ranges leave out"


def test_scheduler_is_validated_by_the_schema():
    with pytest.raises(InvalidInput) as e:
        topo_with(ipvsScheduler="fastest")
    assert "ipvsScheduler" in str(e.value.problems if hasattr(e.value, "problems") else e.value)
