import pytest

from labctl import manifests_io
from labctl.errors import InvalidInput
from labctl.model.documents import parse_text
from tests.helpers import deployment, dump, namespace, pod


def docs(*d):
    return parse_text(dump(*d), "f.yaml")


def test_apply_replaces_in_place_and_appends_new():
    current = manifests_io.stored((pod("a"), pod("b")))
    merged = manifests_io.merge(current, docs(pod("b", ports=(9,)), pod("c")))
    assert [d.name for d in merged] == ["a", "b", "c"]
    assert merged[1].data["spec"]["containers"][0]["ports"] == [{"containerPort": 9}]
    assert merged[0].where() == "running lab (Pod default/a)"


def test_delete_removes_and_namespace_cascades():
    current = manifests_io.stored((namespace("shop"), pod("a"), pod("x", namespace="shop")))
    kept, removed = manifests_io.remove(current, docs(namespace("shop")), ignore_not_found=False)
    assert [d.name for d in kept] == ["a"]
    assert removed == ["Namespace shop", "Pod shop/x"]


def test_delete_of_a_missing_object_is_an_error_unless_ignored():
    current = manifests_io.stored((pod("a"),))
    with pytest.raises(InvalidInput, match="Pod default/zz not found"):
        manifests_io.remove(current, docs(pod("zz")), ignore_not_found=False)
    kept, removed = manifests_io.remove(current, docs(pod("zz")), ignore_not_found=True)
    assert len(kept) == 1 and removed == []


def test_deleting_a_deployment_pod_points_at_the_deployment():
    current = manifests_io.stored((deployment("web", 2),))
    with pytest.raises(InvalidInput, match="made by a Deployment"):
        manifests_io.remove(current, docs(pod("web-1")), ignore_not_found=False)
