"""EndpointSlices as the EndpointSlice controller computes them (pure)."""

from __future__ import annotations

import dataclasses

from labctl.proxy import endpointslices as E
from labctl.proxy import topology as T
from tests.helpers import deployment, dump, lab_doc, load, one, pod, svc


def _ours(topo):
    """The controller's slices (not the API server's `kubernetes` one)."""
    return [s for s in E.compute(topo) if s["metadata"]["labels"].get(E.MANAGED_BY_LABEL)]


def _not_ready(topo, *keys):
    return topo.with_pods(tuple(dataclasses.replace(p, ready=False) if p.key in keys else p for p in topo.pods))


def test_one_slice_per_service_with_the_controllers_labels_conditions_and_zones():
    nodes = [{"name": "node1", "labels": {"topology.kubernetes.io/zone": "zone-a"}}, {"name": "node2"}]
    topo = load(dump(lab_doc(name="demo", nodes=nodes), deployment("web", 3), svc("web", {"app": "web"}, ports=((80, 8080),))))
    topo = _not_ready(topo, "default/web-2")
    (s,) = _ours(topo)
    assert s["apiVersion"] == "discovery.k8s.io/v1" and s["kind"] == "EndpointSlice" and s["addressType"] == "IPv4"
    meta = s["metadata"]
    assert meta["namespace"] == "default" and meta["name"].startswith("web-") and len(meta["name"]) == len("web-") + 5
    assert meta["labels"] == {"kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    assert s["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}], "the pods' port, not the Service's"
    by_pod = {e["targetRef"]["name"]: e for e in s["endpoints"]}
    assert set(by_pod) == {"web-0", "web-1", "web-2"}, "a pod that is not ready is still listed"
    assert by_pod["web-2"]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert by_pod["web-0"]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    for name, e in by_pod.items():
        pod_ = topo.pod(f"default/{name}")
        assert e["addresses"] == [pod_.ip] and e["nodeName"] == pod_.node
        assert e.get("zone") == ("zone-a" if pod_.node == "node1" else None)
    assert _ours(topo)[0]["metadata"]["name"] == meta["name"], "the same name every time"


def test_a_hundred_endpoints_to_a_slice():
    topo = load(dump(lab_doc(), deployment("big", 250), svc("big", {"app": "big"})))
    slices = _ours(topo)
    assert [len(s["endpoints"]) for s in slices] == [100, 100, 50]
    assert len({s["metadata"]["name"] for s in slices}) == 3
    row = E.table_row(slices[0])
    assert row[:4] == ("default", slices[0]["metadata"]["name"], "IPv4", "8080") and row[4].endswith(" + 97 more...")


def test_pods_that_resolve_a_named_port_differently_go_in_different_slices():
    a = pod("a", labels={"app": "x"})
    a["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
    b = pod("b", labels={"app": "x"})
    b["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 9090}]
    topo = load(dump(lab_doc(), a, b, svc("x", {"app": "x"}, ports=((80, "http"),))))
    slices = _ours(topo)
    assert sorted((s["ports"][0]["port"], [e["targetRef"]["name"] for e in s["endpoints"]]) for s in slices) == [(8080, ["a"]), (9090, ["b"])]


def test_placeholder_headless_published_and_selectorless():
    topo = load(
        dump(
            lab_doc(),
            pod("p", labels={"app": "p"}),
            svc("empty", {"app": "nothing"}),
            svc("head", {"app": "p"}, clusterIP="None"),
            svc("pub", {"app": "p"}, publishNotReadyAddresses=True),
            svc("manual", None),
        )
    )
    topo = _not_ready(topo, "default/p")
    by = {s["metadata"]["labels"]["kubernetes.io/service-name"]: s for s in E.compute(topo)}
    assert set(by) == {"empty", "head", "pub", "kubernetes"}
    api = by["kubernetes"]
    assert api["metadata"]["name"] == "kubernetes" and api["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]
    assert api["endpoints"][0]["conditions"] == {"ready": True} and "nodeName" not in api["endpoints"][0], "the API server's own slice"
    assert by["empty"]["endpoints"] == [] and by["empty"]["ports"] is None, "a placeholder slice"
    assert E.table_row(by["empty"])[3:] == ("<unset>", "<unset>")
    assert by["head"]["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
    assert by["pub"]["endpoints"][0]["conditions"] == {"ready": True, "serving": False, "terminating": False}
    assert "manual" not in by, "no selector: the user writes the slices"


# -- topology hints and kube-proxy's filter ----------------------------------------------


def _nodes(*zones):
    from labctl.model.objects import Node

    return [Node(name=f"node{i}", labels={"topology.kubernetes.io/zone": z} if z else {}) for i, z in enumerate(zones, start=1)]


def _cands(*zones):
    return [T.Candidate(f"10.0.0.{i}", True, z, None) for i, z in enumerate(zones, start=1)]


def test_auto_shares_endpoints_out_among_zones_as_the_topology_cache_does():
    nodes = _nodes("a", "b", "c")
    got, why = T.auto(_cands("a", "a", "a", "a", "b", "c"), nodes)
    assert why == "" and sorted(h.zones[0] for h in got.values()) == ["a", "a", "b", "b", "c", "c"], "zone a gives one to b and one to c"
    assert [got[f"10.0.0.{i}"].zones for i in (5, 6)] == [("b",), ("c",)], "an endpoint keeps its own zone where it is needed"
    assert T.auto(_cands("a", "b"), nodes) == ({}, "insufficient number of endpoints (2 endpoints, 3 zones)")
    assert T.auto(_cands("a", "a", "b", "c"), nodes)[1].startswith("minimum allocation exceeds the overload threshold")
    assert T.auto(_cands("a", "b", "c"), _nodes("a", "b", None))[1].startswith("insufficient node information: node node3")
    assert T.auto(_cands("a", "b", "c"), _nodes("a", "a"))[1] == "nodes ready in one zone only"
    assert T.auto(_cands("a", "b", None), nodes)[1] == "endpoint 10.0.0.3 has no zone"
    assert T.mode("Auto", "PreferClose") == "Auto", "the annotation wins over trafficDistribution"


def test_prefer_close_and_kube_proxys_filter():
    from labctl.proxy.endpoints import Endpoint

    got, _ = T.hints("PreferSameZone", _cands("a", "b", None), _nodes("a", "b"))
    assert {k: h.zones for k, h in got.items()} == {"10.0.0.1": ("a",), "10.0.0.2": ("b",)}, "no zone, no hint"
    eps = (Endpoint("10.0.0.1", 80, "node1", None, ("a",)), Endpoint("10.0.0.2", 80, "node2", None, ("b",)), Endpoint("10.0.0.3", 80, "node3", None, ("a",)))
    assert [e.ip for e in T.usable(eps, "node1", "a")] == ["10.0.0.1", "10.0.0.3"]
    assert T.usable(eps, "node4", "c") == eps, "no endpoint for this zone: all of them"
    assert T.usable(eps, "node4", "") == eps, "a node without a zone: all of them"
    assert T.usable(eps[:2] + (eps[2]._replace(zones=()),), "node1", "a") == eps[:2] + (eps[2]._replace(zones=()),), "one without hints: all"
    same_node = tuple(e._replace(hint_nodes=(e.node,)) for e in eps)
    assert [e.ip for e in T.usable(same_node, "node2", "b")] == ["10.0.0.2"]


def test_slices_carry_the_hints_and_the_proxy_uses_them():
    from labctl.proxy.endpoints import service_ports
    from labctl.proxy.policy import decide

    nodes = [{"name": f"node{i}", "labels": {"topology.kubernetes.io/zone": z}} for i, z in ((1, "a"), (2, "b"), (3, "a"))]
    topo = load(dump(lab_doc(nodes=nodes), deployment("web", 3), svc("web", {"app": "web"}, trafficDistribution="PreferClose")))
    (s,) = _ours(topo)
    zone_of = {"node1": "a", "node2": "b", "node3": "a"}
    assert all(e["hints"] == {"forZones": [{"name": zone_of[e["nodeName"]]}]} for e in s["endpoints"])
    info = next(i for i in service_ports(topo) if i.service.name == "web")
    in_a = {e.ip for e in decide(info, "node1").endpoints}
    assert in_a == {p.ip for p in topo.pods if p.node in ("node1", "node3")} and len(decide(info, "node2").endpoints) == 1
    assert "trafficDistribution" in one(dump(lab_doc(), svc("x", {"app": "x"}, trafficDistribution="Nearby")))
