"""The errors a user sees, each with its exit code (see the contract).

Everything the CLI reports goes through these; the CLI turns them into a
message and an exit code in one place (labctl.cli). The errors about input
(InvalidInput, Problem) and their base (LabError) live in the model, which
imports nothing from the rest of labctl.
"""

from __future__ import annotations

from labctl.model.errors import InvalidInput, LabError, Problem, bounded, short_repr

__all__ = ["LabError", "Problem", "InvalidInput", "CheckFailed", "HostLacks", "NotRoot", "KernelError", "NoSuchLab", "bounded", "short_repr"]


class CheckFailed(LabError):
    """A verification found a mismatch (exit 1)."""

    exit_code = 1


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


class NoSuchLab(LabError):
    """The lab a command names is not up, or went down while the command ran (exit 2)."""

    exit_code = 2
