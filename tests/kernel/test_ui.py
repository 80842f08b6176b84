"""labctl ui in a real browser (Debian's headless Chromium): the page draws the
lab, its status and the verify matrix, and a click on a pair shows its trace."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.helpers import labctl_cmd, pod, svc

pytestmark = pytest.mark.kernel

CHROMIUM = "chromium-headless-shell"


def chromium(*args: str) -> str:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: scripts/setup.sh installs it"
    p = subprocess.run(
        [CHROMIUM, "--no-sandbox", "--headless", "--disable-gpu", "--virtual-time-budget=20000", *args], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


@pytest.fixture
def served(lab):
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]},
    }
    lab.up(
        lab.doc(nodes=[{"name": "node1"}, {"name": "node2"}]),
        pod("web", node="node1", labels={"app": "web"}),
        pod("client", node="node1", ports=()),
        pod("db", node="node2", ports=(5432,), labels={"app": "db"}),
        svc("web", {"app": "web"}),
        deny,
    )
    ui = subprocess.Popen([*labctl_cmd(), "ui", "--lab", lab.name, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ui.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert m, (line, ui.stderr.read() if ui.poll() is not None else "")
        yield lab, m.group(1)
    finally:
        ui.terminate()
        assert ui.wait(timeout=10) is not None


def test_the_page_shows_the_lab_the_matrix_and_a_clicked_pairs_trace(served, tmp_path):
    lab, url = served
    dom = chromium("--dump-dom", f"{url}#trace=default/client|default/db")
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert int(attrs["loaded-ms"]) > 0, "the page marks when the picture and the status are in (benchmarks/bench_trace.py times it)"
    assert "<svg" in dom and "node1" in dom and "cni0" in dom, "the picture is Graphviz's svg of the lab"
    for key in ("default/web", "default/client", "default/db", "ClusterIP"):
        assert key in dom, f"{key} in the status"
    verify = json.loads(lab.cli("verify", "--lab", lab.name, "--json").stdout)
    assert int(attrs["verified"]) >= 3 and verify["mismatches"] == []
    cells = dict(((a, b), cls) for cls, a, b in re.findall(r'<td class="cell ([^"]*)" data-from="([^"]*)" data-to="([^"]*)"', dom))
    assert cells[("default/client", "default/db")].startswith("denied") and cells[("default/web", "default/db")].startswith("allowed")
    assert attrs["traced"] == "default/client|default/db", "the click on the pair ran its trace"
    kinds = re.findall(r'data-kind="([a-z]+)" data-netns="([^"]+)"', dom)
    assert ("drop", "node/node2") in kinds and ("encap", "node/node1") in kinds and ("bridge", "node/node1") in kinds
    shot = tmp_path / "ui.png"
    chromium("--window-size=1400,1200", f"--screenshot={shot}", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, "a real picture, not a blank page"


def test_the_api_answers_a_bad_trace_with_the_error(served):
    _, url = served
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{url}api/trace?from=default/nobody&to=default/web", timeout=5)
    assert e.value.code == 400 and "nobody" in json.loads(e.value.read())["error"]
    status = json.loads(urllib.request.urlopen(f"{url}api/status", timeout=5).read())
    assert [n["name"] for n in status["nodes"]] == ["node1", "node2"]
