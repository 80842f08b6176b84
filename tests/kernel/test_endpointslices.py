"""EndpointSlices in `status`, following the lab through up, ready and apply."""

from __future__ import annotations

import json

import pytest

from tests.helpers import deployment, svc

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
