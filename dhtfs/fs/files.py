"""File contents: write buffers, background sealing of blocks, reads, truncate.

One ``OpenFile`` per inode with open handles (all handles of an inode share it), so that every
reader sees every writer's bytes at once, as on a local filesystem.

A file's bytes, per chunk index ``i`` (see ``dhtfs.meta.extents``), in layers, top wins:

1. ``buffers[i]``: written ranges ``[pos, bytearray]`` not yet sealed (plaintext in memory);
2. ``sealing``: ranges being hashed, encrypted and stored as blocks, in start order;
3. ``new[i]``: pieces of blocks stored since the last commit (the change being built);
4. the committed version's pieces in the namespace, minus every byte at or past ``cut``
   (the lowest size a truncate gave the file since the last commit).

A write only ever costs what it wrote: no chunk is read to modify it. A range that fills its
whole chunk becomes one ``chunk_size`` block (the same block as any equal chunk: dedup).

Invariants:
- plaintext is only ever in memory; the chunk store writes sealed bytes;
- at most ``max_sealing`` blocks are in flight (backpressure on the writer) and at most
  ``max_buffered`` bytes are held unsealed per file before the lowest chunk's are sealed;
- ``flush`` returns once every buffered byte is in a stored block and the change (``cut``,
  ``new``, size) is committed as one content op (durable against a crash of this process);
  the op is O(what changed), never O(file);
- ``unsynced`` names every block stored but not yet fsynced, per file, so ``fsync`` costs what
  changed since the last one.

A full disk (``dhtfs.store.space``): a write is acknowledged only if its bytes fit on the
state directory's disk beside every byte acknowledged and not yet stored (the buffers and
blocks being sealed: ``space.reserved``) and the margin kept for metadata; else it fails with
ENOSPC and changes nothing (cached copies are evicted first: they are reclaimable space,
see ``dhtfs.store.diskcache``). The rule when storing a block fails all the same (something
else filled the disk meanwhile, or an I/O error): the file's whole uncommitted change is
dropped at once, and the file is back to its last committed version (size, bytes, mtime):
it never shows a size that covers bytes that were not stored, i.e. zeros nobody wrote (the
next open drops the kernel's cached pages of it; a handle already open may still read them
from the page cache until closed, as the kernel keeps them). Every handle
open on it then fails writes, flushes and fsyncs with that error (ENOSPC) until all of them
are closed (the next open starts clean), so a writer that goes on cannot leave a hole where
bytes it was told were written used to be. So after any ENOSPC a file holds either its
previous version or exactly the bytes acknowledged.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from dhtfs.base.errors import BlockError, BlockMissing, NamespaceError
from dhtfs.fs.buffers import PlaintextCache, clip_ranges, copy_over, merge_range
from dhtfs.meta.extents import Piece, clip, overlay, overlay_all
from dhtfs.meta.namespace import ObjectRow
from dhtfs.meta.versions import MAX_FILE_SIZE
from dhtfs.store.blockstore import BlockStore, block_id_of
from dhtfs.store.space import BLOCK_SLACK

log = logging.getLogger(__name__)

THREAD_THRESHOLD = 64 * 1024  # hash/encrypt larger buffers off the trio thread
PREFETCH_CHUNKS = 4
"""Chunks fetched ahead of a sequential reader (enough to keep a link to the swarm busy)."""
RECLAIM_MORE = 4 * 1024 * 1024
"""Evicted beyond what a write lacks when the disk is full (see ``make_room``)."""
UNSYNCED_MAX = 65536
"""Blocks that may wait for an fsync; past it all are synced in the background (as the
kernel writes back dirty pages), so the list of them stays bounded."""


def _check_size(size: int) -> None:
    if size > MAX_FILE_SIZE:
        raise NamespaceError(errno.EFBIG, f"files are limited to {MAX_FILE_SIZE} bytes")


@dataclass(eq=False)
class Sealing:
    """A range being stored, at ``offset`` in a block (several small ranges share one block:
    see ``FileContents.flush``). ``limit``: how many of its bytes still count (a truncate
    during sealing lowers it); ``block``: set once stored."""

    index: int
    pos: int
    data: bytes | bytearray  # a bytearray handed over by the write buffers: never changed
    limit: int
    offset: int = 0
    block: bytes | None = None
    failed: bool = False  # not stored, or its change was dropped: never lands in ``new``


@dataclass(eq=False)
class OpenFile:
    """The live content of one inode while it has open handles (or is being changed)."""

    obj: bytes
    size: int
    chunk_size: int
    base: tuple[int, bytes]
    mtime: int
    handles: int = 0
    dirty: bool = False
    cut: int | None = None
    new: dict[int, list[Piece]] = field(default_factory=dict)
    sealing: deque[Sealing] = field(default_factory=deque)
    buffers: dict[int, list[list[Any]]] = field(default_factory=dict)
    buffered: int = 0
    pending: int = 0
    idle: trio.Event = field(default_factory=trio.Event)
    error: OSError | None = None  # a dropped change: handles fail until all are closed
    clean: tuple[int, int, int] | None = None  # (size, chunk_size, mtime) before the change

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def changing(self) -> bool:
        """True while this file has changes not yet committed."""
        return bool(self.dirty or self.buffers or self.sealing or self.pending)

    def stored_blocks(self) -> set[bytes]:
        """Blocks stored for this file's uncommitted change."""
        out = {p[2] for pieces in self.new.values() for p in pieces}
        out.update(s.block for s in self.sealing if s.block is not None)
        return out


class FileContents:
    """Reads and writes file contents through the chunk store. Lives on the trio thread."""

    def __init__(
        self,
        store: BlockStore,
        cache: PlaintextCache,
        default_chunk_size: int,
        commit: Callable[[OpenFile], tuple[int, bytes]],
        committed: Callable[[bytes, int], list[Piece]],
        *,
        max_sealing: int = 4,
        max_buffers: int = 32,
        nursery: trio.Nursery | None = None,
        fetch: Callable[[bytes, tuple[bytes, ...]], Awaitable[bytes]] | None = None,
        on_local_read: Callable[[bytes], None] | None = None,
        on_sealed: Callable[[bytes, int, bytes], None] | None = None,
        backlog_full: Callable[[], bool] | None = None,
        admit: Callable[[], Awaitable[None]] | None = None,
        make_room: Callable[[int], Awaitable[int]] | None = None,
        on_dropped: Callable[[bytes], None] | None = None,
    ) -> None:
        """``commit(of)`` commits ``of``'s change as one content op and returns its ID;
        ``committed(obj, index)``: the pieces of a chunk in the namespace's current version.
        The rest is a swarm mount's (None for a node alone): ``nursery`` runs background
        sealing; ``fetch(block_id, hints)`` returns a block not stored here, verified
        plaintext (hints: node IDs likely to hold it), or raises NamespaceError;
        ``on_local_read`` is told of each block read from the local store (the disk cache's
        recency); ``on_sealed`` the ID, size and plaintext of every block stored here (the
        swarm replicates it; the plaintext is only lent: the callee must not change it);
        while ``backlog_full()`` (the replication backlog), writes first ``await admit()``;
        ``make_room(nbytes)`` evicts that many bytes of cached copies (a write found the disk
        full); ``on_dropped`` is told the object of each dropped change (the kernel's cached
        pages of it are stale)."""
        self.store = store
        self.space = store.space  # what writes may still take (see the module docstring)
        self.cache = cache
        self.default_chunk_size = default_chunk_size
        self._commit = commit
        self._committed = committed
        self._sealing_slots = trio.Semaphore(max_sealing)
        self._limiter = trio.CapacityLimiter(max(2, max_sealing))
        self.max_buffered = max_buffers * default_chunk_size
        self.nursery = nursery
        self.open_files: dict[bytes, OpenFile] = {}
        self.unsynced: dict[bytes, set[bytes]] = {}  # obj → blocks stored, not yet fsynced
        self._unsynced_count = 0
        self._backlog_synced = trio.Event()
        self._backlog_synced.set()
        self._fetching: dict[bytes, trio.Event] = {}
        # Blocks read, by where they came from: the memory cache, the local store, the swarm.
        self.reads = {"memory": 0, "local": 0, "remote": 0}
        self.fetch = fetch
        self.on_local_read = on_local_read
        self.on_sealed = on_sealed
        self.backlog_full = backlog_full
        self.admit = admit
        self.make_room = make_room
        self.on_dropped = on_dropped

    # -- lifecycle -----------------------------------------------------------------------------

    def load(self, row: ObjectRow) -> OpenFile:
        """The OpenFile for ``row``, shared if already open."""
        of = self.open_files.get(row.obj)
        if of is None:
            of = OpenFile(
                obj=row.obj,
                size=row.size,
                chunk_size=row.chunk_size or self.default_chunk_size,
                base=(row.content_ts, row.content_node),
                mtime=row.mtime,
            )
            self.open_files[row.obj] = of
        elif of.handles <= 0:
            of.error = None  # every handle that saw a dropped change is closed
        return of

    def release(self, of: OpenFile) -> None:
        """Forget ``of`` once nothing holds it (call after a final flush)."""
        if of.handles <= 0 and not of.changing and not of.new:
            self.open_files.pop(of.obj, None)

    async def take_unsynced(self, obj: bytes) -> set[bytes]:
        """The blocks of ``obj`` stored since its last fsync (forgotten: the caller syncs
        them). Waits for a background sync of the backlog, which may hold some of them."""
        await self._backlog_synced.wait()
        blocks = self.unsynced.pop(obj, set())
        self._unsynced_count -= len(blocks)
        return blocks

    async def _sync_backlog(self) -> None:
        """fsync every block waiting for it (the list grew past ``UNSYNCED_MAX``)."""
        backlog, self.unsynced, self._unsynced_count = self.unsynced, {}, 0
        try:
            blocks = [b for per_file in backlog.values() for b in per_file]
            await trio.to_thread.run_sync(self.store.sync, blocks)
        except OSError as exc:
            log.error("syncing %d stored blocks failed: %s", len(backlog), exc)
            for obj, per_file in backlog.items():  # an fsync of their files will retry
                self.unsynced.setdefault(obj, set()).update(per_file)
                self._unsynced_count += len(per_file)
        finally:
            self._backlog_synced.set()

    # -- reading -------------------------------------------------------------------------------

    def pieces(self, of: OpenFile, index: int) -> list[Piece]:
        """Chunk ``index``'s stored pieces as this file sees them: the committed version
        (minus what ``cut`` dropped) under the uncommitted change's."""
        cs = of.chunk_size
        start = index * cs
        committed: list[Piece] = []
        if of.cut is None or start < of.cut:
            committed = self._committed(of.obj, index)
            if of.cut is not None:
                committed = clip(committed, of.cut - start)
        for piece in of.new.get(index, ()):
            committed = overlay(committed, piece)
        return clip(committed, max(0, of.size - start))

    async def read(self, of: OpenFile, offset: int, length: int) -> bytes:
        end = min(offset + length, of.size)
        if offset >= end:
            return b""
        cs = of.chunk_size
        pieces: list[bytes] = []
        pos = offset
        while pos < end:
            index, start = divmod(pos, cs)
            n = min(cs - start, end - pos)
            pieces.append(await self._read_in_chunk(of, index, start, n))
            if start + n == cs or start == 0:
                for ahead in range(1, PREFETCH_CHUNKS + 1):
                    self._prefetch(of, index + ahead)
            pos += n
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _read_in_chunk(self, of: OpenFile, index: int, start: int, n: int) -> bytes:
        """Bytes ``[start, start + n)`` of chunk ``index``, every layer applied."""
        end = start + n
        stored = [p for p in self.pieces(of, index) if p[0] < end and p[0] + p[1] > start]
        sealing = [s for s in of.sealing if s.index == index]
        ranges = of.buffers.get(index, ())
        if len(stored) == 1 and not sealing and not ranges:
            pos, length, block, boff = stored[0]
            if pos <= start and end <= pos + length:
                data = await self.get_block(block, (of.base[1],))
                piece = data[boff + start - pos : boff + end - pos]
                return piece if len(piece) == n else piece + bytes(n - len(piece))
        out = bytearray(n)
        for pos, length, block, boff in stored:
            data = await self.get_block(block, (of.base[1],))
            lo, hi = max(pos, start), min(pos + length, end)
            piece = data[boff + lo - pos : boff + hi - pos]
            out[lo - start : lo - start + len(piece)] = piece
        for s in sealing:
            copy_over(out, start, end, s.pos, memoryview(s.data)[: s.limit])
        for r_pos, r_data in ranges:
            copy_over(out, start, end, r_pos, memoryview(r_data))
        return bytes(out)

    async def get_block(self, block_id: bytes, hints: tuple[bytes, ...] = ()) -> bytes:
        """Plaintext of a block (cached): from the local store, else (a swarm mount) from the
        swarm via ``fetch`` with ``hints``; EIO if no one has it or it fails to verify.

        Concurrent calls for one block share one fetch.
        """
        data = self.cache.get(block_id)
        if data is not None:
            self.reads["memory"] += 1
            return data
        waiting = self._fetching.get(block_id)
        if waiting is not None:
            await waiting.wait()
            data = self.cache.get(block_id)
            if data is not None:
                return data
        done = self._fetching[block_id] = trio.Event()
        try:
            try:
                if self.fetch is not None and not self.store.has(block_id):
                    # Not stored here (one stat): no worker thread just to find that out.
                    raise BlockMissing(block_id, "not stored on this node")
                data = await trio.to_thread.run_sync(
                    self.store.get, block_id, limiter=self._limiter
                )
                self.reads["local"] += 1
                if self.on_local_read is not None:
                    self.on_local_read(block_id)
            except BlockError as exc:
                if self.fetch is None:
                    raise
                if not isinstance(exc, BlockMissing):
                    # Being stored here right now (a replica's copy, a cached one: the file
                    # is created, then filled), or damaged: the swarm has it whole.
                    log.info("local copy of chunk %s does not unseal (%s): reading it "
                             "from the swarm", block_id.hex()[:16], exc)
                data = await self.fetch(block_id, hints)
                self.reads["remote"] += 1
        except BlockError as exc:
            log.error("read failed: %s", exc)
            raise NamespaceError(errno.EIO, str(exc)) from exc
        finally:
            # After a failed fetch, several waiters may each retry and replace the entry;
            # remove only our own.
            if self._fetching.get(block_id) is done:
                del self._fetching[block_id]
            done.set()
        self.cache.put(block_id, data)
        return data

    def _prefetch(self, of: OpenFile, index: int) -> None:
        """Start fetching chunk ``index``'s blocks in the background (sequential read-ahead)."""
        if self.nursery is None or index * of.chunk_size >= of.size:
            return
        for block in {p[2] for p in self.pieces(of, index)}:
            if block not in self._fetching and self.cache.get(block) is None:
                self.nursery.start_soon(self._prefetch_one, block, (of.base[1],))

    async def _prefetch_one(self, block_id: bytes, hints: tuple[bytes, ...]) -> None:
        try:
            await self.get_block(block_id, hints)
        except NamespaceError:
            pass  # the reader that needs it will get the error

    # -- writing -------------------------------------------------------------------------------

    async def write(self, of: OpenFile, offset: int, data: bytes) -> int:
        if of.error is not None:
            raise self._take_error(of)
        if self.backlog_full is not None and self.backlog_full():
            assert self.admit is not None
            await self.admit()
            if of.error is not None:
                raise self._take_error(of)
        _check_size(offset + len(data))
        # Acknowledged only if it fits: ENOSPC now, with nothing changed (module docstring).
        need = len(data) + BLOCK_SLACK
        lacking = need - self.space.available(need)
        if lacking > 0:
            if self.make_room is not None:
                # Cached copies are reclaimable: evict what is missing (and a little more,
                # so the next writes need not wait), then look again.
                await self.make_room(lacking + RECLAIM_MORE)
                self.space.invalidate()
                if of.error is not None:
                    raise self._take_error(of)
            try:
                self.space.admit(need, f"a write of {len(data)} bytes")
            except OSError as exc:  # an ordinary error: logged by ``space``, not per write
                raise NamespaceError(errno.ENOSPC, str(exc)) from None
        self._begin_change(of)
        cs = of.chunk_size
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if of.error is not None:  # dropped meanwhile: none of this write stays
                raise self._take_error(of)
            index, start = divmod(offset + pos, cs)
            n = min(cs - start, len(view) - pos)
            if n == cs and index not in of.buffers:
                # A whole chunk in one request: seal the request's bytes, no buffer round trip.
                whole = (
                    data
                    if n == len(view) and isinstance(data, bytes)
                    else bytes(view[pos : pos + n])
                )
                await self._seal_bytes(of, index, 0, whole)
                pos += n
                continue
            ranges = of.buffers.setdefault(index, [])
            held, grew = merge_range(ranges, start, view[pos : pos + n])
            of.buffered += grew
            self.space.reserved += grew
            pos += n
            if held[0] == 0 and len(held[1]) == cs:
                await self._seal_soon(of, index)
        new_end = offset + len(view)
        if new_end > of.size:
            of.size = new_end
        of.mtime = time.time_ns()
        of.dirty = True
        while of.buffered > self.max_buffered and of.buffers:
            await self._seal_soon(of, min(of.buffers))
        if of.error is not None:  # dropped while this write waited: not acknowledged
            raise self._take_error(of)
        return len(view)

    def _begin_change(self, of: OpenFile) -> None:
        """Remember the committed state of a file whose change begins (what a dropped change
        goes back to)."""
        if not of.changing and not of.new:
            of.clean = (of.size, of.chunk_size, of.mtime)

    async def truncate(self, of: OpenFile, size: int) -> None:
        _check_size(size)
        if of.error is not None:
            raise self._take_error(of)
        self._begin_change(of)
        cs = of.chunk_size
        if size < of.size:
            of.cut = size if of.cut is None else min(of.cut, size)
            keep, rest = divmod(size, cs)
            for index in [i for i in of.new if i >= keep]:
                if index == keep and rest:
                    of.new[index] = clip(of.new[index], rest)
                else:
                    del of.new[index]
            for s in of.sealing:
                s.limit = max(0, min(s.limit, size - (s.index * cs + s.pos)))
            for index in [i for i in of.buffers if i >= keep]:
                dropped = clip_ranges(of.buffers[index], size - index * cs)
                of.buffered -= dropped
                self.space.reserved -= dropped
                if not of.buffers[index]:
                    del of.buffers[index]
        of.size = size
        if size == 0:
            of.chunk_size = self.default_chunk_size
        of.mtime = time.time_ns()
        of.dirty = True

    async def flush(self, of: OpenFile) -> None:
        """Seal every buffer, wait for all sealing, commit the change if there is one.

        A buffered range at the start of its chunk is stored as a block of its own (a file's
        tail, a small file: equal ones dedup); the others (small writes into the middle of
        chunks) are packed together into blocks of up to ``chunk_size``, each range a piece at
        its offset in the pack, so a flush after N scattered writes stores a few blocks, not N.

        If a block cannot be stored, the change is dropped (module docstring) and this raises
        its error (ENOSPC for a full disk) without committing anything.
        """
        if of.error is not None:
            raise self._take_error(of)
        while of.buffers or of.pending:
            pack: list[Sealing] = []
            packed = 0
            for index in sorted(of.buffers):
                for pos, data in of.buffers.pop(index, ()):
                    of.buffered -= len(data)
                    alone = pos == 0 or len(data) >= of.chunk_size // 2
                    # Popped, the range is ours: a large one is sealed as is (in the
                    # background, never cached), a small one as bytes (it may be cached).
                    held = data if alone and len(data) > THREAD_THRESHOLD else bytes(data)
                    entry = Sealing(index, pos, held, len(data))
                    if alone:
                        await self._seal_job(of, [entry])
                        continue
                    entry.offset = packed
                    pack.append(entry)
                    packed += len(data)
                    if packed >= of.chunk_size:
                        await self._seal_job(of, pack)
                        pack, packed = [], 0
            if pack:
                await self._seal_job(of, pack)
            if of.pending:  # inline seals leave nothing to wait for (and no checkpoint)
                await of.idle.wait()
        self._drain(of)
        if of.error is not None:
            raise self._take_error(of)
        if of.dirty:
            of.dirty = False
            try:
                of.base = self._commit(of)
            except BaseException:
                of.dirty = True
                raise
            of.new.clear()
            of.cut = None

    def change(self, of: OpenFile) -> list[list[Any]]:
        """The uncommitted change's extents, ``[offset, length, block, block_offset]``."""
        cs = of.chunk_size
        return [
            [index * cs + pos, length, block, boff]
            for index in sorted(of.new)
            for pos, length, block, boff in of.new[index]
        ]

    # -- sealing -------------------------------------------------------------------------------

    async def _seal_soon(self, of: OpenFile, index: int) -> None:
        """Hand chunk ``index``'s buffered ranges to background sealers (waits for slots)."""
        while True:
            ranges = of.buffers.get(index)
            if not ranges:
                of.buffers.pop(index, None)
                return
            pos, data = ranges.pop(0)
            of.buffered -= len(data)
            if not ranges:
                del of.buffers[index]
            # Popped, the range is ours: sealed (and lent to ``on_sealed``) without a copy.
            await self._seal_job(of, [Sealing(index, pos, data, len(data))], inline=False)

    async def _seal_bytes(self, of: OpenFile, index: int, pos: int, data: bytes) -> None:
        """Seal ``data`` at ``pos`` of chunk ``index`` in the background (waits for a slot)."""
        self.space.reserved += len(data)  # admitted by ``write``; released once sealed
        await self._seal_job(of, [Sealing(index, pos, data, len(data))], inline=False)

    async def _seal_job(self, of: OpenFile, entries: list[Sealing], *, inline: bool = True) -> None:
        """Store the entries' bytes, concatenated at their offsets, as one block: on this
        thread if small and ``inline`` (cheaper than a task and a thread hop), else in a
        background task holding one sealing slot (waits for a free one: backpressure).

        The entries join ``sealing`` at once, in order, so readers see their bytes and a later
        range over the same bytes stays on top once they move into ``new``."""
        data = entries[0].data if len(entries) == 1 else b"".join(e.data for e in entries)
        # Every byte of the entries was reserved (``write``, ``_seal_bytes``); released here,
        # once stored or failed.
        if inline and len(data) <= THREAD_THRESHOLD:
            of.sealing.extend(entries)
            try:
                block = self._store_reserved(data)
            except OSError as exc:
                self._failed(of, entries, exc)
            else:
                self._stored(of, entries, block, data)
                self.cache.put(block, data)
            finally:
                self.space.reserved -= len(data)
            self._drain(of)
            return
        of.sealing.extend(entries)
        if of.pending == 0:
            of.idle = trio.Event()
        of.pending += 1  # from now: flush waits for it
        try:
            await self._sealing_slots.acquire()
        except BaseException:
            self.space.reserved -= len(data)
            self._failed(of, entries, OSError(errno.EINTR, "interrupted before storing"))
            self._done_one(of)
            raise
        assert self.nursery is not None, "FileContents.nursery must be set by the service"
        self.nursery.start_soon(self._seal, of, entries, data)

    async def _seal(self, of: OpenFile, entries: list[Sealing], data: bytes | bytearray) -> None:
        try:
            block = await trio.to_thread.run_sync(
                self._store_reserved, data, limiter=self._limiter
            )
        except OSError as exc:
            self._failed(of, entries, exc)
        else:
            self._stored(of, entries, block, data)
        finally:
            self.space.reserved -= len(data)
            self._sealing_slots.release()
            self._done_one(of)

    def _done_one(self, of: OpenFile) -> None:
        of.pending -= 1
        self._drain(of)
        if of.pending == 0:
            of.idle.set()

    def _drain(self, of: OpenFile) -> None:
        """Move stored ranges from the front of ``sealing`` into ``new``, in start order (a
        later range over the same bytes must stay on top)."""
        landed: dict[int, list[Piece]] = {}
        while of.sealing and (of.sealing[0].block is not None or of.sealing[0].failed):
            e = of.sealing.popleft()
            if e.block is not None and e.limit > 0 and not e.failed:
                landed.setdefault(e.index, []).append((e.pos, e.limit, e.block, e.offset))
        for index, pieces in landed.items():  # in order: overlay_all keeps later ones on top
            of.new[index] = overlay_all(of.new.get(index, []), pieces)

    def _failed(self, of: OpenFile, entries: list[Sealing], exc: OSError) -> None:
        for e in entries:
            e.failed = True
        if of.error is None:
            self._drop_change(of, exc)

    def _drop_change(self, of: OpenFile, exc: OSError) -> None:
        """A block of ``of``'s uncommitted change could not be stored: forget the whole
        change (buffers, blocks in flight or stored for it, truncations), put the file back to
        its committed version, and fail its handles with ``exc`` until they are all closed."""
        log.error(
            "storing a block of file %s failed: %s; its changes since it was last saved are "
            "dropped (it keeps its previous version, %d bytes) and its open handles fail "
            "until closed", of.obj.hex()[:16], exc, of.clean[0] if of.clean else of.size,
        )
        self.space.reserved -= of.buffered
        of.buffers.clear()
        of.buffered = 0
        for e in of.sealing:  # in flight: they release their own reservations
            e.failed = True
        of.new.clear()
        of.cut = None
        of.dirty = False
        if of.clean is not None:
            of.size, of.chunk_size, of.mtime = of.clean
        of.error = exc
        self._drain(of)
        if self.on_dropped is not None:
            self.on_dropped(of.obj)

    def store_block(self, data: bytes | bytearray, *, reserved: bool = False) -> bytes:
        """Store ``data`` as a block; returns its ID. Thread-safe (runs in worker threads).
        ``reserved``: its space was reserved when its bytes were written (a write's block);
        else (compaction) ENOSPC if it does not fit beside the reservations and margin."""
        block = block_id_of(data)
        self.store.put(block, data, reserved=reserved)
        return block

    def _store_reserved(self, data: bytes | bytearray) -> bytes:
        return self.store_block(data, reserved=True)

    def _stored(
        self, of: OpenFile, entries: list[Sealing], block: bytes, data: bytes | bytearray
    ) -> None:
        """Bookkeeping for a block just stored for ``of`` (on the trio thread)."""
        for e in entries:
            e.block = block
        waiting = self.unsynced.setdefault(of.obj, set())
        if block not in waiting:
            waiting.add(block)
            self._unsynced_count += 1
            if (
                self._unsynced_count > UNSYNCED_MAX
                and self._backlog_synced.is_set()
                and self.nursery is not None
            ):
                self._backlog_synced = trio.Event()
                self.nursery.start_soon(self._sync_backlog)
        if self.on_sealed is not None:
            self.on_sealed(block, len(data), data)

    def put_back_unsynced(self, obj: bytes, blocks: set[bytes]) -> None:
        """Blocks a failed fsync took: the next fsync of ``obj`` waits for them again."""
        waiting = self.unsynced.setdefault(obj, set())
        self._unsynced_count += len(blocks - waiting)
        waiting |= blocks

    @staticmethod
    def _take_error(of: OpenFile) -> NamespaceError:
        """The errno of a dropped change (it stays until every handle is closed)."""
        exc = of.error
        return NamespaceError(exc.errno if exc and exc.errno else errno.EIO, str(exc))
