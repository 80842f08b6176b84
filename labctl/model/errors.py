"""Errors about input: where a problem is, what is wrong, exit code 2.

The base of every error a user sees (LabError) lives here so that the model,
which imports nothing from the rest of labctl, can raise it; labctl.errors
adds the errors of the host and the kernel.

Every message is bounded: a value quoted in a message is cut (a 5 MB label
value is not echoed whole), and at most MAX_PROBLEMS problems are listed.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_TEXT = 300  # characters of one message or field path
MAX_PROBLEMS = 50


def bounded(text: str, limit: int = MAX_TEXT) -> str:
    """`text`, cut to `limit` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def short_repr(value: object, limit: int = 80) -> str:
    """repr() of a value for a message, at most about `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class LabError(Exception):
    """An error meant for the user. `exit_code` follows the contract."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


@dataclass(frozen=True)
class Problem:
    """One problem in an input file: where it is and what is wrong."""

    where: str  # e.g. "document 3 (Pod default/web-0)"
    path: str  # field path, e.g. "spec.containers[0].ports[0].containerPort"
    message: str

    def __post_init__(self) -> None:
        for name in ("where", "path", "message"):
            object.__setattr__(self, name, bounded(str(getattr(self, name))))

    def __str__(self) -> str:
        loc = f"{self.where}: {self.path}" if self.path else self.where
        return f"{loc}: {self.message}"


class InvalidInput(LabError):
    """Bad input: nothing was created (exit 2)."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | str, *, source: str | None = None, hint: str | None = None):
        source = bounded(source, 200) if source else source
        head = f"{source}: " if source else ""
        if isinstance(problems, str):
            problems = bounded(problems, MAX_TEXT * 2)
            self.problems = [Problem("input", "", problems)]
            self.source = source
            super().__init__(head + problems, hint=hint)
            return
        self.problems = list(problems)
        self.source = source
        if len(self.problems) == 1:
            message = head + str(self.problems[0])
        else:
            lines = [f"{head}{len(self.problems)} problems:"]
            lines += [f"  - {p}" for p in self.problems[:MAX_PROBLEMS]]
            if len(self.problems) > MAX_PROBLEMS:
                lines.append(f"  ... and {len(self.problems) - MAX_PROBLEMS} more")
            message = "\n".join(lines)
        super().__init__(message, hint=hint)
