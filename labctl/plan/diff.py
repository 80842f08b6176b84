"""The one way labctl compares what it wants with what it recorded. Pure.

Every sync is a diff of two views of the same things: service ports by their
fingerprints, chains by their digests, map elements by their values, set
members, virtual servers, pods and nodes by their keys. `keyed` compares two
mappings, `members` two collections; both keep the order things are wanted in
(added and changed in the desired order, removed in the recorded order), so
that rendered transactions are stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Hashable, Iterable, Mapping, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True)
class Delta(Generic[K]):
    added: tuple[K, ...]  # desired, not recorded
    changed: tuple[K, ...]  # in both, with another value
    removed: tuple[K, ...]  # recorded, no longer desired
    kept: tuple[K, ...]  # in both, the same

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def keyed(recorded: Mapping[K, object], desired: Mapping[K, object]) -> Delta[K]:
    """Keys added, changed (value differs), removed and kept, from `recorded` to `desired`."""
    added, changed, kept = [], [], []
    for k, v in desired.items():
        if k not in recorded:
            added.append(k)
        elif recorded[k] != v:
            changed.append(k)
        else:
            kept.append(k)
    removed = [k for k in recorded if k not in desired]
    return Delta(tuple(added), tuple(changed), tuple(removed), tuple(kept))


def members(recorded: Iterable[T], desired: Iterable[T]) -> tuple[list[T], list[T]]:
    """(added, removed) members, from `recorded` to `desired`: added in the desired
    order, removed in the recorded order (duplicates count once)."""
    was, will = dict.fromkeys(recorded), dict.fromkeys(desired)
    return [m for m in will if m not in was], [m for m in was if m not in will]
