"""The cluster zone's records, from the topology alone. Pure.

Following the Kubernetes DNS-based service discovery specification (schema
1.1.0) as CoreDNS's kubernetes plugin serves it, with TTL 5:

    dns-version.<zone>                          TXT   "1.1.0"
    <svc>.<ns>.svc.<zone>                       A     the ClusterIP
                                                A     each ready endpoint (headless; no name when none)
                                                CNAME the external name (ExternalName)
    <ep>.<svc>.<ns>.svc.<zone>                  A     a headless endpoint: <ep> is the pod's hostname when
                                                      its subdomain is the service, else its address dashed
    _<port>._<proto>.<svc>.<ns>.svc.<zone>      SRV   0 100 <port> <svc>.<ns>.svc.<zone> (per named port),
                                                      or one per endpoint, at the endpoint's port (headless)
    <reversed ip>.in-addr.arpa                  PTR   the service (ClusterIP), the endpoint name (headless)
    ... AAAA, ip6.arpa                                the same per IPv6 address (each family's view of the lab)
    <zone>                                      SOA, NS ns.dns.<zone> (A: the DNS service address)

Plain data out (names lower case, absolute), so the responder needs nothing
of the model: {"zone", "reverse": [CIDR...], "upstream", "records": {name: {type: [...]}}}.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from labctl.model import dns, family
from labctl.model.objects import Topology
from labctl.proxy.endpoints import PodIndex, ready_pods, target_port


def _reverse(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


def _dashed(ip: str) -> str:
    """An endpoint's name from its address, as CoreDNS spells it (dots or colons as dashes)."""
    return ip.replace(".", "-").replace(":", "-")


class _Zone:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, list[Any]]] = {}

    def add(self, name: str, rtype: str, value: Any) -> None:
        values = self.records.setdefault(name.lower(), {}).setdefault(rtype, [])
        if value not in values:
            values.append(value)


def _services(z: _Zone, topo: Topology, origin: str, a: str) -> None:
    """One family's records (`a`: A or AAAA), from its view of the lab."""
    index = PodIndex(topo.pods)
    for s in topo.services:
        base = f"{s.name}.{s.namespace}.svc.{origin}"
        if s.type == "ExternalName":
            if s.external_name:
                z.add(base, "CNAME", s.external_name.lower().rstrip(".") + ".")
            continue
        if s.headless:
            pods = ready_pods(topo, s, index)
            for pod in pods:
                if not pod.ip:
                    continue
                ep = pod.hostname if (pod.hostname and pod.subdomain == s.name) else _dashed(pod.ip)
                ep_name = f"{ep}.{base}"
                z.add(base, a, pod.ip)
                z.add(ep_name, a, pod.ip)
                z.add(_reverse(pod.ip), "PTR", ep_name)
                for p in s.ports:
                    port = target_port(pod, p)
                    if p.name and port is not None:
                        z.add(f"_{p.name}._{p.protocol.lower()}.{base}", "SRV", [0, 100, port, ep_name])
            continue
        if not s.cluster_ip:
            continue
        z.add(base, a, s.cluster_ip)
        z.add(_reverse(s.cluster_ip), "PTR", base)
        for p in s.ports:
            if p.name:
                z.add(f"_{p.name}._{p.protocol.lower()}.{base}", "SRV", [0, 100, p.port, base])


def zone(topo: Topology) -> dict[str, Any]:
    spec = topo.lab
    origin = spec.cluster_domain.lower().rstrip(".") + "."
    z = _Zone()
    ns_name = f"ns.dns.{origin}"
    z.add(origin, "SOA", [ns_name, f"hostmaster.{origin}", 1, 7200, 1800, 86400, dns.TTL])
    z.add(origin, "NS", ns_name)
    z.add(ns_name, "AAAA" if ":" in dns.service_ip(spec) else "A", dns.service_ip(spec))
    z.add(f"dns-version.{origin}", "TXT", dns.SCHEMA_VERSION)
    for fam, view in family.views(topo):
        _services(z, view, origin, "AAAA" if fam == 6 else "A")
    # CoreDNS splits the weight between the records of one name: 100 / their number
    for types in z.records.values():
        srv = types.get("SRV")
        if srv and len(srv) > 1:
            for rec in srv:
                rec[1] = 100 // len(srv)
    up = dns.upstream(spec)
    return {
        "zone": origin,
        "reverse": [n for _, v in family.views(topo) for n in (v.lab.service_network, v.lab.pod_network)],
        "upstream": list(up) if up else None,
        "ttl": dns.TTL,
        "records": z.records,
    }
