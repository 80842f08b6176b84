"""Pods deleted with a grace period: terminating, serving, then gone (pure)."""

from __future__ import annotations

import time

from labctl import changes
from labctl.model.documents import parse_text
from labctl.proxy import endpointslices as E
from labctl.proxy.endpoints import service_ports
from labctl.proxy.policy import decide
from tests.helpers import dump, lab_doc, pod, svc


def applied(*docs):
    text = dump(lab_doc(), *docs)
    change = changes.up(parse_text(text, "t.yaml"), "t.yaml")(None)
    return changes.Applied(change.topology, "t.yaml", change.file_keys)


def deleted(a, name, grace=None):
    targets = parse_text(dump(pod(name, node="node1")), "d.yaml")
    return changes.delete(targets, "d.yaml", False, grace)(a)


def test_a_pod_deleted_with_a_grace_period_stays_terminating_then_goes():
    a = applied(pod("a", node="node1", labels={"app": "w"}), pod("b", node="node2", labels={"app": "w"}), svc("w", {"app": "w"}))
    c = deleted(a, "b", grace=30)
    b = c.topology.pod("default/b")
    assert b.terminating and "default/b" in c.topology.terminating and c.report["terminating"]["default/b"] > 29
    assert c.report["deleted"] == ["Pod default/b"], "the object is deleted; the pod terminates"
    (s,) = [s for s in E.compute(c.topology) if s["metadata"]["labels"]["kubernetes.io/service-name"] == "w"]
    conds = {e["targetRef"]["name"]: e["conditions"] for e in s["endpoints"]}
    assert conds["b"] == {"ready": False, "serving": True, "terminating": True}
    later = changes.Applied(c.topology, "t.yaml", c.file_keys)
    assert changes._expired(later, now=c.topology.terminating["default/b"] - 1) is later, "not yet"
    gone = changes._expired(later, now=c.topology.terminating["default/b"] + 1).topology
    assert "default/b" not in {p.key for p in gone.pods} and gone.terminating == {}
    assert "default/b" not in {p.key for p in deleted(a, "b").topology.pods}, "no grace: at once"


def test_kube_proxy_uses_terminating_endpoints_only_when_no_ready_one_is_left():
    a = applied(
        pod("a", node="node1", labels={"app": "w"}),
        pod("b", node="node2", labels={"app": "w"}),
        svc("w", {"app": "w"}, externalTrafficPolicy="Local", type="NodePort"),
    )
    one = changes.Applied(deleted(a, "b", grace=30).topology, "t.yaml", a.file_keys)
    info = next(i for i in service_ports(one.topology) if i.service.name == "w")
    assert [e.pod for e in decide(info, "node1").endpoints] == ["default/a"], "a ready endpoint is left: terminating ones are not used"
    assert [e.pod for e in decide(info, "node2").local] == ["default/b"], "Local: no ready local endpoint, the serving terminating one"
    both = deleted(one, "a", grace=30).topology
    info = next(i for i in service_ports(both) if i.service.name == "w")
    assert sorted(e.pod for e in decide(info, "node1").endpoints) == ["default/a", "default/b"], "none ready anywhere: the terminating ones"


def test_a_pods_own_termination_grace_period_is_used_when_delete_gives_none():
    p = pod("b", node="node2")
    p["spec"]["terminationGracePeriodSeconds"] = 5
    a = applied(p)
    c = changes.delete(parse_text(dump(p), "d.yaml"), "d.yaml", False, None)(a)
    assert 4 < c.report["terminating"]["default/b"] <= 5
    assert changes.delete(parse_text(dump(p), "d.yaml"), "d.yaml", False, 0)(a).topology.pods == (), "--grace 0: at once"


def test_a_deployment_scaled_down_lets_its_pods_terminate_with_the_templates_grace_period():
    from tests.helpers import deployment

    d = deployment("web", 3)
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20
    a = applied(d)
    ip = a.topology.pod("default/web-2").ip
    d["spec"]["replicas"] = 2
    c = changes.apply(parse_text(dump(d), "a.yaml"), "a.yaml")(a)
    web2 = c.topology.pod("default/web-2")
    assert web2.terminating and web2.ip == ip and 19 < c.topology.terminating["default/web-2"] - time.time() <= 20
    b = changes.Applied(c.topology, "t.yaml", a.file_keys)
    d["spec"]["replicas"] = 3
    again = changes.apply(parse_text(dump(d), "a.yaml"), "a.yaml")(b).topology
    assert not again.pod("default/web-2").terminating and again.terminating == {}, "made again by its Deployment: a new pod"
    gone = changes._expired(b, now=c.topology.terminating["default/web-2"] + 1).topology
    assert [p.name for p in gone.pods] == ["web-0", "web-1"]
    no_grace = applied(deployment("web", 3))
    d2 = deployment("web", 2)
    assert [p.name for p in changes.apply(parse_text(dump(d2), "a.yaml"), "a.yaml")(no_grace).topology.pods] == ["web-0", "web-1"], "no grace period: at once"
