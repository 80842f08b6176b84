"""The errors a user sees, each with its exit code (see the contract).

Everything the CLI reports goes through these; the CLI turns them into a
message and an exit code in one place (labctl.cli).
"""

from __future__ import annotations

from dataclasses import dataclass


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


class CheckFailed(LabError):
    """A verification found a mismatch (exit 1)."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One problem in an input file: where it is and what is wrong."""

    where: str  # e.g. "document 3 (Pod default/web-0)"
    path: str  # field path, e.g. "spec.containers[0].ports[0].containerPort"
    message: str

    def __str__(self) -> str:
        loc = f"{self.where}: {self.path}" if self.path else self.where
        return f"{loc}: {self.message}"


class InvalidInput(LabError):
    """Bad input: nothing was created (exit 2)."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | str, *, source: str | None = None, hint: str | None = None):
        head = f"{source}: " if source else ""
        if isinstance(problems, str):
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
            lines += [f"  - {p}" for p in self.problems]
            message = "\n".join(lines)
        super().__init__(message, hint=hint)


class HostLacks(LabError):
    """The kernel or host lacks something labctl needs (exit 3)."""

    exit_code = 3


class NotRoot(HostLacks):
    def __init__(self, command: str):
        super().__init__(
            f"labctl {command} needs root: it creates network namespaces and kernel objects",
            hint=f"run it as root, e.g. `sudo labctl {command} ...`",
        )


class KernelError(LabError):
    """The kernel refused an operation labctl asked for (exit 1)."""

    exit_code = 1
