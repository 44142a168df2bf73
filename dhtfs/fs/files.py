"""File contents: open files, writes into their buffers, truncate, flush (the commit of a
change); reads are in ``dhtfs.fs.reading``, sealing, storing and syncing blocks in
``dhtfs.fs.sealing``, the in-memory state (``OpenFile``, ranges) in ``dhtfs.fs.buffers``.

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
- plaintext is only ever in memory; the block store writes sealed bytes;
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
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dhtfs.base.errors import NamespaceError
from dhtfs.base.periodic import Doorbell
from dhtfs.fs.buffers import OpenFile, PlaintextCache, Sealing, clip_ranges, merge_range
from dhtfs.fs.reading import FileReads
from dhtfs.fs.sealing import THREAD_THRESHOLD, BlockSealing
from dhtfs.meta.extents import Piece, clip
from dhtfs.meta.schema import ObjectRow
from dhtfs.meta.versions import MAX_FILE_SIZE
from dhtfs.store.blockstore import BlockStore
from dhtfs.store.space import BLOCK_SLACK
from dhtfs.store.syncjournal import SyncJournal

RECLAIM_MORE = 4 * 1024 * 1024
"""Evicted beyond what a write lacks when the disk is full (see ``make_room``)."""


def _check_size(size: int) -> None:
    if size > MAX_FILE_SIZE:
        raise NamespaceError(errno.EFBIG, f"files are limited to {MAX_FILE_SIZE} bytes")


class FileContents(FileReads, BlockSealing):
    """Reads and writes file contents through the block store. Lives on the trio thread."""

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
        sync_journal: SyncJournal | None = None,
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
        pages of it are stale); ``sync_journal``: where small fsyncs write (None: each fsync
        syncs the files themselves)."""
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
        self.sync_journal = sync_journal
        self.not_durable: set[bytes] = set()  # blocks stored, neither synced nor journaled
        self.journaled: set[bytes] = set()  # blocks durable only in the fsync journal
        self.checkpoint_due = Doorbell()  # rung after each journaled fsync
        self._durable_lock = trio.Lock()  # fsyncs and checkpoints take turns
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

    @staticmethod
    def _take_error(of: OpenFile) -> NamespaceError:
        """The errno of a dropped change (it stays until every handle is closed)."""
        exc = of.error
        return NamespaceError(exc.errno if exc and exc.errno else errno.EIO, str(exc))
