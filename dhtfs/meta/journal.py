"""The op journal: an append-only file that makes applied ops survive a crash cheaply.

Committing SQLite costs a WAL write of every page an op touched (tens of microseconds per
op); appending the op's canonical bytes to this file costs one small ``write()``. So the
namespace commits SQLite in groups (see ``Namespace``), and a handler that must not lose its
change to a crash of this process appends the ops applied since the last append here first.

Invariants:
- the journal holds every applied op that was persisted and whose SQLite transaction has not
  committed yet (it may also hold committed ones: replaying an applied op is a no-op);
- ``reset()`` (truncation) happens only after a SQLite COMMIT covering everything written;
- records are ``length (4 bytes) ‖ crc32 (4 bytes) ‖ encoded op``; replay stops at the first
  short or corrupt record (a torn tail after power loss; a process crash cannot tear a write);
- a ``write`` that fails (ENOSPC: the disk is full) leaves the file as it was: a partly
  written record is cut off again (else replay would stop there and hide every later one),
  and the ops stay queued for the next ``write``. The handler that asked fails (ENOSPC);
  its op stays applied and is journaled by the next write that finds room;
- so that this hardly happens, ``ROOM`` bytes past the end are kept allocated
  (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``: appends there need no new disk blocks), and
  ``has_room()`` says when that can no longer be kept: the filesystem then refuses changes
  to the tree (ENOSPC) before applying them, while the journal still holds the room to
  record the ones already applied.

Power loss is a different contract: ``fsync`` commits SQLite and fsyncs its WAL instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = struct.Struct(">II")  # length, crc32 of the body
ROOM = 256 * 1024
"""Bytes kept allocated past the journal's end (about a thousand ops)."""
LOW_ROOM = 64 * 1024
"""Below this much kept room (that could not be extended), ``has_room`` is False."""
FALLOC_FL_KEEP_SIZE = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def keep_allocated(fd: int, offset: int, length: int) -> bool:
    """Allocate ``[offset, offset + length)`` of ``fd`` without changing its size; False if
    the filesystem has no room (or cannot do it)."""
    if _fallocate is None:
        return False
    return bool(_fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length) == 0)


class OpJournal:
    """Append-only op journal at ``path`` (created 0600). Lives on the trio thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._buffer: list[bytes] = []
        self.size = os.fstat(self._fd).st_size
        self._room_end = self.size  # allocated up to here (see ROOM)
        self._keep_room()

    def _keep_room(self) -> None:
        if self._room_end - self.size < ROOM // 2 and keep_allocated(self._fd, self.size, ROOM):
            self._room_end = self.size + ROOM

    def has_room(self) -> bool:
        """Whether the journal can still record changes without asking the disk for space
        (it keeps ``ROOM`` allocated; False once less than ``LOW_ROOM`` is left and no more
        could be had: the disk is full)."""
        self._keep_room()
        return self._room_end - self.size >= LOW_ROOM

    def add(self, body: bytes) -> None:
        """Queue an applied op's encoding for the next ``write()``."""
        self._buffer.append(HEADER.pack(len(body), zlib.crc32(body)))
        self._buffer.append(body)

    @property
    def pending(self) -> bool:
        return bool(self._buffer)

    def write(self) -> None:
        """Append every queued op with one write: from now on they survive a crash."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            try:  # cutting back needs no space
                os.ftruncate(self._fd, self.size)
            except OSError as exc:
                log.error("op journal %s: cannot cut off a partial record: %s", self.path, exc)
            raise
        self.size += len(data)
        self._buffer.clear()
        self._keep_room()

    def reset(self) -> None:
        """Forget everything: call right after a SQLite COMMIT of all queued and written ops."""
        self._buffer.clear()
        if self.size:
            os.ftruncate(self._fd, 0)  # frees the kept room too
            self.size = self._room_end = 0
            self._keep_room()

    def close(self) -> None:
        os.close(self._fd)

    def records(self) -> list[bytes]:
        """The encoded ops on disk, in order, up to the first torn or corrupt record."""
        data = Path(self.path).read_bytes()
        out: list[bytes] = []
        pos = 0
        while pos + HEADER.size <= len(data):
            length, crc = HEADER.unpack_from(data, pos)
            body = data[pos + HEADER.size : pos + HEADER.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                log.warning(
                    "op journal %s: torn or corrupt record at byte %d; ignoring the rest "
                    "(%d bytes)",
                    self.path,
                    pos,
                    len(data) - pos,
                )
                break
            out.append(body)
            pos += HEADER.size + length
        return out
