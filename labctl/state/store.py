"""Where a lab's records live: /run/labctl/<lab>/.

/run is a tmpfs, cleared at boot exactly when the namespaces it describes
vanish, so the records never outlive what they describe.

    journal      what the lab owns; written before each object is made (see journal.py)
    state.json   the applied topology: what `up`/`apply` last completed
    lock         serialises labctl commands working on the lab
    responder.*  the responder's config, control socket and log
    logs/        output of container commands
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from labctl.errors import LabError

STATE_ROOT = Path(os.environ.get("LABCTL_STATE_DIR", "/run/labctl"))
STATE_VERSION = 1


class LabDir:
    def __init__(self, lab: str, root: Path | None = None):
        self.lab = lab
        self.path = (root or STATE_ROOT) / lab

    @property
    def journal(self) -> Path:
        return self.path / "journal"

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.path.is_dir()

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.logs.mkdir(exist_ok=True)

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        if data.get("version") != STATE_VERSION:
            raise LabError(f"{self.state_file} was written by another labctl version", hint=f"labctl down {self.lab}")
        return data

    def write_state(self, data: dict[str, Any]) -> None:
        """Atomically replace state.json (a crash leaves the old or the new one)."""
        data = dict(data, version=STATE_VERSION)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, self.state_file)

    @contextmanager
    def locked(self, wait: float = 30.0) -> Iterator[None]:
        self.create()
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LabError(f"lab {self.lab} is busy: another labctl command holds {self.path / 'lock'}") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Remove the records (after everything they list is gone)."""
        if not self.path.exists():
            return
        for p in sorted(self.path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink(missing_ok=True)
        self.path.rmdir()


def labs(root: Path | None = None) -> list[str]:
    """Labs that have records (running, or left behind by a crash)."""
    root = root or STATE_ROOT
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
