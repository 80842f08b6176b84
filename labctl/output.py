"""Output for people (aligned tables, a progress bar on long runs) and for
programs (--json). Everything the CLI prints goes through here.

rich renders tables, markup and the progress bar; it is imported on first
use, so a command that prints a plain line (`up`, `down`) does not pay for it.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:
    from rich.console import Console

PROGRESS_THRESHOLD = 40  # objects; smaller runs finish before a bar would help


@cache
def _console(stderr: bool) -> "Console":
    from rich.console import Console

    # Piped output is not wrapped at 80 columns: tables stay one line per row for grep and awk.
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=None if stream.isatty() else 1000)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def table(columns: list[str], rows: Iterable[Iterable[Any]], title: str | None = None) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold", show_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(Text("" if v is None else str(v)) for v in r))  # cells as they are: [fd00::1]:80 is no markup
    _console(False).print(t)


def say(text: str) -> None:
    if "[" in text:  # rich markup ([bold]...), or text that could be taken for it
        _console(False).print(text)
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def escaped(text: str) -> str:
    """Text of the kernel's or the user's (a rule, a comment) that `say` prints as it is."""
    from rich.markup import escape

    return escape(text)


def note(text: str) -> None:
    _console(True).print(text)


@contextmanager
def progress(description: str, total: int, enabled: bool = True) -> Iterator[Any]:
    """A callback(step, n) advancing a bar on stderr, shown on a terminal for long runs.

    `total` is an estimate that decides whether to show the bar; a step named
    "total" sets the exact figure once the work is planned."""
    if not enabled or total < PROGRESS_THRESHOLD or not sys.stderr.isatty():
        yield lambda step, n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
        console=_console(True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total, step="")

        def advance(step: str, n: int) -> None:
            if step == "total":
                bar.update(task, total=n)
            else:
                bar.update(task, advance=n, step=step)

        yield advance
