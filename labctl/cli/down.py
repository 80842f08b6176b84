"""labctl down NAME | -f FILE | --all: remove everything a lab made, and only that."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option
from labctl.errors import InvalidInput
from labctl.lab import LabHandle, running_labs


@cli.command()
@click.argument("name", required=False)
@click.option("-f", "--file", "file", metavar="FILE", help="The lab named by this topology file.")
@click.option("--all", "all_", is_flag=True, help="Every lab on this machine.")
@json_option
def down(name: str | None, file: str | None, all_: bool, as_json: bool) -> None:
    """Remove a lab: its namespaces, links, rules, processes and records.

    Works after a crash or kill -9 in the middle of `up`, from the journal
    written before each object was made. A lab that is not up is not an error.
    """
    if sum(bool(x) for x in (name, file, all_)) != 1:
        raise InvalidInput("say which lab: labctl down NAME, labctl down -f FILE, or labctl down --all")
    if file:
        from labctl.model.load import lab_name_of

        name = lab_name_of(file)
    handles = [LabHandle(n) for n in (running_labs() if all_ else [name])]  # a name is checked before anything is read
    require_root("down")
    results = []
    for handle in handles:
        lab = handle.name
        with output.progress(f"down {lab}", len(handle.journal.replay().netns), enabled=not as_json) as advance:
            results.append(handle.down(advance))
    if as_json:
        output.emit_json(results if all_ else results[0])
        return
    if all_ and not results:
        output.say("no lab is up")
    for r in results:
        if r["found"]:
            output.say(f"lab {r['lab']} is down: {_n(r['namespaces'], 'namespace')} removed, {_n(r['processes'], 'process', 'processes')} stopped")
        else:
            output.say(f"lab {r['lab']} is not up: nothing to remove")


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"
