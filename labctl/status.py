"""`labctl status`: the applied topology, as the contract's JSON shape, plus
what is alive (namespaces present, responder running)."""

from __future__ import annotations

from typing import Any

from labctl import registry
from labctl.errors import NoSuchLab
from labctl.kernel import netns
from labctl.lab import LabHandle
from labctl.model import family, names
from labctl.model.registry import ADDONS
from labctl.responder import control as responder


def status(handle: LabHandle) -> dict[str, Any]:
    topo = handle.applied()
    if topo is None and not handle.exists():
        raise NoSuchLab(f"lab {handle.name} went down while this command ran")
    if topo is None:
        return {
            "lab": handle.name,
            "state": "incomplete",
            "nodes": [],
            "externals": [],
            "pods": [],
            "services": [],
            "endpointSlices": [],
            "policies": [],
            "ingressClasses": [],
            "ingresses": [],
            "gateways": [],
            "httpRoutes": [],
            **{a: None for a in ADDONS},
        }
    lab = topo.lab
    present = set(netns.listed())
    overlay = registry.overlay(lab.overlay)
    return {
        "lab": lab.name,
        "state": "up",
        "overlay": lab.overlay,
        "proxyMode": lab.proxy_mode,
        "ipvsScheduler": None,
        **registry.proxy_mode(lab.proxy_mode).status(lab),
        "networks": {"node": lab.node_network, "pod": lab.pod_network, "service": lab.service_network},
        "ipFamilies": list(lab.ip_families),
        "networksByFamily": {
            family.name(f): {"node": v.node_network, "pod": v.pod_network, "service": v.service_network, "loadBalancerPool": v.load_balancer_pool}
            for f, v in ((f, family.spec_view(lab, f)) for f in family.lab_families(lab))
        },
        "nodes": [
            {
                "name": n.name,
                **family.address_keys(n),
                "netns": names.node_netns(lab.name, n.name),
                "present": names.node_netns(lab.name, n.name) in present,
                **({overlay.status_key: overlay.node_status(lab, n, handle.dir.path)} if overlay.daemon else {}),
            }
            for n in lab.nodes
        ],
        "externals": [
            {
                "name": e.name,
                **family.address_keys(e),
                "netns": names.external_netns(lab.name, e.name),
                "present": names.external_netns(lab.name, e.name) in present,
            }
            for e in lab.externals
        ],
        "pods": [
            {
                "namespace": p.namespace,
                "name": p.name,
                "node": p.node,
                **family.address_keys(p),
                "labels": dict(p.labels),
                "ready": p.ready,
                "terminating": p.terminating,
                "ports": [{"port": cp.port, "protocol": cp.protocol, "name": cp.name} for cp in p.ports()],
                "netns": names.pod_netns(lab.name, p.namespace, p.name),
                "present": names.pod_netns(lab.name, p.namespace, p.name) in present,
            }
            for p in topo.pods
        ],
        "services": services(topo),
        "endpointSlices": endpoint_slices(topo),
        "policies": policies(topo),
        **ingress_status(topo),
        **gateway_status(topo),
        **{a.name: a.status(topo) if a.enabled(lab) else None for a in registry.addons()},
        "responder": responder.status(handle.dir, handle.journal),
    }


def ingress_status(topo) -> dict[str, Any]:
    """The contract's `ingressClasses` and `ingresses`: an Ingress's address is the
    controller Service's LoadBalancer IP when the lab's controller serves its class."""
    from labctl.model import ingress as I

    classes = list(topo.ingress_classes)
    address = None
    if topo.lab.ingress is not None:
        address = topo.service(f"{I.NAMESPACE}/{I.CONTROLLER}").load_balancer_ip
    out = []
    for ing in topo.ingresses:
        served = I.served_class(ing, classes)
        ours = served is not None and served.system
        hosts = ",".join(dict.fromkeys(r.host or "*" for r in ing.rules)) or "*"
        out.append(
            {
                "namespace": ing.namespace,
                "name": ing.name,
                "class": served.name if served else ing.class_name,
                "address": address if ours else None,
                "hosts": hosts,
                "tls": bool(ing.tls),
                "creationTimestamp": (topo.created.get(f"Ingress/{ing.namespace}/{ing.name}") or [None, None])[1],
            }
        )
    return {
        "ingressClasses": [{"name": c.name, "controller": c.controller, "default": c.default} for c in classes],
        "ingresses": out,
    }


def gateway_status(topo) -> dict[str, Any]:
    """The contract's `gateways` and `httpRoutes`, with the Gateway API's conditions."""
    from labctl.addons.gateway import addresses
    from labctl.model.gateway import World

    return World.of(topo).status(addresses(topo))


def endpoint_slices(topo) -> list[dict[str, Any]]:
    """The contract's `endpointSlices`: what the EndpointSlice controller would write."""
    from labctl.proxy.endpointslices import compute

    return compute(topo)


def services(topo) -> list[dict[str, Any]]:
    """Services as the contract shows them: ports, endpoints ("ip:port"), LoadBalancer IP."""
    from labctl.model import family
    from labctl.proxy.endpoints import endpoints
    from labctl.proxy.lb import speaker

    out = []
    views = [(v, {x.key: x for x in v.services}) for _, v in family.views(topo)]
    for s in topo.services:
        ports, all_eps = [], []
        mine = [(v, by_key[s.key]) for v, by_key in views if s.key in by_key]
        for i, p in enumerate(s.ports):
            eps = [e.addr for v, vs in mine for e in endpoints(v, vs, vs.ports[i])]  # every family's, the first family's first
            all_eps += [e for e in eps if e not in all_eps]
            ports.append({"name": p.name, "port": p.port, "targetPort": p.target(), "protocol": p.protocol, "nodePort": p.node_port, "endpoints": eps})
        out.append(
            {
                "namespace": s.namespace,
                "name": s.name,
                "type": s.type,
                "clusterIP": s.cluster_ip,
                "clusterIPs": family.cluster_ips(s) if s.type != "ExternalName" else [],
                "ipFamilies": list(s.ip_families) or ([] if s.type == "ExternalName" else list(topo.lab.ip_families[:1])),
                "ipFamilyPolicy": s.ip_family_policy or (None if s.type == "ExternalName" else "SingleStack"),
                "ports": ports,
                "endpoints": all_eps,
                "loadBalancerIP": s.load_balancer_ip if s.type == "LoadBalancer" else None,
                "loadBalancerIPs": family.load_balancer_ips(s) if s.type == "LoadBalancer" else [],
                "announcedBy": speaker(topo, s),
                "loadBalancerSourceRanges": list(s.load_balancer_source_ranges),
                "healthCheckNodePort": s.health_check_node_port,
                "externalIPs": list(s.external_ips),
                "externalName": s.external_name,
                "externalTrafficPolicy": s.external_traffic_policy,
                "internalTrafficPolicy": s.internal_traffic_policy,
                "sessionAffinity": s.session_affinity,
                "selector": dict(s.selector) if s.selector else None,
            }
        )
    return out


def policies(topo) -> list[dict[str, Any]]:
    """NetworkPolicies as the contract names them, plus what they select now."""
    out = []
    for pol in topo.policies:
        selected = [p for p in topo.pods if p.namespace == pol.namespace and pol.pod_selector.matches(p.labels)]
        out.append(
            {
                "namespace": pol.namespace,
                "name": pol.name,
                "podSelector": str(pol.pod_selector),
                "policyTypes": list(pol.types),
                "ingressRules": len(pol.ingress),
                "egressRules": len(pol.egress),
                "selects": [p.name for p in selected],
            }
        )
    return out
