"""Cluster DNS, pure: the system pod and service, records, answers on the wire
(dnspython), pods' resolv.conf and hosts, service environment variables."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from labctl.addons.dns.records import zone
from labctl.addons.dns.server import FORWARD, Answerer
from labctl.model import dns as model_dns
from labctl.plan.topology import plan
from tests.helpers import dump, lab_doc, load, namespace, one, pod, svc


def dns_lab(*docs, **spec):
    spec.setdefault("dns", True)
    return load(dump(lab_doc(**spec), *docs))


def with_spec(doc: dict, **spec) -> dict:
    doc["spec"].update(spec)
    return doc


def named(name, selector, ports, namespace="default", **spec):
    """A service whose ports all have names: [(name, port, target, protocol)]."""
    body = {"selector": selector, "ports": [{"name": n, "port": p, "targetPort": t, "protocol": pr} for n, p, t, pr in ports], **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": body}


def web_pod(name, node=None, labels=None, **spec):
    doc = pod(name, node=node, labels=labels or {"app": "web"})
    doc["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "metrics"}]
    doc["spec"].update(spec)
    return doc


def ask(answerer: Answerer, name: str, rtype: str = "A", tcp: bool = False, edns: bool = True) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, use_edns=0 if edns else False)
    wire = answerer.handle(q.to_wire(), tcp)
    assert isinstance(wire, bytes), f"{name} {rtype}: {wire}"
    return dns.message.from_wire(wire)


def answers(m: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in m.answer for rd in rrset)


# -- the system objects -----------------------------------------------------------------


def test_dns_pod_and_service_are_the_labs_own():
    topo = dns_lab(web_pod("a"))
    dnspod = topo.pod("kube-system/coredns")
    assert dnspod.node == "node1" and dnspod.labels == {"k8s-app": "kube-dns"} and dnspod.ip == "10.244.0.3", "after the lab's own pods"
    assert topo.pod("default/a").ip == "10.244.0.2", "the DNS pod does not shift the lab's addresses"
    s = topo.service("kube-system/kube-dns")
    assert s.cluster_ip == "10.96.0.10" and [(p.name, p.port, p.protocol) for p in s.ports] == [
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
        ("metrics", 9153, "TCP"),
    ]
    off = load(dump(lab_doc(dns=False), web_pod("a")))
    assert [p.key for p in off.pods] == ["default/a"] and [s.key for s in off.services] == ["default/kubernetes"]


def test_the_dns_objects_cannot_be_redefined_unless_dns_is_off():
    dnspod = pod("coredns", namespace="kube-system")
    assert "kube-system/coredns is the lab's DNS pod (set `dns: false`" in one(dump(lab_doc(dns=True), dnspod))
    kdns = svc("kube-dns", {"k8s-app": "mine"}, ports=((53, 53),), namespace="kube-system")
    assert "kube-system/kube-dns is the lab's DNS service" in one(dump(lab_doc(dns=True), kdns))
    mine = load(dump(lab_doc(dns=False), kdns, dnspod))
    assert mine.service("kube-system/kube-dns").cluster_ip == "10.96.0.10", "your own DNS service gets the DNS address"


@pytest.mark.parametrize(
    "spec, path, message",
    [
        ({"dnsPolicy": "ClusterFirstt"}, "spec.dnsPolicy", "must be one of ClusterFirst, ClusterFirstWithHostNet, Default, None"),
        ({"dnsPolicy": "None"}, "spec.dnsConfig.nameservers", "at least one DNS nameserver when dnsPolicy is None"),
        ({"dnsConfig": {"nameservers": ["1.1.1.1", "8.8.8.8", "9.9.9.9", "1.0.0.1"]}}, "spec.dnsConfig.nameservers", "more than 3"),
        ({"dnsConfig": {"nameservers": ["dns.example"]}}, "spec.dnsConfig.nameservers[0]", "is not an IP address"),
        ({"hostname": "Web_1"}, "spec.hostname", "DNS-1123"),
    ],
)
def test_pod_dns_fields_are_validated(spec, path, message):
    msg = one(dump(lab_doc(), with_spec(pod("a"), **spec)))
    assert path in msg and message in msg


def test_dns_upstream_is_validated():
    assert "spec.dnsUpstream: port 70000 is out of range" in one(dump(lab_doc(dnsUpstream="10.10.20.53:70000")))
    assert "spec.dnsUpstream" in one(dump(lab_doc(dnsUpstream="dns.example")))
    assert model_dns.upstream(load(dump(lab_doc(dnsUpstream="10.10.20.53"))).lab) == ("10.10.20.53", 53)


# -- records --------------------------------------------------------------------------


def _zone(*docs, **spec):
    return zone(dns_lab(*docs, **spec))["records"]


def test_cluster_ip_service_a_srv_and_ptr():
    recs = _zone(web_pod("a"), named("web", {"app": "web"}, [("http", 80, "http", "TCP"), ("dns", 53, 53, "UDP")]))
    assert recs["web.default.svc.cluster.local."]["A"] == ["10.96.0.11"]
    assert recs["_http._tcp.web.default.svc.cluster.local."]["SRV"] == [[0, 100, 80, "web.default.svc.cluster.local."]]
    assert recs["_dns._udp.web.default.svc.cluster.local."]["SRV"] == [[0, 100, 53, "web.default.svc.cluster.local."]]
    assert recs["11.0.96.10.in-addr.arpa."]["PTR"] == ["web.default.svc.cluster.local."]
    assert recs["dns-version.cluster.local."]["TXT"] == ["1.1.0"]
    assert recs["kube-dns.kube-system.svc.cluster.local."]["A"] == ["10.96.0.10"]


def test_headless_service_per_ready_endpoint_with_hostnames():
    recs = _zone(
        web_pod("a", node="node1", hostname="alpha", subdomain="db"),
        web_pod("b", node="node1"),
        web_pod("c", node="node2") | {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        named("db", {"app": "web"}, [("http", 80, "http", "TCP")], clusterIP="None"),
        named("empty", {"app": "nothing"}, [("http", 80, "http", "TCP")], clusterIP="None"),
        named("late", {"app": "web"}, [("http", 80, "http", "TCP")], clusterIP="None", publishNotReadyAddresses=True),
    )
    assert recs["db.default.svc.cluster.local."]["A"] == ["10.244.0.2", "10.244.0.3"], "ready endpoints only"
    assert recs["alpha.db.default.svc.cluster.local."]["A"] == ["10.244.0.2"], "hostname.subdomain"
    assert recs["10-244-0-3.db.default.svc.cluster.local."]["A"] == ["10.244.0.3"], "no hostname: the address dashed"
    srv = recs["_http._tcp.db.default.svc.cluster.local."]["SRV"]
    assert srv == [[0, 50, 8080, "alpha.db.default.svc.cluster.local."], [0, 50, 8080, "10-244-0-3.db.default.svc.cluster.local."]]
    assert recs["2.0.244.10.in-addr.arpa."]["PTR"][0] == "alpha.db.default.svc.cluster.local."
    assert "empty.default.svc.cluster.local." not in recs, "no ready endpoint: no name (NXDOMAIN)"
    assert len(recs["late.default.svc.cluster.local."]["A"]) == 3, "publishNotReadyAddresses"
    assert "alpha.late.default.svc.cluster.local." not in recs, "the hostname names only its own subdomain"


def test_external_name_is_a_cname_and_the_zone_follows_cluster_domain():
    ext = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "search", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "www.example.com"},
    }
    recs = _zone(ext, clusterDomain="lab.test")
    assert recs["search.default.svc.lab.test."] == {"CNAME": ["www.example.com."]}
    assert "SOA" in recs["lab.test."]


# -- answers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def answerer():
    big = [web_pod(f"w{i}", node="node1", labels={"app": "big"}) for i in range(60)]
    topo = dns_lab(
        namespace("shop"),
        web_pod("a"),
        named("web", {"app": "web"}, [("http", 80, "http", "TCP")]),
        named("big", {"app": "big"}, [("http", 80, "http", "TCP")], clusterIP="None"),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"},
        },
        *big,
        podNetwork="10.244.0.0/16",
    )
    return Answerer(zone(topo))


def test_names_are_case_insensitive_and_answered_as_asked(answerer):
    m = ask(answerer, "WEB.Default.SVC.cluster.local")
    assert answers(m) == ["10.96.0.11"] and m.answer[0].name.to_text() == "WEB.Default.SVC.cluster.local."
    assert m.flags & dns.flags.AA


def test_nxdomain_nodata_and_empty_non_terminals(answerer):
    nx = ask(answerer, "nope.default.svc.cluster.local")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    nodata = ask(answerer, "web.default.svc.cluster.local", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority, "the name exists: NODATA"
    ent = ask(answerer, "default.svc.cluster.local")
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer, "a namespace exists as a name"
    assert ask(answerer, "dns-version.cluster.local", "TXT").answer[0][0].strings == (b"1.1.0",)


def test_pod_names_spell_their_address_as_coredns_pods_insecure_does(answerer):
    m = ask(answerer, "10-244-1-7.shop.pod.cluster.local")
    assert answers(m) == ["10.244.1.7"] and m.flags & dns.flags.AA
    assert answers(ask(answerer, "10-244-0-2.Default.POD.cluster.local")) == ["10.244.0.2"]
    nodata = ask(answerer, "10-244-1-7.shop.pod.cluster.local", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority
    for bad in ("10-244-1.shop.pod.cluster.local", "10-244-1-300.shop.pod.cluster.local", "x.10-244-1-7.shop.pod.cluster.local"):
        assert ask(answerer, bad).rcode() == dns.rcode.NXDOMAIN, bad


def test_cname_is_chased_inside_the_zone(answerer):
    m = ask(answerer, "ext.shop.svc.cluster.local")
    assert [r.rdtype for r in m.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A] and answers(m) == ["10.96.0.11", "web.default.svc.cluster.local."]


def test_srv_answers_carry_their_targets_addresses(answerer):
    m = ask(answerer, "_http._tcp.web.default.svc.cluster.local", "SRV")
    assert answers(m) == ["0 100 80 web.default.svc.cluster.local."]
    assert [rd.to_text() for rr in m.additional for rd in rr if rr.rdtype == dns.rdatatype.A] == ["10.96.0.11"]


def test_reverse_names_of_the_cluster_networks_are_ours(answerer):
    assert answers(ask(answerer, "11.0.96.10.in-addr.arpa", "PTR")) == ["web.default.svc.cluster.local."]
    assert ask(answerer, "99.0.96.10.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN, "inside the service network: authoritative"
    assert ask(answerer, "1.1.168.192.in-addr.arpa", "PTR").rcode() == dns.rcode.SERVFAIL, "outside: no upstream"


def test_other_names_servfail_at_once_or_go_upstream(answerer):
    assert ask(answerer, "example.com").rcode() == dns.rcode.SERVFAIL
    cfg = dict(zone(dns_lab(dnsUpstream="10.10.20.53")))
    q = dns.message.make_query("example.com", "A")
    assert Answerer(cfg).handle(q.to_wire(), False) is FORWARD
    assert Answerer(cfg).handle(dns.message.make_query("web.default.svc.cluster.local", "A").to_wire(), False) is not FORWARD


def test_large_answers_are_truncated_over_udp_and_whole_over_tcp(answerer):
    small = ask(answerer, "big.default.svc.cluster.local", edns=False)
    assert small.flags & dns.flags.TC and not small.answer, "60 addresses do not fit 512 bytes"
    whole = ask(answerer, "big.default.svc.cluster.local", tcp=True, edns=False)
    assert not whole.flags & dns.flags.TC and len(answers(whole)) == 60


def test_garbage_gets_a_formerr_and_not_silence(answerer):
    wire = answerer.handle(b"labctl-probe\n", False)
    assert isinstance(wire, bytes) and wire[:2] == b"la" and wire[3] & 0x0F == dns.rcode.FORMERR


# -- what a pod sees -----------------------------------------------------------------------


def test_resolv_conf_per_dns_policy():
    topo = dns_lab(
        namespace("shop"),
        pod("a", namespace="shop"),
        with_spec(pod("b"), dnsConfig={"searches": ["corp.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}),
        with_spec(pod("c"), dnsPolicy="Default"),
        with_spec(pod("d"), dnsPolicy="None", dnsConfig={"nameservers": ["10.10.20.53"], "searches": ["x.test"]}),
        with_spec(pod("e"), dnsPolicy="Default", dnsConfig={"nameservers": ["10.10.20.54"]}),
    )
    a = model_dns.resolv_conf(topo, topo.pod("shop/a"))
    assert a is not None and "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n" in a
    b = model_dns.resolv_conf(topo, topo.pod("default/b"))
    assert "search default.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:2 edns0\n" in b
    assert model_dns.resolv_conf(topo, topo.pod("default/c")) is None, "Default: the node's own"
    d = model_dns.resolv_conf(topo, topo.pod("default/d"))
    assert "nameserver 10.10.20.53\nsearch x.test\n" in d and "10.96.0.10" not in d
    e = model_dns.resolv_conf(topo, topo.pod("default/e"), host_resolv="nameserver 192.0.2.1\nsearch corp\n")
    assert "nameserver 192.0.2.1\nnameserver 10.10.20.54\nsearch corp\n" in e
    off = load(dump(lab_doc(dns=False), pod("a")))
    assert model_dns.resolv_conf(off, off.pod("default/a")) is None, "no cluster DNS: kubelet falls back to Default"


def test_hosts_file_names_the_pod():
    topo = dns_lab(web_pod("a", hostname="alpha", subdomain="db"), web_pod("b"))
    assert "10.244.0.2\talpha.db.default.svc.cluster.local\talpha\n" in model_dns.hosts_file(topo, topo.pod("default/a"))
    assert "10.244.1.2\tb\n" in model_dns.hosts_file(topo, topo.pod("default/b"))


def test_service_environment_as_kubelet_sets_it():
    topo = dns_lab(
        namespace("shop"),
        pod("a"),
        with_spec(pod("quiet"), enableServiceLinks=False),
        named("web-api", {"app": "a"}, [("http", 80, 8080, "TCP"), ("stats", 8125, 8125, "UDP")]),
        named("hidden", {"app": "a"}, [("http", 80, 8080, "TCP")], clusterIP="None"),
        named("other", {"app": "a"}, [("http", 81, 8080, "TCP")], namespace="shop"),
    )
    env = model_dns.service_env(topo, topo.pod("default/a"))
    assert env["WEB_API_SERVICE_HOST"] == "10.96.0.11" and env["WEB_API_SERVICE_PORT"] == "80"
    assert env["WEB_API_SERVICE_PORT_STATS"] == "8125" and env["WEB_API_PORT"] == "tcp://10.96.0.11:80"
    assert env["WEB_API_PORT_8125_UDP_PROTO"] == "udp" and env["WEB_API_PORT_8125_UDP_ADDR"] == "10.96.0.11"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert not [k for k in env if k.startswith(("HIDDEN_", "OTHER_", "KUBE_DNS_"))], "headless, other namespaces: none"
    quiet = model_dns.service_env(topo, topo.pod("default/quiet"))
    assert set(k.split("_")[0] for k in quiet) == {"KUBERNETES"}, "enableServiceLinks: false keeps only the API server's"


def test_a_pods_files_are_rewritten_when_what_they_say_changes():
    before = dns_lab(pod("a"), pod("b"))
    changed = load(dump(lab_doc(dns=True), pod("a"), with_spec(pod("b"), dnsPolicy="Default")), previous=before)
    p = plan(before, changed)
    assert [x.key for x in p.files_changed] == ["default/b"] and not p.add_pods and not p.remove_pods
    domain = load(dump(lab_doc(dns=True, clusterDomain="lab.test"), pod("a"), pod("b")), previous=before)
    assert {x.key for x in plan(before, domain).files_changed} == {"default/a", "default/b", "kube-system/coredns"}


def test_a_record_that_cannot_be_rendered_is_a_servfail_not_a_crash(answerer):
    broken = Answerer({**zone(dns_lab()), "records": {**zone(dns_lab())["records"], "bad.cluster.local.": {"A": ["not-an-address"]}}})
    assert ask(broken, "bad.cluster.local").rcode() == dns.rcode.SERVFAIL
    assert ask(broken, "kube-dns.kube-system.svc.cluster.local").rcode() == dns.rcode.NOERROR
