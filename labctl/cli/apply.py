"""labctl apply -f FILE / labctl delete -f FILE: change a running lab's objects."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import changes, json_option, lab_option, running_lab
from labctl.errors import InvalidInput

file_option = click.option("-f", "--filename", "file", required=True, metavar="FILE", help="Kubernetes manifests ('-' for stdin).")


def _reconcile(handle, old, docs, source, as_json, verb, extra=None):
    from labctl.model.load import build

    topo = build(docs, source, previous=old, lab_spec=old.lab)
    require_root(verb)
    result = handle.up(topo, handle.state().get("source", source))
    report = dict(result.to_dict(), **(extra or {}))
    if as_json:
        output.emit_json(report)
        return
    summary = ", ".join(changes(result)) or "no kernel changes"
    output.say(f"lab {handle.name}: {verb} done in {result.seconds:.2f} s ({summary})")


@cli.command()
@lab_option
@file_option
@json_option
def apply(lab_name, file, as_json) -> None:
    """Add or change Namespace, Pod and Deployment objects in a running lab."""
    from labctl import manifests_io
    from labctl.model.documents import read_file

    handle, old = running_lab(lab_name)
    incoming, source = read_file(file)
    if not incoming:
        raise InvalidInput(f"{source} holds no documents")
    docs = manifests_io.merge(manifests_io.stored(old.documents), incoming)
    _reconcile(handle, old, docs, source, as_json, "apply", {"applied": [d.ident() for d in incoming]})


@cli.command()
@lab_option
@file_option
@click.option("--ignore-not-found", is_flag=True, help="Objects that are not there are not an error.")
@json_option
def delete(lab_name, file, ignore_not_found, as_json) -> None:
    """Remove the objects FILE names from a running lab (a Namespace takes its objects with it)."""
    from labctl import manifests_io
    from labctl.model.documents import read_file

    handle, old = running_lab(lab_name)
    targets, source = read_file(file)
    kept, removed = manifests_io.remove(manifests_io.stored(old.documents), targets, ignore_not_found)
    _reconcile(handle, old, kept, source, as_json, "delete", {"deleted": removed})
