"""The journal: what a lab owns, written before it is made.

One JSON object per line, appended with a single write(2) on an O_APPEND file,
so a `kill -9` at any moment leaves whole lines. An intent is written before
the object exists; `down` removes every object the journal lists, and a
missing object counts as removed. Objects are the top-level things a lab
makes: namespaces (every link, address, route and rule lives inside one and
goes with it), processes, and files outside the state directory.

    {"op": "netns", "name": "demo-node1"}
    {"op": "proc", "key": "responder", "pid": 123, "start": 456}  spawned, not yet running (see kernel.procs)
    {"op": "file", "path": "/etc/netns/demo-default.web-0"}
    {"op": "release", "kind": "netns", "name": "..."}        removed by a reconcile
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from labctl import failpoints


@dataclass
class Owned:
    """What the journal says the lab owns now."""

    netns: list[str] = field(default_factory=list)
    procs: dict[str, dict] = field(default_factory=dict)  # key -> {"pid", "start"}
    files: list[str] = field(default_factory=list)


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        # replay's memory: the bytes parsed so far, and what they say (netns, procs, files)
        self._seen: tuple[bytes, dict[str, None], dict[str, dict], dict[str, None]] | None = None

    def append(self, entries: Iterable[dict]) -> None:
        data = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)
        if not data:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data.encode())
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)
        failpoints.hit("journal")

    def netns(self, names: Iterable[str]) -> None:
        self.append({"op": "netns", "name": n} for n in names)

    def release_netns(self, names: Iterable[str]) -> None:
        self.append({"op": "release", "kind": "netns", "name": n} for n in names)

    def proc(self, key: str, pid: int, start: int | None) -> None:
        """A process of the lab: its pid and its start time (which tells it from a later process with its pid)."""
        self.append([{"op": "proc", "key": key, "pid": pid, "start": start}])

    def release_proc(self, key: str) -> None:
        self.append([{"op": "release", "kind": "proc", "key": key}])

    def file(self, path: str) -> None:
        self.files([path])

    def files(self, paths: Iterable[str]) -> None:
        self.append({"op": "file", "path": p} for p in paths)

    def release_file(self, path: str) -> None:
        self.release_files([path])

    def release_files(self, paths: Iterable[str]) -> None:
        self.append({"op": "release", "kind": "file", "path": p} for p in paths)

    def replay(self) -> Owned:
        """What the lab owns now. The journal only grows, by whole lines: when the
        file still begins with what was parsed last time, only the rest is parsed."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._seen = None
            return Owned()
        if self._seen is None or not data.startswith(self._seen[0]):
            self._seen = (b"", {}, {}, {})
        parsed, netns, procs, files = self._seen
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        for line in data[len(parsed) : end].decode().splitlines():
            _apply(line, netns, procs, files)
        self._seen = (data[:end], netns, procs, files)
        return Owned(list(netns), {k: dict(v) for k, v in procs.items()}, list(files))


def _apply(line: str, netns: dict[str, None], procs: dict[str, dict], files: dict[str, None]) -> None:
    try:
        e = json.loads(line)
    except json.JSONDecodeError:
        return  # a torn line cannot happen with O_APPEND writes, but never trust it
    op = e.get("op")
    if op == "netns":
        netns[e["name"]] = None
    elif op == "proc":
        procs[e["key"]] = {"pid": e["pid"], "start": e.get("start")} if "pid" in e else {}
    elif op == "pid" and e["key"] in procs:  # written by labctl before 0.2
        procs[e["key"]].update(pid=e["pid"], start=e.get("start"))
    elif op == "file":
        files[e["path"]] = None
    elif op == "release":
        kind = e.get("kind")
        if kind == "netns":
            netns.pop(e["name"], None)
        elif kind == "proc":
            procs.pop(e["key"], None)
        elif kind == "file":
            files.pop(e["path"], None)
