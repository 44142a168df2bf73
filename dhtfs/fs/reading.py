"""The read path of ``FileContents`` (``dhtfs.fs.files``): a file's bytes, layer by layer,
and the blocks under them, from the plaintext cache, the local store or the swarm.

Invariants: concurrent reads of one block share one fetch (``_fetching``); every block read
lands in the ``PlaintextCache``; a sequential reader has ``PREFETCH_CHUNKS`` chunks fetched
ahead of it in the background; a block that no one has, or that fails to verify, is EIO.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import trio

from dhtfs.base.errors import BlockError, BlockMissing, NamespaceError
from dhtfs.fs.buffers import OpenFile, PlaintextCache, copy_over
from dhtfs.meta.extents import Piece, clip, overlay
from dhtfs.store.blockstore import BlockStore

log = logging.getLogger(__name__)

PREFETCH_CHUNKS = 4
"""Chunks fetched ahead of a sequential reader (enough to keep a link to the swarm busy)."""


class FileReads:
    """Reading file contents: the part of ``FileContents`` that serves ``read``.

    A mixin: ``FileContents.__init__`` sets the state below (see its comments there).
    """

    store: BlockStore
    cache: PlaintextCache
    nursery: trio.Nursery | None
    reads: dict[str, int]
    fetch: Callable[[bytes, tuple[bytes, ...]], Awaitable[bytes]] | None
    on_local_read: Callable[[bytes], None] | None
    _committed: Callable[[bytes, int], list[Piece]]
    _fetching: dict[bytes, trio.Event]
    _limiter: trio.CapacityLimiter

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
                    log.info("local copy of block %s does not unseal (%s): reading it "
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
