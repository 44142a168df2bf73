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
- a write that fails (ENOSPC: the disk is full) never leaves a torn record: the file is cut
  back to its last whole record, the change is kept in memory (``add``/``discard`` never
  raise for it), and the whole set is rewritten at the next change that finds room, at most
  once a second meanwhile, and at ``close`` (a crash before then loses the changes not
  written: a block's replication is then found missing by repair, a cached copy is counted
  as held for the swarm); the same when the compacting rewrite at open finds no room;
- after ``close`` (the process is stopping) changes are kept in memory only: the file's
  records stay the truth for the next start (a replication finished after it is done again
  then, harmlessly; nothing is added after the backlog is drained and closed).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from dhtfs.base.ids import ID_BYTES

log = logging.getLogger(__name__)

RECORD = 1 + ID_BYTES
RETRY_SECONDS = 1.0


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
        self._size = 0  # bytes of whole records in the file
        self._stale = False  # the file lacks changes kept in memory (a write failed)
        self._closed = False
        self._retry_at = 0.0
        try:
            self._rewrite()
        except OSError as exc:
            self._failed(exc)

    def __contains__(self, cid: bytes) -> bool:
        return cid in self.members

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.members)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        blob = b"".join(b"+" + cid for cid in self.members)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(blob)
        self._removals = 0
        self._stale = False

    def _append(self, record: bytes) -> None:
        """One record, or (the file being stale) the whole set; see the module docstring."""
        if self._closed:
            return
        if self._stale:
            now = time.monotonic()
            if now < self._retry_at:
                return
            self._retry_at = now + RETRY_SECONDS
            try:
                self._rewrite()  # the set as it is now, this change included
            except OSError as exc:
                self._failed(exc)
                return
            log.info("%s: written again (%d members)", self.path, len(self.members))
            return
        try:
            written = os.write(self._fd, record)
            if written != len(record):
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # no torn record
            self._failed(exc)
            return
        self._size += len(record)

    def _failed(self, exc: OSError) -> None:
        if not self._stale:
            log.warning("%s: cannot write (%s); kept in memory, written again once there is "
                        "room", self.path, exc)
        self._stale = True
        self._retry_at = time.monotonic() + RETRY_SECONDS

    def add(self, cid: bytes) -> None:
        if cid not in self.members:
            self.members[cid] = None
            self._append(b"+" + cid)

    def discard(self, cid: bytes) -> None:
        if self.members.pop(cid, 0) is None:
            self._append(b"-" + cid)
            self._removals += 1
            if (self._removals > 4096 and self._removals > 2 * len(self.members)
                    and not self._stale and not self._closed):
                try:
                    self._rewrite()
                except OSError as exc:
                    self._failed(exc)

    def close(self) -> None:
        if self._stale and not self._closed:  # a last try: the file is the next start's truth
            try:
                self._rewrite()
            except OSError as exc:
                log.warning("%s: cannot write (%s); the last changes are lost with this "
                            "process", self.path, exc)
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
