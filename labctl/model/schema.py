"""Schema validation: the Lab document against labctl's own JSON Schema, the
Kubernetes manifests against the real Kubernetes OpenAPI schemas (strict:
unknown fields are errors), as shipped by the kubernetes-validate package.

Every error is reported, each with its field path.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Iterable

import jsonschema
from referencing import Registry, Resource

from labctl.model import registry
from labctl.model.errors import Problem, short_repr

KUBERNETES_VERSION = "1.37.0"  # the schemas of this release judge manifests


def field_path(parts: Iterable[Any]) -> str:
    """['spec', 'containers', 0, 'name'] -> 'spec.containers[0].name'."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _problems(where: str, validator: jsonschema.protocols.Validator, data: Any) -> list[Problem]:
    problems = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            for key in sorted(k for k in err.instance if k not in allowed):
                known = ", ".join(sorted(allowed)) if len(allowed) <= 12 else None
                msg = f"unknown field {key!r}" + (f" (known fields: {known})" if known else "")
                problems.append(Problem(where, field_path(path + [key]), msg))
            continue
        if err.validator == "required":
            problems.append(Problem(where, field_path(path), err.message.replace("property", "field")))
            continue
        if err.validator == "const":
            msg = f"must be {err.validator_value!r}, not {short_repr(err.instance)}"
        elif err.validator == "enum":
            choices = ", ".join(repr(x) for x in err.validator_value)
            msg = f"must be one of {choices}, not {short_repr(err.instance)}"
        elif err.validator == "type":
            want = err.validator_value
            want = " or ".join(w for w in want if w != "null") if isinstance(want, list) else want
            msg = f"must be of type {want}, not {type(err.instance).__name__} {short_repr(err.instance)}"
        elif err.validator == "pattern":
            desc = err.schema.get("description")
            msg = f"{short_repr(err.instance)} is not valid" + (f": {desc}" if desc else f" (must match {err.validator_value})")
        else:
            msg = err.message
        problems.append(Problem(where, field_path(path), msg))
    return problems


@functools.cache
def lab_schema() -> dict[str, Any]:
    """lab.schema.json, with the names of the registry's proxy modes and overlays as enums."""
    schema = json.loads(resources.files("labctl.model").joinpath("lab.schema.json").read_text())
    spec = schema["properties"]["spec"]["properties"]
    spec["proxyMode"]["enum"] = list(registry.PROXY_MODES)
    spec["overlay"]["enum"] = list(registry.OVERLAYS)
    return schema


@functools.cache
def _lab_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(lab_schema())


def validate_lab(where: str, data: Any) -> list[Problem]:
    return _problems(where, _lab_validator(), data)


def _schema_dir():
    return resources.files("kubernetes_validate").joinpath("kubernetes-json-schema", f"v{KUBERNETES_VERSION}-local-strict")


@functools.cache
def _definitions() -> Resource:
    return Resource.from_contents(json.loads(_schema_dir().joinpath("_definitions.json").read_text()))


@functools.cache
def _k8s_validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    group = api_version.split("/")[0].split(".")[0] + "-" if "/" in api_version else ""
    version = api_version.split("/")[-1]
    name = f"{kind.lower()}-{group}{version}.json"
    schema = json.loads(_schema_dir().joinpath(name).read_text())
    registry = _definitions() @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_kubernetes(where: str, kind: str, api_version: str, data: Any) -> list[Problem]:
    """Validate one manifest against the Kubernetes schema of its kind (strict)."""
    return _problems(where, _k8s_validator(kind, api_version), data)
