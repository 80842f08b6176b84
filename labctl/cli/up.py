"""labctl up FILE: build the lab, or bring a running lab to what FILE says."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import require_root
from labctl.cli import cli
from labctl.cli.common import changes, counts, json_option
from labctl.errors import InvalidInput
from labctl.lab import LabHandle


@cli.command()
@click.argument("file", metavar="FILE")
@click.option("--resync", is_flag=True, help="Rewrite every node's service rules whole (undoes rules edited by hand).")
@json_option
def up(file: str, resync: bool, as_json: bool) -> None:
    """Build the lab FILE describes (idempotent: a second `up` changes nothing)."""
    from labctl.model.documents import read_file
    from labctl.model.load import build, lab_name_of_docs

    docs, source = read_file(file)
    if not docs:
        raise InvalidInput(f"{source} holds no documents: a topology starts with a Lab document")
    name = lab_name_of_docs(docs)
    handle = LabHandle(name) if name else None
    previous = handle.applied() if handle and handle.exists() else None
    topo = build(docs, source, previous)  # exit 2 on bad input, before anything is touched
    require_root("up")
    handle = LabHandle(topo.lab.name)
    total = 2 + len(topo.lab.nodes) * 2 + len(topo.lab.externals) + len(topo.pods) * 2
    with output.progress(f"up {topo.lab.name}", total, enabled=not as_json) as advance:
        result = handle.up(topo, source, advance, resync=resync)
    if as_json:
        output.emit_json(result.to_dict())
        return
    verb = "is up" if result.created else ("is up to date" if not result.changed else "was updated")
    output.say(f"lab {topo.lab.name} {verb} in {result.seconds:.2f} s: {counts(topo)}")
    if not result.created and result.changed:
        output.say("  " + ", ".join(changes(result)))
    if result.created:
        output.say(f"next: labctl status | labctl exec node/{topo.lab.nodes[0].name} -- ip route | labctl down {topo.lab.name}")
