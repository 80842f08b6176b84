"""The shape of the code, kept by tests: the model is pure and acyclic, and
loading a file pulls in neither the kernel nor the probes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "labctl" / "model"


def _imports(path: Path) -> set[str]:
    """Every labctl module a file imports, at the top or inside a function."""
    out = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("labctl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labctl"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if (REPO / (sub.replace(".", "/") + ".py")).exists() else node.module)
    return out


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def test_the_model_imports_nothing_from_the_rest_of_labctl():
    outside = {_module(p): sorted(m for m in _imports(p) if not m.startswith("labctl.model")) for p in MODEL.rglob("*.py")}
    assert {k: v for k, v in outside.items() if v} == {}


def test_the_model_has_no_import_cycle():
    graph = {_module(p): {m for m in _imports(p) if m.startswith("labctl.model.")} for p in MODEL.rglob("*.py")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_loading_a_file_needs_neither_the_kernel_nor_the_probes():
    code = (
        "import json, sys\n"
        "from labctl.model.load import load\n"
        "load('topologies/demo.yaml')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('labctl', 'pyroute2', 'scapy')))))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    assert loaded and all(m == "labctl" or m.startswith("labctl.model") for m in loaded), loaded


def test_every_registered_mode_overlay_and_addon_is_one_object_of_its_interface():
    from labctl import registry
    from labctl.addons.base import AddOn
    from labctl.model import registry as names
    from labctl.model.system import SYSTEM_ADDONS
    from labctl.overlay.base import Overlay
    from labctl.proxy.mode import ProxyMode

    for name in names.PROXY_MODES:
        mode = registry.proxy_mode(name)
        assert isinstance(mode, ProxyMode) and mode.name == name
    for name in names.OVERLAYS:
        overlay = registry.overlay(name)
        assert isinstance(overlay, Overlay) and overlay.name == name and overlay.mtu <= 1500
    for name in names.ADDONS:
        addon = registry.addon(name)
        assert isinstance(addon, AddOn) and addon.name == name
    assert {a.name for a in SYSTEM_ADDONS} == set(names.ADDONS), "an add-on's model part and runtime part go by the same name"


def test_no_mode_or_overlay_is_asked_for_by_name_outside_its_module():
    """No `if mode == "ipvs"`: what differs between modes is the mode object's."""
    from labctl.model import registry as names

    chosen = {**names.PROXY_MODES, **names.OVERLAYS}
    found = []
    for path in (REPO / "labctl").rglob("*.py"):
        module = _module(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            consts = [c for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in chosen]
            found += [f"{module}:{node.lineno} compares with {c.value!r}" for c in consts if chosen[c.value] != module]
    assert found == []


def test_a_new_proxy_mode_is_a_module_and_a_registry_line(tmp_path, monkeypatch):
    """A mode written elsewhere, registered by one line: the Lab accepts its name,
    the registry loads it, and the shared tracker plans with it (nothing else edited)."""
    from labctl import registry
    from labctl.model import registry as names
    from labctl.model import schema
    from labctl.proxy.endpoints import service_ports
    from labctl.proxy.sync import plan_node
    from tests.helpers import dump, lab_doc, load, svc, web_pod

    (tmp_path / "labctl_test_mode.py").write_text(
        "from labctl.proxy.mode import NodeSync, ProxyMode\n"
        "class Counting(ProxyMode):\n"
        "    name = 'counting'\n"
        "    def require(self, spec): pass\n"
        "    def plan(self, ctx):\n"
        "        ports = ctx.all_ports()\n"
        "        return NodeSync(ctx.node, self.name, True, f'{len(ports)} ports', {}, frozenset())\n"
        "MODE = Counting()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(names.PROXY_MODES, "counting", "labctl_test_mode")
    schema.lab_schema.cache_clear()
    schema._lab_validator.cache_clear()
    try:
        topo = load(dump(lab_doc(proxyMode="counting"), web_pod("a", "node1"), svc("web", {"app": "web"})))
        assert registry.proxy_mode("counting").name == "counting"
        s = plan_node(topo, "node1", None, None, lambda: service_ports(topo))
        assert (s.mode, s.text) == ("counting", "2 ports")  # kubernetes and web
    finally:
        schema.lab_schema.cache_clear()
        schema._lab_validator.cache_clear()
