"""Free space on the state directory's disk, as dhtfs counts it: what a block may still take.

A full disk must be an ordinary error (ENOSPC before anything is acknowledged), never lost
bytes. So everything that writes blocks asks here first:

- ``margin`` bytes are always kept free for metadata (SQLite and its WAL, the op journal,
  the replication backlog and cache index files): no block is stored into it;
- ``reserved`` bytes are promised to writes already acknowledged and not yet stored as blocks
  (the filesystem's write buffers and blocks being sealed, see ``dhtfs.fs.files``): blocks
  stored for others (a replica's PUT_CHUNK, cached copies) may not take them either;
- ``available()`` = free - reserved - margin, where *free* is ``f_bavail * f_frsize`` of the
  filesystem (what df shows as available), less the bytes written through ``wrote`` since it
  was measured.

``statvfs`` is cached: measured again when the last measure is older than ``max_age``, when
the estimate comes within ``near`` bytes of the limit (then every check measures: one
syscall, about a microsecond), or after a write failed for want of space (``invalidate``).

Thread-safe: the block store calls ``wrote``/``room`` from worker threads; ``reserved`` is
changed by its owner on the trio thread (a plain int: readers may see it a moment late,
which the margin covers).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
SAY_EVERY = 60.0

MARGIN = 8 * 1024 * 1024
"""Bytes kept free for metadata by default (a SQLite WAL checkpoints at about 4 MiB)."""
MAX_AGE = 1.0
NEAR = 64 * 1024 * 1024
BLOCK_SLACK = 8 * 1024
"""What a block costs on disk beyond its bytes, at most (seal header and tag, rounding up
to the filesystem block, the inode): counted once per write admitted."""


def no_space(what: str) -> OSError:
    """The ENOSPC every refusal raises, with a message that says what to do."""
    return OSError(errno.ENOSPC, f"No space left on device: {what} (free space on the state "
                                 "directory's disk, or delete files)")


class DiskSpace:
    """The free space of the filesystem holding ``path`` (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        margin: int = MARGIN,
        max_age: float = MAX_AGE,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.path = os.fspath(path)
        self.margin = margin
        self.max_age = max_age
        self.reserved = 0
        self._statvfs = statvfs
        self._lock = threading.Lock()
        self._measured = -math.inf
        self._free = 0
        self._frsize = 4096
        self._written = 0  # bytes written since the last measure
        self.refusals = 0  # blocks or writes refused for want of space (status, tests)
        self._said_at = -math.inf

    def measure(self) -> os.statvfs_result:
        """statvfs now (and remember it)."""
        st = self._statvfs(self.path)
        with self._lock:
            self._free = st.f_bavail * st.f_frsize
            self._frsize = st.f_frsize or 4096
            self._written = 0
            self._measured = time.monotonic()
        return st

    def free(self, need: int = 0) -> int:
        """Bytes free for blocks before reservations and margin (cached, see the module)."""
        now = time.monotonic()
        with self._lock:
            estimate = self._free - self._written
            fresh = now - self._measured < self.max_age
            close = estimate - self.reserved - self.margin - need < NEAR
        if not fresh or close:
            self.measure()
            with self._lock:
                estimate = self._free - self._written
        return estimate

    def available(self, need: int = 0) -> int:
        """Bytes a new block or write may still take: free - reserved - margin."""
        return self.free(need) - self.reserved - self.margin

    def room(self, need: int) -> bool:
        """Whether ``need`` more bytes fit without eating into reservations or the margin."""
        return self.available(need) >= need

    def admit(self, need: int, what: str) -> None:
        """ENOSPC (counted; logged once a minute at most) unless ``need`` bytes fit."""
        if not self.room(need):
            self.refusals += 1
            now = time.monotonic()
            if now >= self._said_at + SAY_EVERY:
                self._said_at = now
                log.warning("%s: no space left for writes (%d bytes free, %d held for "
                            "writes in progress, %d kept for metadata); refusing with ENOSPC "
                            "(%d refused so far)", self.path, self.free(), self.reserved,
                            self.margin, self.refusals)
            raise no_space(what)

    def wrote(self, nbytes: int) -> None:
        """``nbytes`` were just written to the disk (keeps the cached estimate honest)."""
        with self._lock:
            self._written += nbytes

    def invalidate(self) -> None:
        """A write failed for want of space: measure again at the next check."""
        with self._lock:
            self._measured = -math.inf

    @property
    def frsize(self) -> int:
        return self._frsize

    def status(self) -> dict[str, int]:
        """For ``dhtfs status``: bytes free (measured now), held for writes in progress,
        kept for metadata, and the writes and blocks refused so far."""
        return {"free": self.free(), "reserved": self.reserved, "margin": self.margin,
                "refused": self.refusals}
