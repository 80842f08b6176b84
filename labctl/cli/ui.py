"""labctl ui: the lab's picture, live status, the verify matrix and traces, on a
local web page."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import lab_option, running_lab
from labctl.errors import InvalidInput


@cli.command()
@lab_option
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT", help="Where the page is served (port 0: any free port).")
def ui(lab_name, listen) -> None:
    """Serve a web page for the lab until Ctrl-C: its picture (labctl graph), its
    status (refreshed every 2 s), the verify matrix of every pod pair, and, on a
    click on a pair, that flow's labctl trace. Probing needs root."""
    from labctl.lab import LabHandle
    from labctl.status import status
    from labctl.view import ui as U
    from labctl.view.graph import render

    require_root("ui")
    try:
        host, port = U.parse_listen(listen)
    except ValueError as e:
        raise InvalidInput(f"--listen: {e}") from None
    handle, _ = running_lab(lab_name)
    name = handle.name

    def current():
        return running_lab(name)[1]

    api = U.Api(
        status=lambda: status(LabHandle(name)),
        graph=lambda: render(current(), "svg"),
        verify=lambda: _matrix(current()),
        trace=lambda q: _trace(name, q),
    )

    def ready(url: str) -> None:
        output.say(f"lab {name}: {url} (Ctrl-C stops it)")

    try:
        U.serve(api, host, port, ready)
    except OSError as e:
        raise InvalidInput(f"--listen {listen}: {e.strerror}") from None
    except KeyboardInterrupt:
        pass


def _matrix(topo) -> dict:
    """Every pod pair's probes, as verify --json names them, and the pods in order."""
    import time

    from labctl.policy import verify as V

    t0 = time.monotonic()
    done = V.run(topo, V.pair_cases(topo))
    return {"pods": [p.key for p in topo.pods], "cases": [c.to_dict() for c in done], "seconds": round(time.monotonic() - t0, 3)}


def _trace(name: str, q: dict) -> dict:
    from labctl.cli.trace import traced
    from labctl.model.targets import resolve

    handle, topo = running_lab(name)
    if not q.get("from") or not q.get("to"):
        raise InvalidInput("a trace needs from= and to=")
    proto = q.get("proto", "tcp")
    if proto not in ("tcp", "udp"):
        raise InvalidInput(f"proto={proto}: tcp or udp")
    port = int(q["port"]) if q.get("port", "").isdigit() else None
    a, b = resolve(topo, q["from"], role="FROM"), resolve(topo, q["to"], role="TO")
    return traced(handle, topo, a, b, port, proto, 1.0)
