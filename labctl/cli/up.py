"""labctl up FILE: build the lab, or bring a running lab to what FILE says."""

from __future__ import annotations

import os

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import changes, counts, json_option
from labctl.errors import InvalidInput


@cli.command()
@click.argument("file", metavar="FILE")
@click.option("--resync", is_flag=True, help="Rewrite every node's service rules whole (undoes rules edited by hand).")
@json_option
def up(file: str, resync: bool, as_json: bool) -> None:
    """Build the lab FILE describes (idempotent: a second `up` changes nothing).

    Objects added with `labctl apply` stay: `up` removes only the objects its
    previous FILE had and this one no longer has.
    """
    from labctl import changes as want
    from labctl.lab import LabHandle
    from labctl.model.documents import read_file
    from labctl.model.load import build, lab_name_of_docs

    docs, source = read_file(file)
    if not docs:
        raise InvalidInput(f"{source} holds no documents: a topology starts with a Lab document")
    name = lab_name_of_docs(docs)
    if name is None or os.geteuid() != 0:
        build(docs, source)  # exit 2 on bad input, whoever runs it
    if name is None:
        raise InvalidInput(f"{source}: the first document is not a Lab with a valid metadata.name")
    require_root("up")
    handle = LabHandle(name)
    with output.progress(f"up {name}", _total(docs), enabled=not as_json) as advance:
        result = handle.change(want.up(docs, source), create=True, progress=advance, resync=resync)
    topo = result.topology
    if as_json:
        output.emit_json(result.to_dict())
        return
    verb = "is up" if result.created else ("is up to date" if not result.changed else "was updated")
    output.say(f"lab {name} {verb} in {result.seconds:.2f} s: {counts(topo)}")
    if not result.created and result.changed:
        output.say("  " + ", ".join(changes(result)))
    if result.created:
        output.say(f"next: labctl status | labctl exec node/{topo.lab.nodes[0].name} -- ip route | labctl down {name}")


def _total(docs) -> int:
    """Steps of a new lab's build, for the progress bar: namespaces, nodes, pods (estimated from the file)."""
    spec = (docs[0].data.get("spec") or {}) if isinstance(docs[0].data, dict) else {}
    nodes = len(spec.get("nodes") or [1]) if isinstance(spec, dict) else 1
    pods = 0
    for d in docs[1:]:
        if d.kind == "Pod":
            pods += 1
        elif d.kind == "Deployment" and isinstance(d.data.get("spec"), dict):
            replicas = d.data["spec"].get("replicas", 1)
            pods += replicas if isinstance(replicas, int) else 1
    return 2 + nodes * 2 + pods * 2
