"""labctl graph on a running lab: DOT, SVG and PNG through Graphviz, and --verify
drawing the connections a NetworkPolicy denies."""

from __future__ import annotations

import pytest

from tests.helpers import pod, svc

pytestmark = pytest.mark.kernel

DENY_TO_B = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "only-a"},
    "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]},
}


def test_graph_draws_the_running_lab_and_what_verify_saw(lab, tmp_path):
    docs = (
        lab.doc(externals=[{"name": "client"}]),
        pod("a", node="node1", labels={"app": "a"}),
        pod("b", node="node2", labels={"app": "b"}),
        pod("c", node="node2", labels={"app": "c"}),
        svc("b", {"app": "b"}),
        DENY_TO_B,
    )
    lab.up(*docs)
    dot = lab.cli("graph", "--lab", lab.name, "--format", "dot").stdout
    for p in lab.topo.pods:
        assert f'"pod:{p.key}"' in dot and p.ip in dot
    svg = tmp_path / "lab.svg"
    lab.cli("graph", "--lab", lab.name, "-o", str(svg))
    text = svg.read_text()
    assert "<svg" in text and "default/a" in text and "cni0" in text and "ext/client" in text
    png = tmp_path / "lab.png"
    lab.cli("graph", "--lab", lab.name, "-o", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verified = lab.cli("graph", "--lab", lab.name, "--format", "dot", "--verify").stdout
    assert '"pod:default/a" -> "pod:default/b" [color=forestgreen' in verified, "the policy lets a in"
    assert '"pod:default/c" -> "pod:default/b" [color=firebrick, style=dashed' in verified, "and keeps c out"
    assert "MISMATCH" not in verified
    bad = lab.cli("graph", "--lab", lab.name, "--format", "jpeg", check=False)
    assert bad.returncode == 2 and "jpeg" in bad.stderr
