"""labctl apply -f FILE / labctl delete -f FILE: change a running lab's objects."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import changes, json_option, lab_handle, lab_option

file_option = click.option("-f", "--filename", "file", required=True, metavar="FILE", help="Kubernetes manifests ('-' for stdin).")


def _report(result, as_json: bool, verb: str) -> None:
    if as_json:
        output.emit_json(result.to_dict())
        return
    summary = ", ".join(changes(result)) or "no kernel changes"
    output.say(f"lab {result.lab}: {verb} done in {result.seconds:.2f} s ({summary})")
    for pod, seconds in (result.report.get("terminating") or {}).items():
        output.say(f"pod {pod} is terminating: it serves for {seconds:g} s more, no longer ready, then goes")


@cli.command()
@lab_option
@file_option
@json_option
def apply(lab_name, file, as_json) -> None:
    """Add or change Namespace, Pod, Deployment, Service and NetworkPolicy objects in a running lab."""
    from labctl import changes as want
    from labctl.model.documents import read_file

    incoming, source = read_file(file)
    require_root("apply")
    _report(lab_handle(lab_name).change(want.apply(incoming, source)), as_json, "apply")


@cli.command()
@lab_option
@file_option
@click.option("--ignore-not-found", is_flag=True, help="Objects that are not there are not an error.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Pods stay this long, serving and terminating (their endpoints' terminating condition), before they go; "
    "default: a Pod's own spec.terminationGracePeriodSeconds when its manifest gives one, else at once.",
)
@json_option
def delete(lab_name, file, ignore_not_found, grace, as_json) -> None:
    """Remove the objects FILE names from a running lab (a Namespace takes its objects with it)."""
    from labctl import changes as want
    from labctl.model.documents import read_file

    targets, source = read_file(file)
    require_root("delete")
    _report(lab_handle(lab_name).change(want.delete(targets, source, ignore_not_found, grace)), as_json, "delete")
