"""Replication of the blocks written on this node to the R XOR-closest nodes.

Every block stored here by a writer (``add``) joins the *backlog*; workers push each to the R
nodes closest to its ID (``BlockNode.place_block``: a replica acknowledges once the
block is fsynced there) and take it out once it has ``min(R, live peers + 1)`` copies (see
``live_peers``: a node cut off from the swarm is not alone). A block that could not get them
is tried again later, with backoff.

Invariants:
- the backlog survives a crash of the process: ``+ID`` and ``-ID`` records are appended to a
  file (one write(2), no fsync: the kernel keeps it past a SIGKILL; power loss is what fsync
  is for, and an fsync waits for replication itself) before ``add`` returns; on start the
  records are folded into the set still pending, and replication resumes;
- at most ``max_bytes`` of blocks wait: past it ``admit`` makes writers wait (backpressure),
  for at most ``admit_deadline`` seconds each (then the write goes on, with a warning: a
  writer never hangs on the network, and the backlog is on disk, not in memory);
- ``wait`` (fsync) puts its blocks first in line and returns, by its deadline, the ones that
  still lack their copies: the caller fails the fsync with EIO rather than hang.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from dhtfs.base.errors import BlockError
from dhtfs.blocks.node import BlockNode
from dhtfs.store.idset import IdSetFile

log = logging.getLogger(__name__)

WORKERS = 8
QUIET_SECONDS = 0.3
"""A small block nobody waits for is pushed once no block was added for this long (or the
backlog is over half full), so a copy of many small files is not slowed by replicating each
one as it goes; blocks of ``STREAM_BYTES`` or more (a large file being written) go at once,
so its replication overlaps the writing."""
STREAM_BYTES = 256 * 1024
HELD_BYTES = 64 * 1024 * 1024
"""Plaintext of large blocks kept in memory for their replication (so it does not read and
decrypt them back from the store), at most this much; the rest is read back."""
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
SAY_EVERY_SECONDS = 60.0
LIVE_SECONDS = 600.0
"""While the routing table is empty, peers heard from within this long still count as live:
a node cut off from the swarm (its routing table empties as calls fail) does not think itself
alone and call a block replicated with its own copy only."""
SPACE_CHECK_SECONDS = 0.25
"""How often a waiting ``wait`` checks whether full peers leave its blocks nowhere to go."""


class BlockReplicator:
    """The backlog and its workers (see the module docstring). Lives on the trio thread."""

    def __init__(
        self,
        node: BlockNode,
        backlog_path: Path,
        *,
        max_bytes: int,
        admit_deadline: float = 60.0,
        workers: int = WORKERS,
        on_placed_elsewhere: Callable[[bytes], None] | None = None,
        remembered: int = 0,
    ) -> None:
        self.node = node
        self.file = IdSetFile(backlog_path)
        self.max_bytes = max_bytes
        self.admit_deadline = admit_deadline
        self.workers = workers
        self.sizes: dict[bytes, int] = {}  # pending block → bytes (0: not known yet)
        self.bytes = 0
        self._queue: deque[bytes] = deque(self.file)  # small blocks: after a pause
        self._stream: deque[bytes] = deque()  # large blocks: at once
        self._urgent: deque[bytes] = deque()
        self._retry_at: dict[bytes, float] = {}
        self._retry_heap: list[tuple[float, bytes]] = []  # (when, block); stale ones skipped
        self._attempts: dict[bytes, int] = {}
        self._done: dict[bytes, trio.Event] = {}
        self._work = trio.Event()
        self._room = trio.Event()
        self._room.set()
        self._last_add = -math.inf
        self._held: dict[bytes, bytes] = {}
        self._short_blocks = 0  # blocks that fell short 3 times since the last warning
        self._held_bytes = 0
        # Told of each block whose copies were all placed on other nodes (this node not among
        # its R closest): its own copy is then an extra one (the disk cache takes it).
        self.on_placed_elsewhere = on_placed_elsewhere
        self.remembered = remembered  # peers known at the last run (see ``live_peers``)
        self._started = trio.current_time()
        self.replicated = 0  # blocks that reached their copies (for status and tests)
        self.added = 0  # blocks written here and given to replication
        self.incomplete = 0  # placements that fell short and will be tried again
        for cid in self.file:
            self.sizes[cid] = 0
        if self._queue:
            log.info("resuming replication of %d blocks", len(self._queue))
            self._work.set()

    # -- writers -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self.sizes)

    def add(self, cid: bytes, size: int, data: bytes | None = None) -> None:
        """A block was stored here: replicate it (recorded on disk before returning).
        ``data``: its plaintext, if the caller has it at hand (kept while memory allows)."""
        if cid in self.sizes:
            return
        if not self.node.client and self.live_peers() == 0:
            # Alone: the copy here is every copy there can be (what placing it would find,
            # after reading it back and a lookup); repair copies it once peers come.
            self.added += 1
            self.replicated += 1
            return
        if data is not None and size >= STREAM_BYTES and self._held_bytes + size <= HELD_BYTES:
            self._held[cid] = data
            self._held_bytes += size
        self.file.add(cid)
        self.added += 1
        self.sizes[cid] = size
        self.bytes += size
        if size >= STREAM_BYTES:
            self._stream.append(cid)
            self._work.set()
        else:
            self._queue.append(cid)
            self._last_add = trio.current_time()
            if len(self._queue) == 1:
                self._work.set()  # workers sleep through a burst, then take the queue
        if self.bytes > self.max_bytes:
            self._room = trio.Event() if self._room.is_set() else self._room

    @property
    def full(self) -> bool:
        return self.bytes > self.max_bytes

    async def admit(self) -> None:
        """Wait while the backlog is over ``max_bytes`` (bounded by ``admit_deadline``)."""
        if not self.full:
            return
        with trio.move_on_after(self.admit_deadline) as scope:
            await self._room.wait()
        if scope.cancelled_caught:
            log.warning("replication backlog still over %d bytes after %.0fs: writing on "
                        "(%d blocks wait for peers)", self.max_bytes, self.admit_deadline,
                        self.pending)

    def is_pending(self, cid: bytes) -> bool:
        return cid in self.sizes

    async def wait(self, cids: Iterable[bytes], deadline: float) -> list[bytes]:
        """Wait until each of ``cids`` is replicated; returns those still pending after
        ``deadline`` seconds (none: all done). Puts them first in line."""
        waiting = [c for c in dict.fromkeys(cids) if c in self.sizes]
        if not waiting:
            return []
        for cid in waiting:
            if self._retry_at.get(cid) != math.inf:  # not in flight: no backoff for it now
                self._retry_at.pop(cid, None)
            self._urgent.append(cid)
        self._work.set()
        with trio.move_on_after(deadline):
            for cid in waiting:
                while cid in self.sizes:
                    event = self._done.get(cid)
                    if event is None:
                        event = self._done[cid] = trio.Event()
                    with trio.move_on_after(SPACE_CHECK_SECONDS):
                        await event.wait()
                    if cid in self.sizes and self._attempts.get(cid, 0) and self.short_of_space():
                        # Tried, and too many of the nodes it should go to are full: waiting
                        # out the deadline would not help (the caller says ENOSPC).
                        return [c for c in waiting if c in self.sizes]
        return [c for c in waiting if c in self.sizes]

    def short_of_space(self) -> bool:
        """Too few peers with room for a block to get its copies: of the live peers, those
        that refused a block for want of space lately (``Node.peer_full``) are no targets,
        and the rest plus this node's own copy fall short of ``min(R, live peers + own)``."""
        if not self.node.full_until:
            return False
        own = 0 if self.node.client else 1
        live = self.live_peers()
        full = sum(1 for c in self.node.routing.contacts() if self.node.peer_full(c))
        return (live - full) + own < min(self.node.replicas, live + own)

    async def drain(self, deadline: float, every: float = 5.0) -> int:
        """Wait for the whole backlog, logging progress every ``every`` seconds, up to
        ``deadline``; returns how many blocks still wait."""
        if not self.sizes:
            return 0
        log.info("replicating %d blocks (%d bytes) before stopping", self.pending, self.bytes)
        self._urgent.extend(self.sizes)
        for cid in [c for c, t in self._retry_at.items() if t != math.inf]:
            del self._retry_at[cid]
        self._work.set()
        end = trio.current_time() + deadline
        while self.sizes and trio.current_time() < end:
            with trio.move_on_after(min(every, end - trio.current_time())):
                while self.sizes:
                    await trio.sleep(0.05)
            if self.sizes:
                log.info("replication: %d blocks (%d bytes) to go", self.pending, self.bytes)
        if self.sizes:
            log.warning("stopping with %d blocks not yet replicated: they resume at the next "
                        "start", self.pending)
        return self.pending

    # -- workers -------------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.workers):
                nursery.start_soon(self._worker)
            nursery.start_soon(self._retry_loop)

    def _next(self) -> bytes | None:
        for line in (self._urgent, self._stream):
            while line:
                cid = line.popleft()
                if cid in self.sizes and cid not in self._retry_at:
                    return cid
        now = trio.current_time()
        quiet = now - self._last_add >= QUIET_SECONDS or self.bytes > self.max_bytes // 2
        while self._queue and quiet:
            cid = self._queue.popleft()
            if cid in self.sizes and cid not in self._retry_at:
                return cid
        return None

    async def _worker(self) -> None:
        while True:
            cid = self._next()
            if cid is None:
                if self._queue:
                    # Small blocks are being written: wait for a pause, or for a block that
                    # cannot wait (fsync, a large one).
                    pause = self._last_add + QUIET_SECONDS - trio.current_time()
                    with trio.move_on_after(max(pause, 0.01)):
                        await self._wait_work()
                else:
                    await self._wait_work()
                continue
            self._inflight_start(cid)
            try:
                await self._replicate(cid)
            except Exception as exc:  # e.g. a disk error reading it back: try again later
                log.error("replicating block %s failed: %r", cid.hex()[:16], exc)
                self._retry_later(cid, RETRY_SECONDS[-1])
            finally:
                self._inflight_end(cid)

    async def _wait_work(self) -> None:
        self._work = trio.Event() if self._work.is_set() else self._work
        await self._work.wait()

    def _inflight_start(self, cid: bytes) -> None:
        self._retry_at[cid] = math.inf  # nobody else takes it meanwhile

    def _inflight_end(self, cid: bytes) -> None:
        if self._retry_at.get(cid) == math.inf:
            del self._retry_at[cid]

    async def _replicate(self, cid: bytes) -> None:
        data = self._held.get(cid)
        if data is None:
            try:
                data = await trio.to_thread.run_sync(self.node.store.get, cid)
            except BlockError:
                self._finish(cid)  # collected meanwhile: nothing to replicate
                return
        own = 0 if self.node.client else 1  # a client's own copy does not count
        wanted = min(self.node.replicas, self.live_peers() + own)  # before calls fail
        try:
            result = await self.node.place_block(cid, data)
        except Exception as exc:  # a placement that failed is tried again
            log.debug("replicating %s failed: %r", cid.hex()[:16], exc)
            result = None
        wanted = max(wanted, min(self.node.replicas, self.live_peers() + own))
        if result is not None and result.copies >= wanted:
            self._finish(cid)
            if result.replicas and not result.local_slot and self.on_placed_elsewhere:
                self.on_placed_elsewhere(cid)
            return
        self.incomplete += 1
        attempt = self._attempts.get(cid, 0)
        self._attempts[cid] = attempt + 1
        delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
        self._retry_later(cid, delay)
        if attempt == 2:  # counted, and logged as one summary now and then (not per block)
            self._short_blocks += 1

    async def _retry_loop(self) -> None:
        last_said = -math.inf
        while True:
            await trio.sleep(0.5)
            if self._short_blocks and trio.current_time() - last_said >= SAY_EVERY_SECONDS:
                last_said = trio.current_time()
                log.warning("%d blocks could not get their copies after 3 tries (%d wait in "
                            "all); retrying", self._short_blocks, self.pending)
                self._short_blocks = 0
            now = trio.current_time()
            due = False
            heap = self._retry_heap
            while heap and heap[0][0] <= now:
                when, cid = heapq.heappop(heap)
                if self._retry_at.get(cid) == when:  # else rescheduled or taken meanwhile
                    del self._retry_at[cid]
                    self._urgent.append(cid)
                    due = True
            if due:
                self._work.set()

    def _retry_later(self, cid: bytes, delay: float) -> None:
        when = self._retry_at[cid] = trio.current_time() + delay
        heapq.heappush(self._retry_heap, (when, cid))

    def live_peers(self) -> int:
        """How many other nodes count as live: those in the routing table; but when it is
        empty, those heard from within ``LIVE_SECONDS`` (this node is then more likely cut
        off than alone, and must not call its own copy enough), and in the first
        ``LIVE_SECONDS`` after start, the peers remembered from the last run
        (``remembered``): a node restarted while its peers are out of reach is not alone
        either."""
        if len(self.node.routing):
            return len(self.node.routing)
        recent = self.node.recent_peers(LIVE_SECONDS)
        if trio.current_time() - self._started < LIVE_SECONDS:
            recent = max(recent, self.remembered)
        return recent

    def _finish(self, cid: bytes) -> None:
        size = self.sizes.pop(cid, None)
        if size is None:
            return
        self.bytes -= size
        held = self._held.pop(cid, None)
        if held is not None:
            self._held_bytes -= len(held)
        self.file.discard(cid)
        self._attempts.pop(cid, None)
        self.replicated += 1
        event = self._done.pop(cid, None)
        if event is not None:
            event.set()
        if self.bytes <= self.max_bytes and not self._room.is_set():
            self._room.set()

    def status(self) -> dict[str, int]:
        return {
            "pending": self.pending,
            "pending_bytes": self.bytes,
            "replicated": self.replicated,
            "added": self.added,
            "incomplete": self.incomplete,
        }

    def close(self) -> None:
        self.file.close()
