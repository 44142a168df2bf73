"""A set of block IDs kept in an append-only file: ``+ID`` adds, ``-ID`` removes.

Used for the replication backlog (blocks not yet replicated) and the cache index (blocks held
as evictable cached copies).

Invariants:
- ``add`` and ``discard`` append one record with one write(2) before returning, no fsync: the
  kernel keeps it past a SIGKILL; callers that need power-loss durability fsync themselves;
- the file is read back at open, in order; a torn last record (a crash inside a write) is
  dropped; the set is then rewritten compactly (temp file + atomic rename), and again whenever
  removal records outnumber the members by far;
- iteration order is the order members were first added (oldest first);
- after ``close`` (the process is stopping) changes are kept in memory only: the file's
  records stay the truth for the next start (a replication finished after it is done again
  then, harmlessly; nothing is added after the backlog is drained and closed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from dhtfs.node.ids import ID_BYTES

RECORD = 1 + ID_BYTES


class IdSetFile:
    """The members and their file (see the module docstring). Not thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[bytes, None] = {}
        self._removals = 0
        if path.exists():
            blob = path.read_bytes()
            usable = len(blob) - len(blob) % RECORD
            for i in range(0, usable, RECORD):
                kind, cid = blob[i : i + 1], blob[i + 1 : i + RECORD]
                if kind == b"+":
                    self.members[cid] = None
                elif kind == b"-":
                    self.members.pop(cid, None)
        self._fd = -1
        self._rewrite()

    def __contains__(self, cid: bytes) -> bool:
        return cid in self.members

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.members)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"".join(b"+" + cid for cid in self.members))
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._removals = 0

    def add(self, cid: bytes) -> None:
        if cid not in self.members:
            if self._fd >= 0:
                os.write(self._fd, b"+" + cid)
            self.members[cid] = None

    def discard(self, cid: bytes) -> None:
        if self.members.pop(cid, 0) is None and self._fd >= 0:
            os.write(self._fd, b"-" + cid)
            self._removals += 1
            if self._removals > 4096 and self._removals > 2 * len(self.members):
                self._rewrite()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
