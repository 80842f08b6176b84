"""The cluster DNS as the lab's objects, and what a pod sees of it. Pure.

With `dns: true` every lab has, as a cluster has them:

- the pod kube-system/coredns on the first node (labels k8s-app=kube-dns,
  ports dns 53/UDP, dns-tcp 53/TCP, metrics 9153/TCP, dnsPolicy Default), a
  real pod: its namespace, veth and address like any other, subject to
  NetworkPolicy; the lab's responder answers DNS on its port 53;
- the service kube-system/kube-dns at the .10 address of serviceNetwork,
  programmed by the proxy like any other;
- in every pod with dnsPolicy ClusterFirst, /etc/netns/<pod netns>/resolv.conf
  naming that address, with kubelet's search path and ndots:5 (`ip netns
  exec`, hence `labctl exec`, mounts it over /etc/resolv.conf).

Also here: the pod's /etc/hosts (kubelet's managed hosts file) and the
service environment variables kubelet gives a container.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from labctl.model.errors import Problem
from labctl.model.fields import dns1123_label
from labctl.model.objects import Container, ContainerPort, LabSpec, Pod, Service, ServicePort, Topology

NAMESPACE = "kube-system"
POD_NAME = "coredns"
POD_KEY = f"{NAMESPACE}/{POD_NAME}"
SERVICE_KEY = f"{NAMESPACE}/kube-dns"
LABELS = {"k8s-app": "kube-dns"}
PORT = 53
METRICS = 9153
SCHEMA_VERSION = "1.1.0"
TTL = 5  # CoreDNS's kubernetes plugin default
POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
MAX_NAMESERVERS = 3  # glibc reads three
MAX_SEARCHES = 32


def service_ip(spec: LabSpec) -> str:
    return str(ipaddress.ip_network(spec.service_network).network_address + 10)


def system_objects(spec: LabSpec) -> bool:
    return spec.dns and bool(spec.nodes)


def dns_pod(spec: LabSpec) -> Pod:
    return Pod(
        namespace=NAMESPACE,
        name=POD_NAME,
        labels=dict(LABELS),
        containers=(
            Container(
                name="coredns",
                ports=(
                    ContainerPort(PORT, "UDP", "dns"),
                    ContainerPort(PORT, "TCP", "dns-tcp"),
                    ContainerPort(METRICS, "TCP", "metrics"),
                ),
            ),
        ),
        node=spec.nodes[0].name,
        dns_policy="Default",
        doc=0,
    )


def dns_service(spec: LabSpec) -> Service:
    return Service(
        namespace=NAMESPACE,
        name="kube-dns",
        cluster_ip=service_ip(spec),
        selector=dict(LABELS),
        ports=(
            ServicePort(PORT, "UDP", "dns", PORT),
            ServicePort(PORT, "TCP", "dns-tcp", PORT),
            ServicePort(METRICS, "TCP", "metrics", METRICS),
        ),
        doc=0,
    )


def is_system(pod: Pod) -> bool:
    return pod.doc == 0 and pod.key == POD_KEY


def upstream(spec: LabSpec) -> tuple[str, int] | None:
    if not spec.dns_upstream:
        return None
    host, port = split_upstream(spec.dns_upstream)
    return host, int(port or PORT)


def split_upstream(text: str) -> tuple[str, str]:
    """dnsUpstream as (address, port or ""): IP, IP:PORT, an IPv6 address or [IPv6]:PORT."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host.rstrip("]"), port
    if text.count(":") > 1:
        return text, ""
    host, _, port = text.partition(":")
    return host, port


# -- what a pod sees -----------------------------------------------------------------------


def resolv_conf(topo: Topology, pod: Pod, host_resolv: str = "") -> str | None:
    """The pod's resolv.conf as kubelet writes it, or None where the pod keeps the
    node's (dnsPolicy Default without dnsConfig, or a lab without cluster DNS).
    `host_resolv`: the node's resolv.conf (the host's), for policy Default."""
    spec = topo.lab
    policy = pod.dns_policy
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet") and not spec.dns:
        policy = "Default"  # kubelet without a cluster DNS falls back to the node's
    cfg = pod.dns_config or {}
    if policy == "Default" and not cfg:
        return None
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        zone = spec.cluster_domain
        servers = [service_ip(spec)]
        searches = [f"{pod.namespace}.svc.{zone}", f"svc.{zone}", zone]
        options: dict[str, str | None] = {"ndots": "5"}
    elif policy == "Default":
        servers, searches, options = _parse_resolv(host_resolv)
    else:  # None: only what dnsConfig says
        servers, searches, options = [], [], {}
    servers += [s for s in cfg.get("nameservers") or [] if s not in servers]
    searches += [s for s in cfg.get("searches") or [] if s not in searches]
    for o in cfg.get("options") or []:
        options[o["name"]] = o.get("value")
    lines = ["# Written by labctl, as kubelet writes a pod's resolv.conf."]
    lines += [f"nameserver {s}" for s in servers[:MAX_NAMESERVERS]]
    if searches:
        lines.append("search " + " ".join(searches[:MAX_SEARCHES]))
    if options:
        lines.append("options " + " ".join(k if v is None else f"{k}:{v}" for k, v in options.items()))
    return "\n".join(lines) + "\n"


def _parse_resolv(text: str) -> tuple[list[str], list[str], dict[str, str | None]]:
    servers, searches, options = [], [], {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            searches = words[1:]
        elif words[0] == "options":
            for w in words[1:]:
                k, _, val = w.partition(":")
                options[k] = val or None
    return servers, searches, options


def hosts_file(topo: Topology, pod: Pod) -> str:
    """kubelet's managed /etc/hosts: localhost, and the pod's own name (FQDN first
    when it sets hostname and subdomain)."""
    name = pod.hostname or pod.name
    names = [name]
    if pod.subdomain:
        names.insert(0, f"{name}.{pod.subdomain}.{pod.namespace}.svc.{topo.lab.cluster_domain}")
    lines = [
        "# Kubernetes-managed hosts file (written by labctl).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    for ip in pod.ips or ((pod.ip,) if pod.ip else ()):  # every address of the pod, as kubelet writes podIPs
        lines.append(f"{ip}\t" + "\t".join(names))
    return "\n".join(lines) + "\n"


def _env_name(service: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", service.upper())


def service_env(topo: Topology, pod: Pod) -> dict[str, str]:
    """The environment kubelet gives a container: for every service with a
    ClusterIP in the pod's namespace (with enableServiceLinks) and for
    default/kubernetes, <NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT[_<PORT NAME>],
    and the Docker-links style <NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]."""
    env: dict[str, str] = {}
    chosen: list[Service] = []
    for s in topo.services:
        if not s.proxied:
            continue
        if (pod.service_links and s.namespace == pod.namespace) or s.key == "default/kubernetes":
            chosen.append(s)
    for s in chosen:
        if not s.ports:
            continue
        n = _env_name(s.name)
        first = s.ports[0]
        env[f"{n}_SERVICE_HOST"] = s.cluster_ip or ""
        env[f"{n}_SERVICE_PORT"] = str(first.port)
        for p in s.ports:
            if p.name:
                env[f"{n}_SERVICE_PORT_{_env_name(p.name)}"] = str(p.port)
        env[f"{n}_PORT"] = f"{first.protocol.lower()}://{s.cluster_ip}:{first.port}"
        for p in s.ports:
            base = f"{n}_PORT_{p.port}_{p.protocol}"
            env[base] = f"{p.protocol.lower()}://{s.cluster_ip}:{p.port}"
            env[f"{base}_PROTO"] = p.protocol.lower()
            env[f"{base}_PORT"] = str(p.port)
            env[f"{base}_ADDR"] = s.cluster_ip or ""
    return env


def describe(topo: Topology) -> dict[str, Any] | None:
    """What `status` shows of the cluster DNS."""
    spec = topo.lab
    if not system_objects(spec):
        return None
    pod = next((p for p in topo.pods if is_system(p)), None)
    return {
        "service": SERVICE_KEY,
        "ip": service_ip(spec),
        "pod": POD_KEY,
        "podIP": pod.ip if pod else None,
        "node": pod.node if pod else None,
        "zone": spec.cluster_domain,
        "upstream": spec.dns_upstream,
    }


# -- validation -----------------------------------------------------------------------------


def check_pod(pod: Pod, where: str, spec_path: str) -> list[Problem]:
    """dnsPolicy, dnsConfig, hostname and subdomain, as the API server checks them."""

    out: list[Problem] = []
    if pod.dns_policy not in POLICIES:
        out.append(Problem(where, f"{spec_path}.dnsPolicy", f"must be one of {', '.join(POLICIES)}, not {pod.dns_policy!r}"))
    cfg = pod.dns_config or {}
    servers = cfg.get("nameservers") or []
    if pod.dns_policy == "None" and not servers:
        out.append(Problem(where, f"{spec_path}.dnsConfig.nameservers", "must provide at least one DNS nameserver when dnsPolicy is None"))
    if len(servers) > MAX_NAMESERVERS:
        out.append(Problem(where, f"{spec_path}.dnsConfig.nameservers", f"may not have more than {MAX_NAMESERVERS} nameservers"))
    for i, s in enumerate(servers):
        try:
            ipaddress.ip_address(s)
        except ValueError:
            out.append(Problem(where, f"{spec_path}.dnsConfig.nameservers[{i}]", f"{s!r} is not an IP address"))
    searches = cfg.get("searches") or []
    if len(searches) > MAX_SEARCHES:
        out.append(Problem(where, f"{spec_path}.dnsConfig.searches", f"may not have more than {MAX_SEARCHES} search paths"))
    for fld, value in (("hostname", pod.hostname), ("subdomain", pod.subdomain)):
        why = dns1123_label(value) if value is not None else None
        if why:
            out.append(Problem(where, f"{spec_path}.{fld}", why))
    return out


def check_lab(spec: LabSpec, where: str) -> list[Problem]:
    out: list[Problem] = []
    up = spec.dns_upstream
    if up:
        host, port = split_upstream(up)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            out.append(Problem(where, "spec.dnsUpstream", f"{host!r} is not an IP address"))
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            out.append(Problem(where, "spec.dnsUpstream", f"port {port} is out of range 1-65535"))
    return out


def reserved(spec: LabSpec, pods: list[Pod], services: list[Service], where_of) -> list[Problem]:
    """With the cluster DNS on, its pod and service are the lab's own."""
    if not system_objects(spec):
        return []
    out = []
    for p in pods:
        if p.key == POD_KEY and not is_system(p):
            out.append(Problem(where_of(p.doc), "metadata.name", f"{POD_KEY} is the lab's DNS pod (set `dns: false` in the Lab to run your own)"))
    for s in services:
        if s.key == SERVICE_KEY:
            out.append(Problem(where_of(s.doc), "metadata.name", f"{SERVICE_KEY} is the lab's DNS service (set `dns: false` in the Lab to define your own)"))
    return out
