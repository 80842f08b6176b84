"""labctl ready POD [true|false]: pass or fail a pod's readiness probe."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_handle, lab_option


@cli.command()
@lab_option
@click.argument("pod")
@click.argument("state", type=click.Choice(["true", "false"]), default="true")
@json_option
def ready(lab_name, pod, state, as_json) -> None:
    """Mark POD ready (true) or not ready (false), as a readiness probe would.

    A pod that is not ready leaves the endpoints of every service selecting it
    (rules are resynced at once); `labctl status` shows it. The mark stays
    until changed or the pod is deleted; a Pod manifest can also start not
    ready with status.conditions [{type: Ready, status: "False"}].
    """
    from labctl import changes as want

    key = pod if "/" in pod else f"default/{pod}"
    value = state == "true"
    require_root("ready")
    result = lab_handle(lab_name).change(want.ready(key, value))
    if as_json:
        output.emit_json({"pod": key, "ready": value, "seconds": round(result.seconds, 3)})
        return
    output.say(f"pod {key} is {'ready' if value else 'not ready'} ({result.seconds:.2f} s)")
