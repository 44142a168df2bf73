"""The disk cache: copies of blocks held here beyond the swarm's R, evicted least recently
used first once they pass ``capacity`` bytes (``-o cache_disk=BYTES``).

A block in the store is one of:
- *origin*: written here and not yet replicated (in the replication backlog);
- *responsible*: placed here as one of the R XOR-closest nodes (PUT_CHUNK, repair, hand-off),
  or written here by a node that is itself among the R closest;
- *cached*: fetched here for a read (``Node`` caches it once verified, and announces itself
  as a provider: popular blocks spread like a CDN), or written here and replicated to R other
  nodes (this node not among the R closest; a client-only mount always).

Only cached blocks are in this index, and only they are evicted.

Invariants:
- a block enters the index only when other nodes hold its R copies (``add`` is called by the
  node after a verified fetch, or by replication once the copies are placed elsewhere);
- eviction re-checks every victim at that moment: a block this node has become responsible
  for (among the R closest in its routing table, as repair counts it) leaves the index and
  stays (promoted), and a block waiting for replication is skipped (``protected``); so a
  block this node is responsible for, or has not finished replicating, is never evicted;
- membership survives restarts (``cache.index``, an ``IdSetFile``); recency does not: after a
  restart the least recently used order is the order the blocks entered the cache;
- constructing one reads the index and stats every member (blocking): callers on the trio
  thread build it in a worker thread;
- eviction runs in its own task, never inline in a read or write; its file deletions run in a
  worker thread, a batch at a time, until the cache is at most ``LOW_WATER`` of capacity;
- cached copies are reclaimable space: a write that finds the disk full first asks
  ``make_room`` to evict (the same rules) that many bytes of them, whatever the capacity.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import trio

from dhtfs.store.idset import IdSetFile

log = logging.getLogger(__name__)

INDEX_NAME = "cache.index"
LOW_WATER = 0.9
"""Eviction, once started, goes down to this fraction of capacity (not one block at a time)."""
BATCH = 256


class DiskCache:
    """The cached blocks of one store, in least recently used order (see the module docstring).

    ``size_of(cid)``: bytes the block takes on disk, or None if it is not stored.
    ``remove(cid)``: delete it from the store (thread-safe; called in a worker thread).
    ``protected(cid)``: True when the block must stay (responsible or pending replication);
    ``responsible(cid)``: True when this node is among its R closest (promoted: leaves the index).
    Lives on the trio thread.
    """

    def __init__(
        self,
        state_dir: Path,
        capacity: int,
        *,
        size_of: Callable[[bytes], int | None],
        remove: Callable[[bytes], object],
        responsible: Callable[[bytes], bool],
        pending: Callable[[bytes], bool],
    ) -> None:
        self.capacity = capacity
        self.size_of = size_of
        self.remove = remove
        self.responsible = responsible
        self.pending = pending
        self.file = IdSetFile(state_dir / INDEX_NAME)
        self.lru: OrderedDict[bytes, int] = OrderedDict()
        self.bytes = 0
        self.evicted = 0  # blocks evicted (for status and tests)
        self.added = 0  # blocks that became cached copies
        self.promoted = 0  # blocks that left the cache as this node became responsible
        self._over = trio.Event()
        for cid in list(self.file):
            size = size_of(cid)
            if size is None:
                self.file.discard(cid)  # collected while we were down
                continue
            self.lru[cid] = size
            self.bytes += size
        if self.bytes > capacity:
            self._over.set()

    def __contains__(self, cid: bytes) -> bool:
        return cid in self.lru

    def add(self, cid: bytes, size: int | None = None) -> None:
        """``cid`` (stored here) is now a cached copy; recorded on disk before returning."""
        if cid in self.lru:
            self.lru.move_to_end(cid)
            return
        if size is None:
            size = self.size_of(cid)
            if size is None:
                return
        self.file.add(cid)
        self.added += 1
        self.lru[cid] = size
        self.bytes += size
        if self.bytes > self.capacity:
            self._over.set()

    def touch(self, cid: bytes) -> None:
        """``cid`` was read: it becomes the most recently used."""
        if cid in self.lru:
            self.lru.move_to_end(cid)

    def forget(self, cid: bytes) -> None:
        """``cid`` is no longer a cached copy (collected, or now held for the swarm)."""
        size = self.lru.pop(cid, None)
        if size is not None:
            self.bytes -= size
            self.file.discard(cid)

    async def run(self) -> None:
        """Evict whenever the cache passes its capacity; runs until cancelled."""
        while True:
            await self._over.wait()
            self._over = trio.Event()
            await self.evict()

    async def evict(self) -> int:
        """Evict least recently used cached blocks until at most ``LOW_WATER`` of capacity
        (skipping protected ones); returns how many went."""
        if self.bytes <= self.capacity:
            return 0
        return await self._evict_to(int(self.capacity * LOW_WATER))

    async def make_room(self, nbytes: int) -> int:
        """Evict least recently used cached blocks worth at least ``nbytes`` (or all that may
        go: protected ones stay): the disk is full and a write needs the room. Returns the
        bytes the cache shrank by."""
        before = self.bytes
        if nbytes > 0 and self.lru:
            await self._evict_to(max(0, self.bytes - nbytes))
        return before - self.bytes

    async def _evict_to(self, goal: int) -> int:
        gone = 0
        skipped: list[tuple[bytes, int]] = []  # still counted, and members on disk
        while self.bytes > goal and self.lru:
            victims: list[bytes] = []
            while self.lru and len(victims) < BATCH and self.bytes > goal:
                cid, size = self.lru.popitem(last=False)
                if self.responsible(cid):
                    self.bytes -= size
                    self.file.discard(cid)
                    self.promoted += 1
                elif self.pending(cid):
                    skipped.append((cid, size))
                else:
                    victims.append(cid)
                    self.bytes -= size
                    self.file.discard(cid)
            if victims:
                await trio.to_thread.run_sync(self._remove_all, victims)
                gone += len(victims)
        for cid, size in skipped:  # back in, as the most recently used (they are busy)
            self.lru[cid] = size
        self.evicted += gone
        if gone:
            log.info("cache: evicted %d blocks (%d bytes cached, capacity %d)",
                     gone, self.bytes, self.capacity)
        return gone

    def _remove_all(self, victims: list[bytes]) -> None:
        for cid in victims:
            try:
                self.remove(cid)
            except OSError as exc:
                log.warning("cache: cannot evict block %s: %s", cid.hex()[:16], exc)

    def status(self) -> dict[str, int]:
        return {"blocks": len(self.lru), "bytes": self.bytes, "capacity": self.capacity,
                "evicted": self.evicted, "promoted": self.promoted, "added": self.added}

    def close(self) -> None:
        self.file.close()


def file_size(path_of: Callable[[bytes], object]) -> Callable[[bytes], int | None]:
    """``size_of`` for a store whose ``path_of(cid)`` names each block's file."""

    def size_of(cid: bytes) -> int | None:
        try:
            return os.stat(path_of(cid)).st_size  # type: ignore[arg-type]
        except OSError:
            return None

    return size_of
