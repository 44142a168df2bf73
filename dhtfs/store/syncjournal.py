"""The fsync journal: what a small fsync makes durable with one write and one ``fdatasync``.

A small fsync would otherwise wait on three: its block file, that file's directory, and
SQLite's WAL. Instead, the filesystem appends the sealed bytes of the blocks written since
they were last made durable and the ops applied since the last durable point (the
filesystem decides which: ``dhtfs.fs.sealing``) here, and syncs this one file. A checkpoint
later syncs those block files and the WAL together and starts the journal again
(``reset``), in the background, off the fsync's path.

Format: records ``length (4) ‖ crc32 (4) ‖ lap (8) ‖ kind (1) ‖ body``; the crc covers lap,
kind and body. ``BLOCK`` bodies are ``block ID (32) ‖ sealed file bytes`` (only ciphertext
reaches the disk, as in the block store); ``OP`` bodies are the op journal's records
(``dhtfs.meta.journal``).

Invariants:
- records are written at ``size`` and the file is ``fdatasync``ed before ``append`` returns:
  what ``append`` returned for survives power loss;
- ``reset`` writes nothing: the next lap writes from offset 0 with a higher lap number, over
  the old records. Reading stops at the first record that is short, fails its crc or
  belongs to another lap than the first record's, so a torn write or the rest of an older
  lap is never read as part of this one. Everything an older lap held was made durable
  elsewhere before the reset, and replaying it is harmless (blocks are rewritten with the
  same bytes, ops already applied are skipped);
- the lap number grows across restarts (``open`` starts past the lap it finds); a clean
  stop or a replay ``clear``s the file, so a start replays only what a crash left;
- a failed ``append`` (ENOSPC) changes nothing that is read: the next append writes over
  whatever part of it reached the file, at the same offset;
- the file stops growing once a lap fits; past ``SHRINK_ABOVE`` bytes a reset cuts it back.

One caller at a time (the filesystem serializes appends and checkpoints with a lock); the
methods do blocking I/O: call them from a worker thread.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from dhtfs.base.durable import fsync_dir

HEADER = struct.Struct(">IIQ")  # body length (kind byte included), crc32, lap
BLOCK = b"B"
OP = b"O"
KINDS = frozenset({BLOCK, OP})
SHRINK_ABOVE = 64 * 1024 * 1024
"""A reset cuts a journal file larger than this back to nothing."""


def _crc(lap: int, kind_and_body: bytes) -> int:
    return zlib.crc32(kind_and_body, zlib.crc32(lap.to_bytes(8, "big")))


def encode(lap: int, kind: bytes, body: bytes) -> bytes:
    """One record of lap ``lap``."""
    payload = kind + body
    return HEADER.pack(len(payload), _crc(lap, payload), lap) + payload


def decode(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], int]:
    """(the lap of the first record, the records of that lap in order as (kind, body), the
    bytes they take) read from ``data``, up to the first short, corrupt or foreign one."""
    out: list[tuple[bytes, bytes]] = []
    pos, lap = 0, None
    while pos + HEADER.size <= len(data):
        length, crc, rec_lap = HEADER.unpack_from(data, pos)
        payload = data[pos + HEADER.size : pos + HEADER.size + length]
        if (length < 1 or len(payload) < length or (lap is not None and rec_lap != lap)
                or _crc(rec_lap, payload) != crc or payload[:1] not in KINDS):
            break
        lap = rec_lap
        out.append((payload[:1], payload[1:]))
        pos += HEADER.size + length
    return (lap or 0), out, pos


class SyncJournal:
    """The fsync journal at ``path`` (created 0600). See the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if created:
            fsync_dir(path.parent)
        data = self._read_all()
        lap = decode(data)[0]
        if len(data) >= HEADER.size:  # a cleared file names its last lap in an empty header
            marked = HEADER.unpack_from(data)[2]
            lap = max(lap, marked if marked < 1 << 62 else 0)
        self.lap = lap + 1  # a new lap: whatever is there is replayed first (``records``)
        self.size = 0  # bytes of this lap written
        self.appends = 0  # appends since open (status)

    def _read_all(self) -> bytes:
        return Path(self.path).read_bytes()

    def records(self) -> list[tuple[bytes, bytes]]:
        """The records left by the last run (before any ``append`` of this one): replay
        them, make their effects durable, then ``reset``."""
        return decode(self._read_all())[1]

    def append(self, records: list[tuple[bytes, bytes]]) -> None:
        """Write ``records`` ((kind, body) pairs) after this lap's, with one write, and
        ``fdatasync``: on return they survive power loss. OSError (ENOSPC) leaves the lap as
        it was."""
        data = b"".join(encode(self.lap, kind, body) for kind, body in records)
        view, offset = memoryview(data), self.size
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
        os.fdatasync(self._fd)
        self.size += len(data)
        self.appends += 1

    def reset(self) -> None:
        """Start a new lap (call once everything the journal holds is durable elsewhere)."""
        self.lap += 1
        self.size = 0
        if os.fstat(self._fd).st_size > SHRINK_ABOVE:
            os.ftruncate(self._fd, 0)

    def clear(self) -> None:
        """Start a new lap and make the file read as empty (its first header zeroed and
        synced), so the next start replays nothing: after a clean stop or a replay."""
        self.reset()
        os.pwrite(self._fd, HEADER.pack(0, 0, self.lap), 0)
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


__all__ = ["BLOCK", "OP", "SyncJournal", "decode", "encode"]
