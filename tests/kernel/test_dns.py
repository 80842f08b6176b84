"""The cluster DNS in a real lab, queried from inside pods with dig and getent
(glibc's resolver, through the pod's resolv.conf as `ip netns exec` mounts it)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labctl.kernel import netns
from labctl.model import family
from tests.helpers import deployment, dump, namespace, new_lab_name, pod
from tests.kernel.conftest import STACKS, KernelLab

pytestmark = pytest.mark.kernel

# An upstream resolver for names outside the cluster, run as a pod's command:
# example.com -> 192.0.2.1, anything else NXDOMAIN (on both families).
UPSTREAM = """
import socket, dns.message, dns.rcode, dns.rrset
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 53))
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
    def dashed(self, ip: str) -> str:
        """A pod's address as a DNS label (CoreDNS: dots or colons as dashes)."""
        return ip.replace(".", "-").replace(":", "-")

    @property
    def a(self) -> str:
        """The address record of the probes' family."""
        return "AAAA" if self.six else "A"

    def svc_ip(self, key: str) -> str:
        """A Service's ClusterIP of the lab's first family (the cluster DNS's is, in a dual-stack lab)."""
        return self.whole.service(key).cluster_ip

    def docs(self, *extra, **spec):
        spec.setdefault("dns", True)
        upstream = pod("upstream", node="node2", ports=(), udp=(53,), command=(sys.executable, "-c", UPSTREAM))
        not_ready = named_pod("db-c", {"app": "db"}, node="node2") | {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
        docs = [
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
        if self.stack == "dual":  # both families' records: Services of both
            for d in docs:
                if d.get("kind") == "Service" and d["spec"].get("type") != "ExternalName":
                    d["spec"].setdefault("ipFamilyPolicy", "RequireDualStack")
        return docs

    def dig(self, pod_key: str, *args: str) -> str:
        # `ip netns exec`, as `labctl exec` runs it: the pod's resolv.conf is mounted
        return self.sh(self.pod_ns(pod_key), "dig", "+time=2", "+tries=1", *args, check=False)

    def short(self, pod_key: str, *args: str) -> list[str]:
        """dig +short; a name alone is asked for the address record of the probes' family."""
        if len(args) == 1 and not args[0].startswith(("-", "+", "@")):
            args = (*args, self.a)
        return sorted(self.dig(pod_key, "+short", *args).split())

    def getent(self, pod_key: str, *args: str) -> str:
        return self.sh(self.pod_ns(pod_key), "getent", *args, check=False)


@pytest.fixture(scope="module", params=STACKS)
def dlab(tmp_path_factory, request):
    import os

    if os.geteuid() != 0:
        pytest.fail("kernel tests need root: sudo scripts/test.sh")
    lab = DnsLab(tmp_path_factory.mktemp("dns"), new_lab_name()).use(request.param)
    try:
        lab.up(*lab.docs())
    except BaseException:
        lab.down()  # a lab that failed to come up is still removed
        raise
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
    dns_ip = dlab.svc_ip("kube-system/kube-dns")
    assert f"nameserver {dns_ip}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n" in resolv
    other = dlab.cli("exec", "--lab", dlab.name, "other/client", "--", "cat", "/etc/resolv.conf").stdout
    assert "search other.svc.cluster.local svc.cluster.local cluster.local" in other
    web = dlab.topo.service("default/web").cluster_ip
    for name in ("web", "web.default", "web.default.svc", "web.default.svc.cluster.local", "WEB.Default.Svc.Cluster.Local"):
        assert dlab.getent("client", "hosts", name).split()[:1] == [web], name
    assert dlab.getent("other/client", "hosts", "web.default").split()[:1] == [web], "across namespaces"
    assert dlab.getent("other/client", "hosts", "api").split()[:1] == [dlab.topo.service("other/api").cluster_ip], "the pod's own namespace first"
    hosts = dlab.cli("exec", "--lab", dlab.name, "default/db-a", "--", "cat", "/etc/hosts").stdout
    for ip in dlab.whole.pod("default/db-a").ips or [dlab.pod_ip("db-a")]:  # one line per address, as kubelet writes them
        assert f"{ip}\talpha.db.default.svc.cluster.local\talpha" in hosts
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
    both = [v.pod("default/db-b").ip for _, v in family.views(dlab.whole)]  # a dual-stack endpoint has a name per address
    weight = 100 // (1 + len(both))
    assert sorted(srv) == sorted(
        [f"0 {weight} 5432 alpha.db.default.svc.cluster.local."] + [f"0 {weight} 5432 {dlab.dashed(ip)}.db.default.svc.cluster.local." for ip in both]
    )
    assert dlab.short("client", "-x", a) == ["alpha.db.default.svc.cluster.local."]
    assert dlab.short("client", "search.default.svc.cluster.local", "CNAME") == ["www.example.com."]
    assert dlab.short("client", "dns-version.cluster.local", "TXT") == ['"1.1.0"']
    assert dlab.short("client", f"{dlab.dashed(a)}.default.pod.cluster.local") == [a], "pods insecure: the name spells the address"
    assert status(dlab.dig("client", "nope.default.svc.cluster.local")) == "NXDOMAIN"
    assert status(dlab.dig("client", "nobody.default.svc.cluster.local")) == "NXDOMAIN", "headless without a ready endpoint"
    if dlab.stack != "dual":  # the other family's record: the name exists, no data
        assert status(dlab.dig("client", "web.default.svc.cluster.local", "A" if dlab.six else "AAAA")) == "NOERROR", "the name exists: no data"
    else:  # both families' records, each from its own ClusterIP
        assert dlab.short("client", "web.default.svc.cluster.local", "A") == [dlab.svc_ip("default/web")]
        assert dlab.short("client", "-x", dlab.svc_ip("default/web")) == ["web.default.svc.cluster.local."]
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
    assert up == ("fd00:10:244:1::2" if dlab.six else "10.244.1.2")
    try:
        dlab.up(*dlab.docs(dnsUpstream=up))
        deadline = time.monotonic() + 10  # the upstream is a command: it may still be starting
        while time.monotonic() < deadline and dlab.short("client", "example.com", "A") != ["192.0.2.1"]:
            time.sleep(0.1)
        assert dlab.short("client", "example.com", "A") == ["192.0.2.1"], "forwarded from the DNS pod (over IPv6 in an IPv6 lab)"
        assert dlab.getent("client", "hosts", "example.com").split()[:1] == ["192.0.2.1"]
        t = time.monotonic()
        assert status(dlab.dig("client", "+tcp", "example.com")) == "SERVFAIL", "forwarded over TCP too: this upstream serves UDP only"
        assert time.monotonic() - t < 2, "a refused forward fails at once"
        assert status(dlab.dig("client", "nothing.example.org")) == "NXDOMAIN", "the upstream's answer"
    finally:
        dlab.up(*dlab.docs())


def test_records_follow_apply_delete_and_readiness(dlab):
    extra = service("late", {"app": "web"}, [("http", 81, 8080, "TCP")], **({"ipFamilyPolicy": "RequireDualStack"} if dlab.stack == "dual" else {}))
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
    record = r"\sIN\s+AAAA\s+fd00:10:244:" if dlab.six else r"\sIN\s+A\s+10\.244\."
    out = dlab.dig("client", "+noedns", "many.default.svc.cluster.local", dlab.a)
    assert "Truncated, retrying in TCP mode" in out
    assert len(re.findall(record, out)) == 60, "all 60 endpoints, over TCP"
    ahosts = dlab.getent("client", "ahostsv6" if dlab.six else "ahostsv4", "many.default.svc.cluster.local")
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
        # the query must be a new flow: an earlier query's conntrack entry (a UDP flow lives
        # 30 s) on the port dig happens to pick again would be let through as established
        node_ns = dlab.node_ns(dlab.topo.pod("default/client").node)
        fam = ["-f", "ipv6"] if dlab.stack == "ipv6" else []
        subprocess.run(["ip", "netns", "exec", node_ns, "conntrack", "-D", *fam, "-p", "udp", "--orig-port-dst", "53"], capture_output=True)
        out = dlab.dig("client", "web.default.svc.cluster.local")
        assert status(out) != "NOERROR" and dlab.svc_ip("kube-system/kube-dns") in out, "a default-deny egress blocks DNS, as on a cluster"
        dlab.up(*dlab.docs(deny, allow))
        assert dlab.short("client", "web.default.svc.cluster.local") == [dlab.topo.service("default/web").cluster_ip]
    finally:
        dlab.up(*dlab.docs())
    node = dlab.node_ns(dlab.topo.pod("default/client").node)

    def sep_packets() -> int:
        rules = [
            line
            for line in dlab.sh(node, "ip6tables-save" if dlab.stack == "ipv6" else "iptables-save", "-c", "-t", "nat").splitlines()
            if "kube-system/kube-dns:dns -> " in line and "DNAT" not in line and "-A KUBE-SVC" in line
        ]
        assert rules, "kube-proxy's rules for the DNS service"
        return sum(int(line[1:].split(":")[0]) for line in rules)

    before = sep_packets()
    dlab.short("client", "web.default.svc.cluster.local")
    assert sep_packets() > before, "a pod's query goes through KUBE-SVC for kube-system/kube-dns:dns"


def test_service_environment_in_exec(dlab):
    env = dlab.cli("exec", "--lab", dlab.name, "client", "--", "env").stdout
    web = dlab.svc_ip("default/web")  # spec.clusterIP: the first family's
    assert f"WEB_SERVICE_HOST={web}\n" in env and "WEB_SERVICE_PORT=80\n" in env and "WEB_SERVICE_PORT_HTTP=80\n" in env
    assert f"KUBERNETES_SERVICE_HOST={dlab.svc_ip('default/kubernetes')}\n" in env and "API_SERVICE_HOST" not in env, (
        "only the pod's namespace (and the API server)"
    )


def test_status_shows_the_dns(dlab):
    import json

    s = json.loads(dlab.cli("status", "--lab", dlab.name, "--json").stdout)
    dns_ip = dlab.svc_ip("kube-system/kube-dns")
    assert s["dns"]["ip"] == dns_ip and s["dns"]["pod"] == "kube-system/coredns" and s["dns"]["zone"] == "cluster.local"
    assert f"cluster DNS: kube-system/kube-dns at {dns_ip}" in dlab.cli("status", "--lab", dlab.name).stdout
