"""The cluster DNS in a real lab, queried from inside pods with dig and getent
(glibc's resolver, through the pod's resolv.conf as `ip netns exec` mounts it)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from labctl.kernel import netns
from tests.helpers import deployment, dump, namespace, new_lab_name, pod
from tests.kernel.conftest import KernelLab

pytestmark = pytest.mark.kernel

# An upstream resolver for names outside the cluster, run as a pod's command:
# example.com -> 192.0.2.1, anything else NXDOMAIN.
UPSTREAM = """
import socket, dns.message, dns.rcode, dns.rrset
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
while True:
    data, peer = s.recvfrom(4096)
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    name = q.question[0].name.to_text().lower()
    if name == "example.com." and q.question[0].rdtype == 1:
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.1"))
    elif name != "example.com.":
        r.set_rcode(dns.rcode.NXDOMAIN)
    s.sendto(r.to_wire(), peer)
"""


def service(name, selector, ports, namespace="default", **spec):
    body = {"ports": [{"name": n, "port": p, "targetPort": t, "protocol": pr} for n, p, t, pr in ports], **spec}
    if selector is not None:
        body["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": body}


def named_pod(name, labels, node=None, **spec):
    doc = pod(name, node=node, labels=labels)
    doc["spec"]["containers"][0]["ports"] = [{"containerPort": 5432, "name": "pg"}]
    doc["spec"].update(spec)
    return doc


class DnsLab(KernelLab):
    def docs(self, *extra, **spec):
        spec.setdefault("dns", True)
        upstream = pod("upstream", node="node2", ports=(), udp=(53,), command=(sys.executable, "-c", UPSTREAM))
        not_ready = named_pod("db-c", {"app": "db"}, node="node2") | {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
        return [
            self.doc(**spec),
            upstream,  # first pod of node2: 10.244.1.2
            namespace("other"),
            pod("client", node="node1", ports=()),
            pod("client", namespace="other", node="node2", ports=()),
            deployment("web", 2),
            named_pod("db-a", {"app": "db"}, node="node1", hostname="alpha", subdomain="db"),
            named_pod("db-b", {"app": "db"}, node="node2"),
            not_ready,
            service("web", {"app": "web"}, [("http", 80, 8080, "TCP")]),
            service("db", {"app": "db"}, [("pg", 5432, "pg", "TCP")], clusterIP="None"),
            service("nobody", {"app": "nothing"}, [("pg", 5432, "pg", "TCP")], clusterIP="None"),
            service("api", {"app": "web"}, [("http", 8000, 8080, "TCP")], namespace="other"),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "search", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "www.example.com"},
            },
            deployment("big", 60, ports=(8080,)),
            service("many", {"app": "big"}, [("http", 80, 8080, "TCP")], clusterIP="None"),
            *extra,
        ]

    def dig(self, pod_key: str, *args: str) -> str:
        # `ip netns exec`, as `labctl exec` runs it: the pod's resolv.conf is mounted
        return self.sh(self.pod_ns(pod_key), "dig", "+time=2", "+tries=1", *args, check=False)

    def short(self, pod_key: str, *args: str) -> list[str]:
        return sorted(self.dig(pod_key, "+short", *args).split())

    def getent(self, pod_key: str, *args: str) -> str:
        return self.sh(self.pod_ns(pod_key), "getent", *args, check=False)


@pytest.fixture(scope="module")
def dlab(tmp_path_factory):
    import os

    if os.geteuid() != 0:
        pytest.fail("kernel tests need root: sudo scripts/test.sh")
    lab = DnsLab(tmp_path_factory.mktemp("dns"), new_lab_name())
    lab.up(*lab.docs())
    yield lab
    lab.down()
    assert not [n for n in netns.listed() if n.startswith(lab.name + "-")]
    assert not list(Path("/etc/netns").glob(f"{lab.name}-*")), "down removes the pods' /etc/netns files"


def status(dig_output: str) -> str:
    for line in dig_output.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    return dig_output.strip().splitlines()[-1] if dig_output.strip() else "no answer"


def test_pods_resolve_through_the_cluster_dns(dlab):
    resolv = dlab.cli("exec", "--lab", dlab.name, "client", "--", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n" in resolv
    other = dlab.cli("exec", "--lab", dlab.name, "other/client", "--", "cat", "/etc/resolv.conf").stdout
    assert "search other.svc.cluster.local svc.cluster.local cluster.local" in other
    web = dlab.topo.service("default/web").cluster_ip
    for name in ("web", "web.default", "web.default.svc", "web.default.svc.cluster.local", "WEB.Default.Svc.Cluster.Local"):
        assert dlab.getent("client", "hosts", name).split()[:1] == [web], name
    assert dlab.getent("other/client", "hosts", "web.default").split()[:1] == [web], "across namespaces"
    assert dlab.getent("other/client", "hosts", "api").split()[:1] == [dlab.topo.service("other/api").cluster_ip], "the pod's own namespace first"
    hosts = dlab.cli("exec", "--lab", dlab.name, "default/db-a", "--", "cat", "/etc/hosts").stdout
    assert f"{dlab.pod_ip('db-a')}\talpha.db.default.svc.cluster.local\talpha" in hosts
    body = dlab.cli("exec", "--lab", dlab.name, "client", "--", "curl", "-s", "--max-time", "3", "http://web/").stdout
    assert '"pod": "default/web-' in body, "curl by name, through the ClusterIP"


def test_records_of_the_specification(dlab):
    topo = dlab.topo
    web = topo.service("default/web").cluster_ip
    assert dlab.short("client", "_http._tcp.web.default.svc.cluster.local", "SRV") == sorted(["0", "100", "80", "web.default.svc.cluster.local."])
    assert dlab.short("client", "-x", web) == ["web.default.svc.cluster.local."]
    a, b = dlab.pod_ip("db-a"), dlab.pod_ip("db-b")
    assert dlab.short("client", "db.default.svc.cluster.local") == sorted([a, b]), "headless: ready endpoints only (db-c is not ready)"
    assert dlab.short("client", "alpha.db.default.svc.cluster.local") == [a], "hostname.subdomain"
    srv = dlab.dig("client", "+short", "_pg._tcp.db.default.svc.cluster.local", "SRV").splitlines()
    assert sorted(srv) == sorted(["0 50 5432 alpha.db.default.svc.cluster.local.", f"0 50 5432 {b.replace('.', '-')}.db.default.svc.cluster.local."])
    assert dlab.short("client", "-x", a) == ["alpha.db.default.svc.cluster.local."]
    assert dlab.short("client", "search.default.svc.cluster.local", "CNAME") == ["www.example.com."]
    assert dlab.short("client", "dns-version.cluster.local", "TXT") == ['"1.1.0"']
    assert dlab.short("client", f"{a.replace('.', '-')}.default.pod.cluster.local") == [a], "pods insecure: the name spells the address"
    assert status(dlab.dig("client", "nope.default.svc.cluster.local")) == "NXDOMAIN"
    assert status(dlab.dig("client", "nobody.default.svc.cluster.local")) == "NXDOMAIN", "headless without a ready endpoint"
    assert status(dlab.dig("client", "web.default.svc.cluster.local", "AAAA")) == "NOERROR", "the name exists: no data"
    assert status(dlab.dig("client", "+tcp", "web.default.svc.cluster.local")) == "NOERROR", "over TCP too"


def test_search_path_and_ndots(dlab):
    out = dlab.dig("client", "+search", "+showsearch", "web.default")
    questions = [line.split()[0].lstrip(";") for line in out.splitlines() if line.startswith(";") and " IN " in line.replace("\t", " ")]
    assert questions[:2] == ["web.default.default.svc.cluster.local.", "web.default.svc.cluster.local."], "fewer than 5 dots: the search list first"
    out = dlab.dig("client", "+search", "+showsearch", "a.b.c.d.example.com")
    questions = [line.split()[0].lstrip(";") for line in out.splitlines() if line.startswith(";") and " IN " in line.replace("\t", " ")]
    assert questions[0] == "a.b.c.d.example.com.", "5 dots (ndots:5): the name as it is first"


def test_outside_names_fail_fast_then_go_upstream(dlab):
    t = time.monotonic()
    out = dlab.dig("client", "example.com")
    assert status(out) == "SERVFAIL" and time.monotonic() - t < 2, "no upstream: SERVFAIL at once, never a 5 s hang"
    assert dlab.getent("client", "hosts", "example.com") == ""
    up = dlab.topo.pod("default/upstream").ip
    assert up == "10.244.1.2"
    try:
        dlab.up(*dlab.docs(dnsUpstream=up))
        deadline = time.monotonic() + 10  # the upstream is a command: it may still be starting
        while time.monotonic() < deadline and dlab.short("client", "example.com") != ["192.0.2.1"]:
            time.sleep(0.1)
        assert dlab.short("client", "example.com") == ["192.0.2.1"], "forwarded from the DNS pod"
        assert dlab.getent("client", "hosts", "example.com").split()[:1] == ["192.0.2.1"]
        t = time.monotonic()
        assert status(dlab.dig("client", "+tcp", "example.com")) == "SERVFAIL", "forwarded over TCP too: this upstream serves UDP only"
        assert time.monotonic() - t < 2, "a refused forward fails at once"
        assert status(dlab.dig("client", "nothing.example.org")) == "NXDOMAIN", "the upstream's answer"
    finally:
        dlab.up(*dlab.docs())


def test_records_follow_apply_delete_and_readiness(dlab):
    extra = service("late", {"app": "web"}, [("http", 81, 8080, "TCP")])
    f = dlab.tmp / "late.yaml"
    f.write_text(dump(extra))
    try:
        dlab.cli("apply", "--lab", dlab.name, "-f", str(f))
        ip = dlab.topo.service("default/late").cluster_ip
        assert dlab.short("client", "late.default.svc.cluster.local") == [ip], "at once after apply"
        dlab.cli("delete", "--lab", dlab.name, "-f", str(f))
        assert status(dlab.dig("client", "late.default.svc.cluster.local")) == "NXDOMAIN", "gone after delete"
        dlab.cli("ready", "--lab", dlab.name, "db-b", "false")
        assert dlab.short("client", "db.default.svc.cluster.local") == [dlab.pod_ip("db-a")], "db-b failed its readiness"
        dlab.cli("ready", "--lab", dlab.name, "db-b", "true")
        assert len(dlab.short("client", "db.default.svc.cluster.local")) == 2
    finally:
        dlab.up(*dlab.docs())


def test_large_answers_fall_back_to_tcp(dlab):
    out = dlab.dig("client", "+noedns", "many.default.svc.cluster.local")
    assert "Truncated, retrying in TCP mode" in out
    assert len(re.findall(r"\sIN\s+A\s+10\.244\.", out)) == 60, "all 60 endpoints, over TCP"
    ahosts = dlab.getent("client", "ahostsv4", "many.default.svc.cluster.local")
    assert len({line.split()[0] for line in ahosts.splitlines()}) == 60, "glibc retries over TCP by itself"


def test_dns_is_a_pod_under_policy_and_behind_the_service_rules(dlab):
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny-egress", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]},
    }
    allow = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-dns", "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "client"}},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
                }
            ],
        },
    }
    try:
        dlab.up(*dlab.docs(deny))
        out = dlab.dig("client", "web.default.svc.cluster.local")
        assert status(out) != "NOERROR" and "10.96.0.10" in out, "a default-deny egress blocks DNS, as on a cluster"
        dlab.up(*dlab.docs(deny, allow))
        assert dlab.short("client", "web.default.svc.cluster.local") == [dlab.topo.service("default/web").cluster_ip]
    finally:
        dlab.up(*dlab.docs())
    node = dlab.node_ns(dlab.topo.pod("default/client").node)

    def sep_packets() -> int:
        rules = [
            line
            for line in dlab.sh(node, "iptables-save", "-c", "-t", "nat").splitlines()
            if "kube-system/kube-dns:dns -> " in line and "DNAT" not in line and "-A KUBE-SVC" in line
        ]
        assert rules, "kube-proxy's rules for the DNS service"
        return sum(int(line[1:].split(":")[0]) for line in rules)

    before = sep_packets()
    dlab.short("client", "web.default.svc.cluster.local")
    assert sep_packets() > before, "a pod's query goes through KUBE-SVC for kube-system/kube-dns:dns"


def test_service_environment_in_exec(dlab):
    env = dlab.cli("exec", "--lab", dlab.name, "client", "--", "env").stdout
    web = dlab.topo.service("default/web").cluster_ip
    assert f"WEB_SERVICE_HOST={web}\n" in env and "WEB_SERVICE_PORT=80\n" in env and "WEB_SERVICE_PORT_HTTP=80\n" in env
    assert "KUBERNETES_SERVICE_HOST=10.96.0.1\n" in env and "API_SERVICE_HOST" not in env, "only the pod's namespace (and the API server)"


def test_status_shows_the_dns(dlab):
    import json

    s = json.loads(dlab.cli("status", "--lab", dlab.name, "--json").stdout)
    assert s["dns"]["ip"] == "10.96.0.10" and s["dns"]["pod"] == "kube-system/coredns" and s["dns"]["zone"] == "cluster.local"
    assert "cluster DNS: kube-system/kube-dns at 10.96.0.10" in dlab.cli("status", "--lab", dlab.name).stdout
