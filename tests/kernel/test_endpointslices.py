"""EndpointSlices in `status`, following the lab through up, ready and apply."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import deployment, svc
from tests.kernel.test_services import MODES

pytestmark = pytest.mark.kernel


def slices(lab) -> list[dict]:
    st = json.loads(lab.cli("status", "--lab", lab.name, "--json").stdout)
    return [s for s in st["endpointSlices"] if s["metadata"]["labels"]["kubernetes.io/service-name"] == "web"]


def test_status_shows_the_slices_and_follows_readiness_and_scaling(lab):
    lab.up(lab.doc(), deployment("web", 3), svc("web", {"app": "web"}))
    (s,) = slices(lab)
    assert sorted(e["addresses"][0] for e in s["endpoints"]) == sorted(lab.pod_ip(f"web-{i}") for i in range(3))
    assert all(e["conditions"]["ready"] for e in s["endpoints"])
    lab.cli("ready", "--lab", lab.name, "web-1", "false")
    (s,) = slices(lab)
    assert {e["targetRef"]["name"]: e["conditions"]["ready"] for e in s["endpoints"]} == {"web-0": True, "web-1": False, "web-2": True}
    lab.cli("apply", "--lab", lab.name, "-f", "-", input=json.dumps(deployment("web", 5)))
    (s,) = slices(lab)
    assert len(s["endpoints"]) == 5
    text = lab.cli("status", "--lab", lab.name).stdout
    assert "ENDPOINTSLICE" in text and s["metadata"]["name"] in text and "kubernetes" in text


def _slice(name, service, addresses, port, port_name=None, node=None):
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], **({"nodeName": node} if node else {})} for a in addresses],
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"} if port_name else {"port": port, "protocol": "TCP"}],
    }


@pytest.mark.parametrize("mode", MODES)
def test_a_selectorless_service_fronts_an_outside_server_through_a_users_slice(lab, mode):
    """The classic outside database: a Service without a selector, an EndpointSlice (or a
    legacy Endpoints, mirrored) with an external's address, the external serving its port."""
    from tests.helpers import pod

    externals = [{"name": "dbhost", "ip": "10.10.20.100", "ports": [5432]}, {"name": "cache", "ip": "10.10.20.101", "ports": [6379]}]
    db = svc("db", None, ports=((5432, 5432),))
    cache = svc("cache", None, ports=((6379, 6379),))
    legacy = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "cache"},
        "subsets": [{"addresses": [{"ip": "10.10.20.101"}], "ports": [{"port": 6379}]}],
    }
    docs = (
        lab.doc(proxyMode=mode, externals=externals),
        pod("client", node="node1", ports=()),
        db,
        cache,
        _slice("db-1", "db", ["10.10.20.100"], 5432),
        legacy,
    )
    lab.up(*docs)
    r = lab.probe("client", "svc/default/db")
    assert r.verdict == "open" and r.served_by == "ext/dbhost", r
    r = lab.probe("client", "svc/default/cache")
    assert r.verdict == "open" and r.served_by == "ext/cache", "Endpoints of a selector-less Service are mirrored into a slice"
    st = json.loads(lab.cli("status", "--lab", lab.name, "--json").stdout)
    by_name = {s["metadata"]["name"]: s for s in st["endpointSlices"]}
    assert by_name["db-1"]["endpoints"][0]["addresses"] == ["10.10.20.100"]
    mirrored = [
        s for s in st["endpointSlices"] if s["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by") == "endpointslicemirroring-controller.k8s.io"
    ]
    assert [s["metadata"]["labels"]["kubernetes.io/service-name"] for s in mirrored] == ["cache"]
    assert {s["name"]: s["endpoints"] for s in st["services"] if s["name"] in ("db", "cache")} == {"db": ["10.10.20.100:5432"], "cache": ["10.10.20.101:6379"]}
    # the slice's endpoint not ready: kube-proxy drops it, and the Service has no endpoint (refused)
    # an external running a program of the user's (a real server), behind its own Service
    server = "import socket\ns = socket.create_server(('', 8000))\nwhile True:\n    c, _ = s.accept(); c.recv(4096); c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nfiles'); c.close()"
    files = {"name": "files", "ip": "10.10.20.102", "command": ["python3", "-c", server]}
    fdocs = (
        lab.doc(proxyMode=mode, externals=[*externals, files]),
        *docs[1:],
        svc("files", None, ports=((80, 8000),)),
        _slice("files-1", "files", ["10.10.20.102"], 8000),
    )
    lab.up(*fdocs)
    deadline = time.monotonic() + 10
    while lab.probe("client", "svc/default/files", timeout=0.5).verdict != "open":
        assert time.monotonic() < deadline, "the external's own server did not answer through its Service"
        time.sleep(0.1)
    got = lab.sh(lab.pod_ns("default/client"), "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{lab.topo.service('default/files').cluster_ip}/")
    assert got == "200", got
    moved = _slice("db-1", "db", ["10.10.20.100"], 5432)
    moved["endpoints"][0]["conditions"] = {"ready": False}
    lab.up(*fdocs[:4], moved, legacy, *fdocs[6:])
    assert lab.probe("client", "svc/default/db", timeout=0.5).verdict == "refused"


@pytest.mark.parametrize("mode", MODES)
def test_prefer_close_keeps_traffic_in_its_zone_and_falls_back_when_the_zone_has_none(lab, mode):
    from tests.helpers import pod
    from tests.kernel.test_services import served, web

    zones = {"node1": "zone-a", "node2": "zone-b", "node3": "zone-a"}
    nodes = [{"name": n, "labels": {"topology.kubernetes.io/zone": z}} for n, z in zones.items()]
    docs = (
        lab.doc(proxyMode=mode, nodes=nodes),
        web("a1", "node1"),
        web("b2", "node2"),
        web("a3", "node3"),
        pod("client-a", node="node1", ports=()),
        pod("client-b", node="node2", ports=()),
        svc("web", {"app": "web"}, trafficDistribution="PreferClose"),
    )
    lab.up(*docs)
    assert set(served(lab, "client-a", "svc/default/web", n=20)) == {"default/a1", "default/a3"}, "zone a's endpoints only"
    assert set(served(lab, "client-b", "svc/default/web", n=10)) == {"default/b2"}
    hinted = {e["targetRef"]["name"]: e["hints"]["forZones"][0]["name"] for e in slices(lab)[0]["endpoints"]}
    assert hinted == {"a1": "zone-a", "b2": "zone-b", "a3": "zone-a"}
    if mode == "iptables":
        rules = lab.sh(lab.node_ns("node2"), "iptables-save", "-t", "nat")
        chain = next(
            line.split(" -j ")[1] for line in rules.splitlines() if line.startswith("-A KUBE-SERVICES") and "default/web" in line and "-j KUBE-SVC-" in line
        )
        assert len([line for line in rules.splitlines() if line.startswith(f"-A {chain} ") and "KUBE-SEP-" in line]) == 1, "node2 lists its zone's one endpoint"
    explained = json.loads(lab.cli("explain", "--lab", lab.name, "client-b", "svc/default/web", "--json").stdout)["service"]
    assert [e["endpoint"] for e in explained["endpoints"]] == ["default/b2"] and "1 of 3 endpoints" in explained["topology"]
    # zone b loses its endpoint: node2 has none hinted for it, and uses them all
    lab.cli("ready", "--lab", lab.name, "b2", "false")
    assert set(served(lab, "client-b", "svc/default/web", n=20)) == {"default/a1", "default/a3"}
    assert set(served(lab, "client-a", "svc/default/web", n=20)) == {"default/a1", "default/a3"}


def test_a_pod_deleted_with_a_grace_period_serves_while_terminating_then_the_reaper_removes_it(lab):
    import time

    from labctl.kernel import netns
    from tests.helpers import pod

    docs = (lab.doc(), pod("a", node="node1", labels={"app": "w"}), pod("b", node="node2", labels={"app": "w"}), svc("w", {"app": "w"}))
    lab.up(*docs)
    out = json.loads(lab.cli("delete", "--lab", lab.name, "-f", "-", "--grace", "3", "--json", input=json.dumps(docs[2])).stdout)
    assert 2.5 < out["terminating"]["default/b"] <= 3
    st = json.loads(lab.cli("status", "--lab", lab.name, "--json").stdout)
    assert {p["name"]: p["terminating"] for p in st["pods"]} == {"a": False, "b": True}
    assert "b (terminating)" in lab.cli("status", "--lab", lab.name).stdout
    (s,) = [s for s in st["endpointSlices"] if s["metadata"]["labels"]["kubernetes.io/service-name"] == "w"]
    assert {e["targetRef"]["name"]: e["conditions"]["terminating"] for e in s["endpoints"]} == {"a": False, "b": True}
    assert lab.probe("a", "b").verdict == "open", "a terminating pod still serves"
    assert {lab.probe("a", "svc/default/w").served_by for _ in range(10)} == {"default/a"}, "kube-proxy leaves it out while a ready one is left"
    lab.cli("delete", "--lab", lab.name, "-f", "-", "--grace", "3", input=json.dumps(docs[1]))
    assert lab.probe("b", "svc/default/w").verdict == "open", "none ready: the serving terminating ones (kube-proxy's fallback)"
    deadline = time.monotonic() + 15
    while lab.topo.pods and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lab.topo.pods == () and lab.topo.terminating == {}, "the reaper removed both when their time was up"
    assert not [n for n in netns.listed() if n.startswith(lab.name + "-default.")], "their namespaces went with them"
