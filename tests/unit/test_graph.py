"""labctl graph's rendering (pure): DOT and Mermaid text of a lab."""

from __future__ import annotations

from labctl.view import graph as G
from tests.helpers import deployment, dump, lab_doc, load, svc


def _topo(**spec):
    return load(dump(lab_doc(name="demo", externals=[{"name": "client"}], **spec), deployment("web", 3), svc("web", {"app": "web"})))


def test_dot_draws_nodes_with_their_pods_the_switch_externals_and_services():
    topo = _topo()
    text = G.dot(topo)
    assert text.startswith('digraph "demo" {') and text.rstrip().endswith("}")
    for n in topo.lab.nodes:
        assert (
            f'subgraph "cluster_{n.name}"' in text
            and f'"cni0:{n.name}" -> "switch:br0"' in text
            and f'"dev:{n.name}" [shape=box, style=dashed, label="flannel.1"]' in text
        )
    for p in topo.pods:
        assert f'"pod:{p.key}" [shape=ellipse, label="{p.key}\\n{p.ip}"]' in text
        assert f'"svc:default/web" -> "pod:{p.key}"' in text, "the Service points at each endpoint"
    assert '"ext:client" -> "switch:br0"' in text
    assert "dev:" not in G.dot(_topo(overlay="host-gw")), "no overlay device to draw"
    assert '"dev:node1" [shape=box, style=dashed, label="tunl0"]' in G.dot(_topo(overlay="ipip"))


def test_verified_pairs_are_green_red_and_bold_when_they_mismatch():
    topo = _topo()
    text = G.dot(topo, [G.Pair("default/web-0", "default/web-1", True), G.Pair("default/web-1", "default/web-2", False, True)])
    assert '"pod:default/web-0" -> "pod:default/web-1" [color=forestgreen, style=solid, constraint=false]' in text
    assert '"pod:default/web-1" -> "pod:default/web-2" [color=firebrick, style=bold, constraint=false, label="MISMATCH"]' in text


def test_names_that_need_quoting_stay_inside_their_quotes():
    assert G._q('a"b\\c') == '"a\\"b\\\\c"'


def test_mermaid_is_a_flowchart_with_a_subgraph_per_node():
    topo = _topo()
    text = G.mermaid(topo, [G.Pair("default/web-0", "default/web-1", False)])
    assert text.startswith("flowchart LR") and text.count("subgraph node_") == 2 and text.count("\n  end") == 2
    assert "pod_default_web_0 --x pod_default_web_1" in text and "svc_default_web -.->|8080| pod_default_web_0" in text
