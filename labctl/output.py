"""Output for people (aligned tables, a progress bar on long runs) and for
programs (--json). Everything the CLI prints goes through here."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from rich.console import Console
from rich.table import Table

PROGRESS_THRESHOLD = 40  # objects; smaller runs finish before a bar would help

# Piped output is not wrapped at 80 columns: tables stay one line per row for grep and awk.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 1000)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 1000)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def table(columns: list[str], rows: Iterable[Iterable[Any]], title: str | None = None) -> None:
    t = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold", show_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    out.print(t)


def say(text: str) -> None:
    out.print(text)


def note(text: str) -> None:
    err.print(text)


@contextmanager
def progress(description: str, total: int, enabled: bool = True) -> Iterator[Any]:
    """A callback(step, n) advancing a bar on stderr, shown on a terminal for long runs.

    `total` is an estimate that decides whether to show the bar; a step named
    "total" sets the exact figure once the work is planned."""
    if not enabled or total < PROGRESS_THRESHOLD or not err.is_terminal:
        yield lambda step, n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total, step="")

        def advance(step: str, n: int) -> None:
            if step == "total":
                bar.update(task, total=n)
            else:
                bar.update(task, advance=n, step=step)

        yield advance
