"""`apply` and `delete`: changing the Kubernetes objects of a running lab. Pure.

Objects are matched as kubectl matches them: by kind, namespace and name.
"""

from __future__ import annotations

from labctl.errors import InvalidInput, Problem
from labctl.model.documents import Document


def stored(docs: tuple[dict, ...]) -> list[Document]:
    """The running lab's manifests as documents (they print as 'running lab (...)')."""
    return [Document(index=-i, line=0, data=d) for i, d in enumerate(docs, start=1)]


def merge(current: list[Document], incoming: list[Document]) -> list[Document]:
    """apply: an incoming object replaces the one with its key, in place; new ones go last."""
    by_key = {d.key: d for d in incoming}
    out = [by_key.pop(d.key, d) for d in current]
    return out + [d for d in incoming if d.key in by_key]


def remove(current: list[Document], targets: list[Document], ignore_not_found: bool) -> tuple[list[Document], list[str]]:
    """delete: drop the targets; deleting a Namespace drops everything in it."""
    keys = {d.key for d in current}
    problems = []
    gone_keys = set()
    gone_namespaces = set()
    for t in targets:
        if not isinstance(t.data, dict) or not t.name:
            problems.append(Problem(t.where(), "metadata.name", "is required to delete an object"))
            continue
        if t.key not in keys:
            if t.kind == "Pod" and any(d.kind == "Deployment" and d.key[1] == t.key[1] and t.name.startswith(d.name + "-") for d in current):
                problems.append(Problem(t.where(), "", f"pod {t.key[1]}/{t.name} is made by a Deployment: delete or scale the Deployment"))
            elif not ignore_not_found:
                problems.append(Problem(t.where(), "", f"{t.ident()} not found in the running lab"))
            continue
        gone_keys.add(t.key)
        if t.kind == "Namespace":
            gone_namespaces.add(t.name)
    if problems:
        raise InvalidInput(problems, hint="--ignore-not-found skips objects that are not there")
    kept = [d for d in current if d.key not in gone_keys and d.key[1] not in gone_namespaces]
    removed = [d.ident() for d in current if d not in kept]
    return kept, removed
