"""labctl validate FILE: parse, resolve defaults, validate. No root, nothing created."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli
from labctl.cli.common import counts, json_option
from labctl.errors import InvalidInput
from labctl.model import family


@cli.command()
@click.argument("file", metavar="FILE")
@json_option
def validate(file: str, as_json: bool) -> None:
    """Check a topology file; print where each pod would go. Needs no root."""
    from labctl.model.load import load

    try:
        topo = load(file)
    except InvalidInput as e:
        if as_json:
            output.emit_json({"valid": False, "problems": [{"where": p.where, "path": p.path, "message": p.message} for p in e.problems]})
        raise
    if as_json:
        output.emit_json(
            {
                "valid": True,
                "lab": topo.lab.name,
                "ipFamilies": list(topo.lab.ip_families),
                "nodes": [{"name": n.name, **family.address_keys(n)} for n in topo.lab.nodes],
                "externals": [{"name": e.name, **family.address_keys(e)} for e in topo.lab.externals],
                "pods": [{"namespace": p.namespace, "name": p.name, "node": p.node, **family.address_keys(p)} for p in topo.pods],
            }
        )
        return
    output.say(f"{file}: valid: lab {topo.lab.name}, {counts(topo)}")
    output.table(
        ["NODE", "IP", "POD CIDR", "PODS"],
        [
            (
                n.name,
                ",".join(family.addresses(n)),
                ",".join(c for c in n.pod_cidrs or (n.pod_cidr,) if c),
                ", ".join(p.key for p in topo.pods_on(n.name)) or "-",
            )
            for n in topo.lab.nodes
        ],
    )
