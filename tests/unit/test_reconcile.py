import pytest

from labctl.errors import InvalidInput
from labctl.plan.topology import plan
from tests.helpers import dump, lab_doc, load, pod


def test_a_new_lab_creates_everything():
    topo = load(dump(lab_doc(externals=[{"name": "c"}]), pod("a"), pod("b")))
    p = plan(None, topo)
    assert p.new_lab and len(p.add_nodes) == 2 and len(p.add_externals) == 1 and len(p.add_pods) == 2


def test_the_same_topology_plans_nothing():
    topo = load(dump(lab_doc(), pod("a"), pod("b")))
    again = load(dump(lab_doc(), pod("a"), pod("b")), previous=topo)
    assert plan(topo, again).empty()


def test_added_and_removed_pods():
    old = load(dump(lab_doc(), pod("a"), pod("b")))
    new = load(dump(lab_doc(), pod("b"), pod("c")), previous=old)
    p = plan(old, new)
    assert [x.name for x in p.add_pods] == ["c"]
    assert [x.name for x in p.remove_pods] == ["a"]
    assert p.summary()["podsAdded"] == 1 and p.summary()["podsRemoved"] == 1


def test_label_or_port_changes_do_not_recreate_a_pod():
    old = load(dump(lab_doc(), pod("a", labels={"x": "1"}, ports=(80,))))
    new = load(dump(lab_doc(), pod("a", labels={"x": "2"}, ports=(81,))), previous=old)
    assert plan(old, new).empty()


def test_a_moved_pod_is_recreated():
    old = load(dump(lab_doc(), pod("a", node="node1")))
    new = load(dump(lab_doc(), pod("a", node="node2")), previous=old)
    p = plan(old, new)
    assert [x.node for x in p.remove_pods] == ["node1"] and [x.node for x in p.add_pods] == ["node2"]


def test_changed_command_is_restarted_not_recreated():
    old = load(dump(lab_doc(), pod("a", command=["sleep", "1"])))
    new = load(dump(lab_doc(), pod("a", command=["sleep", "2"])), previous=old)
    p = plan(old, new)
    assert [x.name for x in p.commands_changed] == ["a"] and not p.add_pods


def test_nodes_and_externals_added_and_removed():
    old = load(dump(lab_doc(nodes=[{"name": "a"}, {"name": "b"}], externals=[{"name": "x"}])))
    new = load(dump(lab_doc(nodes=[{"name": "a"}, {"name": "c"}], externals=[{"name": "y"}])), previous=old)
    p = plan(old, new)
    assert [n.name for n in p.add_nodes] == ["c"] and [n.name for n in p.remove_nodes] == ["b"]
    assert [e.name for e in p.add_externals] == ["y"] and [e.name for e in p.remove_externals] == ["x"]


@pytest.mark.parametrize("field,value", [("podNetwork", "10.245.0.0/16"), ("nodeNetwork", "10.10.30.0/24")])
def test_fixed_lab_fields_cannot_change(field, value):
    old = load(dump(lab_doc()))
    new = load(dump(lab_doc(**{field: value})), previous=old)
    with pytest.raises(InvalidInput) as e:
        plan(old, new)
    assert e.value.exit_code == 2 and f"spec.{field}" in str(e.value) and "labctl down" in str(e.value)


def test_a_running_lab_switches_overlays_keeping_its_pods():
    old = load(dump(lab_doc(), pod("a"), pod("b")))
    new = load(dump(lab_doc(overlay="bgp"), pod("a"), pod("b")), previous=old)
    p = plan(old, new)
    assert p.overlay_from == "vxlan" and not p.add_pods and not p.remove_pods and not p.empty()
    assert plan(new, new).overlay_from is None


def test_a_node_cannot_be_readdressed():
    old = load(dump(lab_doc()))
    new = load(dump(lab_doc(nodes=[{"name": "node1", "ip": "10.10.20.50"}, {"name": "node2"}])), previous=old)
    with pytest.raises(InvalidInput, match="node node1: ip: changed from 10.10.20.10 to 10.10.20.50"):
        plan(old, new)
