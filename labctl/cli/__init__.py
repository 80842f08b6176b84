"""The labctl command line. Commands stay thin: parse, call the core, render.

This is the one place where errors become messages and exit codes:
0 success, 1 a check failed, 2 invalid input, 3 the host lacks something.
"""

from __future__ import annotations

import os
import resource
import sys
import traceback

import click

from labctl import __version__
from labctl.errors import LabError, NotRoot, bounded


def require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise NotRoot(command)


def raise_fd_limit() -> None:
    """A big lab holds a file descriptor per namespace while it is built."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="labctl")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Kubernetes networking on a real Linux kernel: namespaces as nodes and
    pods, cni0 bridges, VXLAN or host-gw between nodes, probes on the real
    datapath.

    \b
    Start here:
      sudo labctl up topologies/demo.yaml
      sudo labctl status
      sudo labctl probe toolbox default/web-1
      sudo labctl down demo
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# Commands register themselves on `cli` when imported.
from labctl.cli import apply, bpf, ca, down, exec_, graph, link, probe, ready, status, trace, ui, up, validate, verify  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    raise_fd_limit()
    try:
        cli.main(args=argv, prog_name="labctl", standalone_mode=False)
    except LabError as e:
        if debug:
            traceback.print_exc()
        click.echo(e.render(), err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: run `labctl up` again to finish, or `labctl down` to remove what was made", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:  # noqa: BLE001 - last resort: a clear line, the traceback with --debug
        if debug:
            traceback.print_exc()
        from labctl.cli.common import gone_meanwhile

        gone = gone_meanwhile()
        if gone is not None:
            click.echo(gone.render(), err=True)
            sys.exit(gone.exit_code)
        click.echo(f"internal error: {type(e).__name__}: {bounded(str(e))} (run with --debug for the traceback)", err=True)
        sys.exit(1)
    sys.exit(0)
