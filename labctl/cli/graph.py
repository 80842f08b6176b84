"""labctl graph: a picture of the lab (Graphviz for svg and png)."""

from __future__ import annotations

import sys

import click

from labctl.cli import cli, require_root
from labctl.cli.common import lab_option, running_lab
from labctl.errors import InvalidInput

FORMATS = ("svg", "png", "dot", "mermaid")


@cli.command()
@lab_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Default: from -o's extension, else svg.")
@click.option("-o", "--output", "path", metavar="FILE", help="Write there (default: standard output).")
@click.option(
    "--verify", "with_verify", is_flag=True, help="Probe every pod pair first and draw allowed (green) and denied (red) connections; a mismatch is bold."
)
def graph(lab_name, fmt, path, with_verify) -> None:
    """Draw the lab: nodes with cni0, their overlay device and pods, the node network
    and externals, Services pointing at their endpoints. svg and png need Graphviz
    (`dot`); dot and mermaid are text."""
    from labctl.view import graph as G

    if fmt is None:
        ext = (path or "").rsplit(".", 1)[-1].lower() if path and "." in path else ""
        fmt = {"svg": "svg", "png": "png", "dot": "dot", "gv": "dot", "mmd": "mermaid", "mermaid": "mermaid"}.get(ext, "svg")
    if fmt == "png" and path is None and sys.stdout.isatty():
        raise InvalidInput("a png to a terminal: give -o FILE")
    handle, topo = running_lab(lab_name)
    pairs = None
    if with_verify:
        require_root("graph --verify")
        pairs = verified(topo)
    data = G.render(topo, fmt, pairs)
    if path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise InvalidInput(f"-o {path}: {e.strerror}") from None


def verified(topo):
    from labctl.policy import verify as V
    from labctl.view.graph import Pair

    done = V.run(topo, V.pair_cases(topo))
    by_pair: dict[tuple[str, str], Pair] = {}
    for c in done:
        was = by_pair.get((c.src, c.dst))
        allowed = bool(c.observed) or (was is not None and was.allowed)
        mismatch = bool(c.mismatch) or (was is not None and was.mismatch)
        by_pair[(c.src, c.dst)] = Pair(c.src, c.dst, allowed, mismatch)
    return [p for (src, dst), p in sorted(by_pair.items()) if src != dst]
