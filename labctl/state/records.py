"""Records of what a lab's syncs put in the kernel, per node and per kind:
<lab>/records/<kind>/<node>.json. The one store for every kind (service
rules, network policy, and whatever a new datapath keeps).

- Each kind has a version: a record of another version reads as none, so the
  next sync of that node is full (always safe).
- A sync marks its nodes pending before it touches the kernel and writes
  their records after: a crash in between leaves the mark, and a pending
  record reads as none.
- Writes are atomic (a temporary file renamed over the record).
- Lab-wide marks (`mark`, `marked`, `clear`) say something about every record
  of a kind, e.g. that the lab's state does not yet describe them.
"""

from __future__ import annotations

import json
from pathlib import Path

from labctl import failpoints
from labctl.state.store import LabDir, write_json

ROOT = "records"


class RecordKind:
    def __init__(self, labdir: LabDir, kind: str, version: int):
        self.dir = labdir.path / ROOT / kind
        self.kind = kind
        self.version = version

    def _path(self, node: str) -> Path:
        return self.dir / f"{node}.json"

    def _pending(self, node: str) -> Path:
        return self.dir / f"{node}.pending"

    def read(self, node: str) -> dict | None:
        """The node's record; None when there is none, it is pending, or of another version."""
        if self.pending(node):
            return None
        try:
            data = json.loads(self._path(node).read_text())
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) and data.get("version") == self.version else None

    def last(self, node: str, key: str):
        """A field of the node's last record written, whatever its version and even if
        pending: what a sync must undo (the proxy mode it left in the kernel)."""
        try:
            data = json.loads(self._path(node).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data.get(key) if isinstance(data, dict) else None

    def pending(self, node: str) -> bool:
        return self._pending(node).exists()

    def begin(self, nodes: list[str]) -> None:
        """Mark these nodes' records pending: their kernel state is about to change."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for node in nodes:
            self._pending(node).touch()

    def write(self, node: str, data: dict) -> None:
        """The node's new record; it is no longer pending."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self._path(node), dict(data, version=self.version))
        failpoints.hit("record")
        self._pending(node).unlink(missing_ok=True)

    def drop(self, node: str) -> None:
        """No record for the node: its next sync is full."""
        self._path(node).unlink(missing_ok=True)
        self._pending(node).unlink(missing_ok=True)

    def mark(self, name: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"@{name}").touch()

    def marked(self, name: str) -> bool:
        return (self.dir / f"@{name}").exists()

    def clear(self, name: str) -> None:
        (self.dir / f"@{name}").unlink(missing_ok=True)


def forget_node(labdir: LabDir, node: str) -> None:
    """A node left the lab, or its namespace is new: no record of any kind says anything about it."""
    root = labdir.path / ROOT
    if root.is_dir():
        for kind in root.iterdir():
            (kind / f"{node}.json").unlink(missing_ok=True)
            (kind / f"{node}.pending").unlink(missing_ok=True)
