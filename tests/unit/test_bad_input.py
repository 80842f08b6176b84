"""A corpus of bad inputs: every one gets exit 0 or 2 from `labctl validate`,
with a message of bounded length, never a traceback.

The corpus is the demo topology with a bad value put at every field path in
turn (a rotating list of wrong types, huge and malformed values), plus
hand-written files that broke labctl once: a name with a trailing newline,
label keys with an empty prefix, selectors with spaces, deep nesting, alias
bombs, a 5 MB label value, bytes that are not UTF-8.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labctl.cli import main
from tests.helpers import REPO

MAX_STDERR = 20_000  # at most 50 problems of about 300 characters each, and their headers
BIG = "v" * 5_000_000
LONG = "v" * 100_000
BAD_VALUES = [None, [], {}, "", "x\n", -1, 0, 10**30, 1.5, True, "a b", "/app", {"a": [1, {"b": None}]}, "\x00\x01", "é" * 70, LONG]


def validate(tmp_path: Path, data: bytes | str) -> tuple[int, str]:
    path = tmp_path / "t.yaml"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(["validate", str(path)])
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def assert_handled(code: int, err: str, what: str) -> None:
    assert code in (0, 2), f"{what}: exit {code}: {err[:2000]}"
    assert "internal error" not in err and "Traceback" not in err, f"{what}: {err[:2000]}"
    assert len(err) < MAX_STDERR, f"{what}: {len(err)} characters on stderr"


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _put(doc, path, value):
    if not path:
        return value
    doc = yaml.safe_load(yaml.safe_dump(doc))  # a deep copy
    cur = doc
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return doc


DEMO = list(yaml.safe_load_all((REPO / "topologies" / "demo.yaml").read_text()))


def mutations():
    n = 0
    for di, doc in enumerate(DEMO):
        for path in _paths(doc):
            value = BAD_VALUES[n % len(BAD_VALUES)]
            n += 1
            docs = list(DEMO)
            docs[di] = _put(doc, path, value)
            yield f"document {di + 1} {'.'.join(map(str, path)) or '(whole)'} = {str(value)[:20]!r}", docs


def test_a_bad_value_at_every_field_path_is_exit_0_or_2(tmp_path):
    seen = 0
    for what, docs in mutations():
        code, err = validate(tmp_path, yaml.safe_dump_all(docs, sort_keys=False))
        assert_handled(code, err, what)
        seen += 1
    assert seen > 120


LAB = "apiVersion: labctl/v1\nkind: Lab\nmetadata: {name: t}\n"
POD = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: LABELS}\nspec: {containers: [{name: c}]}\n"

HANDWRITTEN = {
    "lab name with a trailing newline": ('apiVersion: labctl/v1\nkind: Lab\nmetadata: {name: "x\\n"}\n', "metadata.name"),
    "pod name with a trailing newline": (LAB + POD.replace("name: p,", 'name: "p\\n",').replace("LABELS", "{}"), "metadata.name"),
    "node name with a trailing newline": ('apiVersion: labctl/v1\nkind: Lab\nmetadata: {name: t}\nspec: {nodes: [{name: "n\\n"}]}\n', "spec.nodes[0].name"),
    "label key with an empty prefix": (LAB + POD.replace("LABELS", '{"/app": x}'), "prefix before '/' must be non-empty"),
    "label key with two slashes": (LAB + POD.replace("LABELS", '{"a/b/c": x}'), "more than one '/'"),
    "label value with a space": (LAB + POD.replace("LABELS", '{app: "a b"}'), "label value 'a b'"),
    "5 MB label value": (LAB + POD.replace("LABELS", "{app: " + BIG + "}"), "more characters"),
    "selector key with a space": (
        LAB + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {matchLabels: {'a b': x}}}\n",
        "label key 'a b'",
    ),
    "expression value with a space": (
        LAB + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\n"
        "spec: {podSelector: {matchExpressions: [{key: app, operator: In, values: ['a b']}]}}\n",
        "values[0]",
    ),
    "deployment selector with a space": (
        LAB + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        "spec: {selector: {matchLabels: {'k k': v}}, template: {metadata: {labels: {'k k': v}}, spec: {containers: [{name: c}]}}}\n",
        "spec.selector.matchLabels",
    ),
    "500 levels of flow sequences": (LAB + "---\n" + "[" * 500 + "]" * 500 + "\n", "nested more than"),
    "500 levels of block mappings": (LAB + "---\n" + "".join("  " * i + "a:\n" for i in range(500)), "nested more than"),
    "an alias bomb": (
        LAB + "---\na: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        "g: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
        "aliases are expanded",
    ),
    "not UTF-8": (b"apiVersion: labctl/v1\nkind: Lab\nmetadata: {name: \xff\xfe}\n", "not UTF-8"),
    "a NUL byte": ("apiVersion: labctl/v1\nkind: Lab\nmetadata: {name: a\x00}\n", "invalid YAML"),
    "a python tag": (LAB + "---\n!!python/object:os.system {}\n", "invalid YAML"),
    "an unhashable key": (LAB + "---\n? [a, b]\n: c\n", "invalid YAML"),
    "a duplicate key": ("apiVersion: labctl/v1\nkind: Lab\nkind: Lab\nmetadata: {name: t}\n", "duplicate key"),
    "a scalar document": (LAB + "---\n42\n", "must be a mapping"),
    "a list document": (LAB + "---\n- a\n- b\n", "must be a mapping"),
    "no Lab at all": ("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n", "Lab"),
    "an empty file": ("", "holds no documents"),
    "only comments": ("# nothing\n", "holds no documents"),
    "integer keys": ("apiVersion: labctl/v1\nkind: Lab\nmetadata: {name: t}\nspec: {1: 2}\n", ""),
    "a huge integer": (LAB.replace("metadata: {name: t}", "metadata: {name: t}\nspec: {nodeCIDRMaskSize: 1000000000000000000000000}"), ""),
    "a negative port": (LAB + POD.replace("LABELS", "{}").replace("name: c}", "name: c, ports: [{containerPort: -5}]}"), ""),
    "metadata that is a list": (LAB + "---\napiVersion: v1\nkind: Pod\nmetadata: [a]\nspec: {}\n", ""),
    "a million replicas": (
        LAB + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        "spec: {replicas: 1000000000, selector: {matchLabels: {k: v}}, template: {metadata: {labels: {k: v}}, spec: {containers: [{name: c}]}}}\n",
        "spec.replicas",
    ),
    "spec that is a string": ("apiVersion: labctl/v1\nkind: Lab\nmetadata: {name: t}\nspec: nodes\n", ""),
}


@pytest.mark.parametrize("case", sorted(HANDWRITTEN))
def test_handwritten_bad_inputs_are_refused_clearly(tmp_path, case):
    data, expected = HANDWRITTEN[case]
    code, err = validate(tmp_path, data)
    assert_handled(code, err, case)
    assert code == 2, err[:2000]
    assert expected in err, err[:2000]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
PATHS = [(di, path) for di, doc in enumerate(DEMO) for path in _paths(doc)]


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(where=st.sampled_from(PATHS), value=json_values)
def test_any_value_anywhere_is_exit_0_or_2(tmp_path, where, value):
    di, path = where
    docs = list(DEMO)
    docs[di] = _put(DEMO[di], path, value)
    code, err = validate(tmp_path, yaml.safe_dump_all(docs, sort_keys=False))
    assert_handled(code, err, f"document {di + 1} {path} = {value!r}"[:300])
