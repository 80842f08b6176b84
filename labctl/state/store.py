"""Where a lab's records live: /run/labctl/<lab>/, and its lock beside it.

/run is a tmpfs, cleared at boot exactly when the namespaces it describes
vanish, so the records never outlive what they describe.

    <lab>.lock       serialises the labctl commands that change the lab (flock)
    <lab>/journal    what the lab owns; written before each object is made (journal.py)
    <lab>/state.json the applied state: what `up`/`apply` last completed
    <lab>/records/   what each node's rule syncs put in the kernel (records.py)
    <lab>/responder.*  the responder's config, control socket and log
    <lab>/logs/      output of container commands

A lab name is checked against the rule of metadata.name before any path is
made from it, and every path removed is checked to be the lab's own directory
under the state root: `labctl down ../x` is refused, never followed.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from labctl.errors import InvalidInput, LabError
from labctl.model.fields import lab_name

STATE_ROOT = Path(os.environ.get("LABCTL_STATE_DIR", "/run/labctl"))
STATE_VERSION = 1
LOCK_WAIT = 600.0  # seconds a command waits for another one on the same lab
_GONE = ".gone-"  # a lab directory being removed (renamed first, then deleted)


def check_name(name: object, what: str = "lab name") -> str:
    """A lab name from the command line, LABCTL_LAB or a file: the metadata.name rule, or exit 2."""
    why = lab_name(name)
    if why:
        raise InvalidInput(f"{what}: {why}")
    assert isinstance(name, str)
    return name


class LabDir:
    def __init__(self, lab: str, root: Path | None = None):
        self.lab = check_name(lab)
        self.root = Path(root or STATE_ROOT)
        self.path = self.root / self.lab
        self.lock_path = self.root / f"{self.lab}.lock"

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
        return self.path.is_dir() and not self.path.is_symlink()

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.path.mkdir(exist_ok=True, mode=0o755)
        self.logs.mkdir(exist_ok=True)

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        if data.get("version") != STATE_VERSION:
            raise LabError(f"{self.state_file} was written by another labctl version", hint=f"labctl down {self.lab}")
        return data

    def write_state(self, data: dict[str, Any]) -> None:
        """Atomically replace state.json (a crash leaves the old or the new one)."""
        write_json(self.state_file, dict(data, version=STATE_VERSION))

    @contextmanager
    def locked(self, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the lab's lock: commands that change a lab run one at a time. The
        lock file sits beside the lab's directory; whoever holds it may remove it
        (down does, and a command whose lab does not exist), so a waiter checks
        that the file it locked is still the one in place, else locks anew."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        start = time.monotonic()
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                self._flock(fd, start, wait)
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)  # removed or replaced while we waited: lock the one in place
        try:
            yield
        finally:
            if not self.exists():
                _unlink(self.lock_path)  # no lab, no lock left behind (still held: nobody else has it)
            os.close(fd)

    def _flock(self, fd: int, start: float, wait: float) -> None:
        """Take the lock on `fd`, saying after a second that we wait, giving up after `wait`."""
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited > wait:
                    raise LabError(f"lab {self.lab} is busy: another labctl command has held {self.lock_path} for {wait:.0f} s") from None
                if waited > 1.0 and not told:
                    print(f"waiting for another labctl command on lab {self.lab}...", file=sys.stderr)  # noqa: T201
                    told = True
                time.sleep(0.02)

    def remove(self) -> None:
        """Remove the records (after everything they list is gone), and the lock
        file: renamed aside first, so that nothing can be made in it meanwhile."""
        if self.exists():
            gone = self.root / f"{_GONE}{self.lab}-{secrets.token_hex(4)}"
            os.rename(self.path, gone)  # the name was checked: root/<lab> has no "/" or ".." to escape by
            for _ in range(5):  # a probe may still be writing its port counter in it: try again
                shutil.rmtree(gone, ignore_errors=True)  # symlinks inside are removed, never followed
                if not os.path.lexists(gone):
                    break
        _unlink(self.lock_path)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_json(path: Path, data: Any) -> None:
    """Replace a file with JSON atomically (a crash leaves the old file or the new one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def labs(root: Path | None = None) -> list[str]:
    """Labs that have records (running, or left behind by a crash). Entries of the
    state root that are not a lab's (no valid name, not a directory) are ignored."""
    root = Path(root or STATE_ROOT)
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        return []
    for p in entries:  # a `down` killed between its rename and its delete
        if p.name.startswith(_GONE) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
    return sorted(p.name for p in entries if not lab_name(p.name) and p.is_dir() and not p.is_symlink())
