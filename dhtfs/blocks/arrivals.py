"""Reads waiting for a block that no reachable node could serve yet, and what wakes them.

A node may show a file version before any node it can reach holds its blocks (the version's
writer placed them late, or is a client-only mount nobody routes to; see
``dhtfs.blocks.fetch``). Such a read keeps looking, with backoff, until its deadline; news that
the block is on its way cuts the wait short:

- a replica's copy pushed here (PUT_CHUNK): the bytes themselves, already verified;
- a small block spread with its provider record (ADD_PROVIDER with data): the bytes, verified;
- a provider record for it (ADD_PROVIDER without data): a lookup now would find it.

A read that waited out its deadline is remembered for ``MISSED_SECONDS`` (news of the block
forgets it): a read of it again meanwhile fails at once. The kernel retries a failed page read
at once, and a reader that just got EIO after the whole deadline must not wait that long a
second time for the same answer (even one more look can take seconds when peers are silent).

Invariants: a watch is registered before the reader's first ask, so news arriving between an
ask and the wait is never lost (the event stays set); ``arrived`` costs one dict lookup when
nobody waits (it is on the RPC handler's path); watches are counted, so two reads of one block
share its news and the entry goes when the last one leaves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio

MISSED_SECONDS = 5.0
MISSED_MAX = 4096
"""Blocks remembered as missed at most (the oldest go first)."""


class Watch:
    """News of one block for the reads waiting for it."""

    __slots__ = ("data", "event", "readers", "waiting")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.data: bytes | None = None   # the verified bytes, once they came with the news
        self.readers = 0
        self.waiting = False   # a read found no copy and is waiting for one

    def rearm(self) -> None:
        """Forget news already acted on (keep the bytes, if any came)."""
        if self.event.is_set() and self.data is None:
            self.event = trio.Event()


class Arrivals:
    """Block ID → ``Watch`` for the reads waiting for it (on the trio thread)."""

    def __init__(self) -> None:
        self._watches: dict[bytes, Watch] = {}
        self._missed: dict[bytes, float] = {}   # block → until when it counts as missed

    @property
    def waiting(self) -> int:
        """How many blocks reads found nowhere yet and wait for now (``dhtfs status``:
        ``reads.waiting``)."""
        return sum(1 for w in self._watches.values() if w.waiting and w.data is None)

    @contextlib.contextmanager
    def watch(self, cid: bytes) -> Iterator[Watch]:
        """Register interest in ``cid`` for the ``with`` block."""
        w = self._watches.get(cid)
        if w is None:
            w = self._watches[cid] = Watch()
        w.readers += 1
        try:
            yield w
        finally:
            w.readers -= 1
            if w.readers <= 0 and self._watches.get(cid) is w:
                del self._watches[cid]

    def arrived(self, cid: bytes, data: bytes | None = None) -> None:
        """News of ``cid`` (its verified bytes, or a provider record: ``data`` None)."""
        self._missed.pop(cid, None)
        w = self._watches.get(cid)
        if w is None:
            return
        if data is not None:
            w.data = data
        w.event.set()

    def missed(self, cid: bytes) -> None:
        """A read of ``cid`` waited out its deadline with no copy found."""
        now = trio.current_time()
        self._missed.pop(cid, None)
        self._missed[cid] = now + MISSED_SECONDS
        while len(self._missed) > MISSED_MAX or next(iter(self._missed.values())) <= now:
            del self._missed[next(iter(self._missed))]

    def recently_missed(self, cid: bytes) -> bool:
        """Whether a read of ``cid`` waited out its deadline lately (and no news came since)."""
        until = self._missed.get(cid)
        if until is None:
            return False
        if until <= trio.current_time():
            del self._missed[cid]
            return False
        return True
