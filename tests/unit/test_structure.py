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
