"""The write path of ``FileContents`` (``dhtfs.fs.files``) past the write buffers: ranges
sealed into blocks (hashed, encrypted, stored), the stored ones landing in the file's
uncommitted change, a change dropped when a block cannot be stored, and fsync (the blocks
stored since the last one, synced here and then on their replicas).

Invariants (the module docstring of ``dhtfs.fs.files`` has the whole picture):
- at most ``max_sealing`` blocks are in flight (backpressure on the writer): a background
  seal holds one of ``_sealing_slots``;
- ranges leave ``sealing`` in start order (``_drain``), so a later range over the same bytes
  stays on top in ``new``;
- every byte being sealed was reserved in ``space.reserved`` and is released once stored or
  failed;
- ``unsynced`` names every block stored but not yet fsynced, per file; past
  ``UNSYNCED_MAX`` all of them are synced in the background;
- ``not_durable`` names every block stored here and not yet durable (neither synced nor in
  the fsync journal), whichever file it is for; fsync makes them and the ops durable with
  one write when they are few and small (the fsync journal, ``dhtfs.store.syncjournal``):
  ``journaled`` then names them; a checkpoint (a durable point: commit, every such block
  synced, then the WAL) empties both and ends the journal's lap. Fsyncs and checkpoints
  take turns (``_durable_lock``), and a journal append writes blocks before the ops that
  name them.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from dhtfs.base.errors import BlockMissing, NamespaceError
from dhtfs.base.periodic import Doorbell
from dhtfs.fs.buffers import OpenFile, PlaintextCache, Sealing
from dhtfs.meta.extents import Piece, overlay_all
from dhtfs.store.blockstore import BlockStore, block_id_of
from dhtfs.store.space import DiskSpace
from dhtfs.store.syncjournal import BLOCK, OP, SyncJournal

log = logging.getLogger(__name__)

THREAD_THRESHOLD = 64 * 1024  # hash/encrypt larger buffers off the trio thread
UNSYNCED_MAX = 65536
"""Blocks that may wait for an fsync; past it all are synced in the background (as the
kernel writes back dirty pages), so the list of them stays bounded."""
JOURNAL_BLOCKS_MAX = 64
JOURNAL_BYTES_MAX = 1024 * 1024
"""An fsync whose blocks not yet durable are more or larger than this syncs their files
(``_checkpoint``) instead of copying them into the fsync journal."""
SYNCFS_ABOVE = 64
"""A durable point with more blocks to sync than this syncs the state directory's whole
filesystem (one ``syncfs``) instead of fsyncing each block file and its directory."""


class DurableMetadata(Protocol):
    """The namespace's side of a durable point (``dhtfs.meta.namespace.Namespace``)."""

    def take_unsynced_records(self) -> list[bytes] | None: ...
    def lose_unsynced_records(self) -> None: ...
    def commit_mark(self) -> int: ...
    def sync_wal(self) -> None: ...
    def durable_through(self, mark: int) -> None: ...


class BlockSealing:
    """Sealing, storing and syncing blocks: the part of ``FileContents`` behind ``flush``
    and ``fsync``.

    A mixin: ``FileContents.__init__`` sets the state below (see its comments there).
    """

    store: BlockStore
    space: DiskSpace
    cache: PlaintextCache
    nursery: trio.Nursery | None
    unsynced: dict[bytes, set[bytes]]
    sync_journal: SyncJournal | None
    not_durable: set[bytes]
    journaled: set[bytes]
    checkpoint_due: Doorbell
    _durable_lock: trio.Lock
    on_sealed: Callable[[bytes, int, bytes], None] | None
    on_dropped: Callable[[bytes], None] | None
    _sealing_slots: trio.Semaphore
    _limiter: trio.CapacityLimiter
    _unsynced_count: int
    _backlog_synced: trio.Event

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
        self.not_durable.add(block)
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

    # -- fsync --------------------------------------------------------------------------------

    async def take_unsynced(self, obj: bytes) -> set[bytes]:
        """The blocks of ``obj`` stored since its last fsync (forgotten: the caller syncs
        them). Waits for a background sync of the backlog, which may hold some of them."""
        await self._backlog_synced.wait()
        blocks = self.unsynced.pop(obj, set())
        self._unsynced_count -= len(blocks)
        return blocks

    def put_back_unsynced(self, obj: bytes, blocks: set[bytes]) -> None:
        """Blocks a failed fsync took: the next fsync of ``obj`` waits for them again."""
        waiting = self.unsynced.setdefault(obj, set())
        self._unsynced_count += len(blocks - waiting)
        waiting |= blocks

    async def _sync_backlog(self) -> None:
        """fsync every block waiting for it (the list grew past ``UNSYNCED_MAX``)."""
        backlog, self.unsynced, self._unsynced_count = self.unsynced, {}, 0
        try:
            blocks = [b for per_file in backlog.values() for b in per_file]
            await trio.to_thread.run_sync(self.store.sync, blocks)
            self.not_durable.difference_update(blocks)
        except OSError as exc:
            log.error("syncing %d stored blocks failed: %s", len(backlog), exc)
            for obj, per_file in backlog.items():  # an fsync of their files will retry
                self.unsynced.setdefault(obj, set()).update(per_file)
                self._unsynced_count += len(per_file)
        finally:
            self._backlog_synced.set()

    async def make_durable(
        self,
        files: list[OpenFile],
        metadata: DurableMetadata,
        replicate: Callable[[list[bytes]], Awaitable[list[bytes]]] | None,
        short_of_space: Callable[[], bool],
    ) -> None:
        """Make the named files' blocks (those stored since their last fsync) and every
        applied op (``metadata``) survive power loss here, then (a swarm mount) wait for
        ``replicate`` to put the blocks on their R nodes: EIO if some could not get there in
        time, ENOSPC if they could not because the nodes they go to are full
        (``short_of_space``). On any failure the blocks stay unsynced: the next fsync of their
        file waits for them again.

        One durable write when it is small (``_journal``): the fsync journal takes the
        blocks not yet durable and the ops since the last durable point; else a durable
        point (``_checkpoint``) syncs the blocks, the journal's and the WAL."""
        taken = {of.obj: await self.take_unsynced(of.obj) for of in files}
        ids = [i for blocks in taken.values() for i in blocks]
        try:
            async with self._durable_lock:
                if not await self._journal(metadata):
                    await self._checkpoint(metadata)
            missing = await replicate(ids) if replicate is not None and ids else []
        except BaseException:
            for obj, blocks in taken.items():
                self.put_back_unsynced(obj, blocks)
            raise
        if missing:
            for obj, blocks in taken.items():
                self.put_back_unsynced(obj, blocks)
            if short_of_space():
                log.error("fsync: %d of %d blocks cannot get their copies: the nodes they go "
                          "to are out of space (see their dhtfs status); the data is safe "
                          "here and keeps replicating", len(missing), len(ids))
                raise NamespaceError(errno.ENOSPC, "the swarm's replicas are out of space")
            log.error(
                "fsync: %d of %d blocks did not reach their replicas in time (is the swarm "
                "reachable? see replication_deadline); the data is safe here and keeps "
                "replicating", len(missing), len(ids)
            )
            raise NamespaceError(errno.EIO, "replication deadline passed")

    async def _journal(self, metadata: DurableMetadata) -> bool:
        """The small fsync: append the sealed bytes of every block stored and not yet durable
        (``not_durable``: this file's and others', whose ops are journaled too), then the
        records of the ops since the last durable point, to the fsync journal, with one
        ``fdatasync``. False (nothing done) when there is no journal, the ops' records were
        dropped, or the blocks are too many or too large: the caller makes a durable point."""
        journal = self.sync_journal
        if journal is None:
            return False
        blocks = list(self.not_durable)
        if len(blocks) > JOURNAL_BLOCKS_MAX:
            return False
        records = metadata.take_unsynced_records()
        if records is None:
            return False
        store = self.store

        def append() -> bool:
            sizes = [os.stat(store.path_of(b)).st_size for b in blocks]
            if sum(sizes) > JOURNAL_BYTES_MAX:
                return False
            entries = [(BLOCK, b + store.sealed(b)) for b in blocks]
            journal.append(entries + [(OP, r) for r in records])
            return True

        try:
            done = await trio.to_thread.run_sync(append)
        except (OSError, BlockMissing) as exc:
            log.warning("fsync journal: %s; syncing the files themselves instead", exc)
            done = False
        if not done:
            metadata.lose_unsynced_records()  # taken, not written: the durable point covers them
            return False
        self.not_durable.difference_update(blocks)
        self.journaled.update(blocks)
        self.checkpoint_due.ring()
        return True

    async def checkpoint(self, metadata: DurableMetadata) -> None:
        """A durable point in the background (``dhtfs.runtime.service``): the blocks and ops
        the fsync journal holds made durable in their own files, and its lap ended."""
        async with self._durable_lock:
            if self.sync_journal is not None and self.sync_journal.size:
                await self._checkpoint(metadata)

    async def _checkpoint(self, metadata: DurableMetadata) -> None:
        """A durable point: commit, then make every block stored here durable (those not yet
        durable and the journaled ones: fsynced, or past ``SYNCFS_ABOVE`` the whole
        filesystem synced at once), then fsync the WAL; the fsync journal starts a new lap.
        Holds ``_durable_lock`` (the caller's)."""
        mark = metadata.commit_mark()
        blocks = self.not_durable | self.journaled
        store = self.store

        def sync() -> None:
            if len(blocks) > SYNCFS_ABOVE:
                store.sync_all()
            else:
                store.sync(blocks)
            metadata.sync_wal()

        await trio.to_thread.run_sync(sync)
        if self.sync_journal is not None:
            self.sync_journal.reset()
        self.not_durable.difference_update(blocks)
        self.journaled.difference_update(blocks)
        metadata.durable_through(mark)
