"""File contents: write buffers, background sealing of full chunks, reads, truncate.

One ``OpenFile`` per inode with open handles (all handles of an inode share it), so that every
reader sees every writer's bytes at once, as on a local filesystem.

Where chunk ``i``'s bytes are, first match wins: ``buffers[i]`` (plaintext being written, in
memory only), ``sealing[i]`` (being hashed + encrypted + stored by a background task), then
``ids[i]`` (a stored chunk; ``None`` is a hole, read as zeros). A chunk's plaintext may be
shorter than its span (``min(chunk_size, size - i*chunk_size)``); the rest reads as zeros.

Invariants:
- plaintext is only ever in memory; the chunk store writes sealed bytes;
- at most ``max_sealing`` chunks are in flight (backpressure on the writer) and at most
  ``max_buffers`` partially written chunks are held per file before the oldest is sealed;
- ``flush`` returns once every buffered byte is in a stored chunk and the new version is
  committed as a content op (durable against a crash of this process);
- the chunk size of a file never changes while it holds chunks.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from dhtfs.errors import ChunkError, ChunkMissing, NamespaceError
from dhtfs.fs.namespace import ObjectRow, pack_chunks
from dhtfs.node.chunkstore import ChunkStore, chunk_id_of

log = logging.getLogger(__name__)

THREAD_THRESHOLD = 64 * 1024  # hash/encrypt larger buffers off the trio thread
MAX_CHUNKS = 1 << 20
"""Chunks a file may have (1 TiB at the default 1 MiB chunk size): a file version lists every
chunk, holes included, and travels whole in its content op, which must stay well inside one
op-log entry (``dhtfs.node.logwire.MAX_BODY``). Past it: EFBIG, and nothing changes."""


def _check_size(of: OpenFile, size: int) -> None:
    if size > of.chunk_size * MAX_CHUNKS:
        raise NamespaceError(
            errno.EFBIG, f"files are limited to {MAX_CHUNKS} chunks of {of.chunk_size} bytes"
        )


class ChunkCache:
    """LRU of decrypted chunk plaintext, bounded in bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, chunk_id: bytes) -> bytes | None:
        data = self._items.get(chunk_id)
        if data is not None:
            self._items.move_to_end(chunk_id)
        return data

    def put(self, chunk_id: bytes, data: bytes) -> None:
        if len(data) > self.capacity or chunk_id in self._items:
            return
        self._items[chunk_id] = data
        self._bytes += len(data)
        while self._bytes > self.capacity:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)


@dataclass(eq=False)
class OpenFile:
    """The live content of one inode while it has open handles (or is being changed)."""

    obj: bytes
    size: int
    chunk_size: int
    ids: list[bytes | None]
    base: tuple[int, bytes]
    mtime: int
    handles: int = 0
    dirty: bool = False
    buffers: dict[int, bytearray] = field(default_factory=dict)
    sealing: dict[int, bytes] = field(default_factory=dict)
    pending: int = 0
    idle: trio.Event = field(default_factory=trio.Event)
    error: OSError | None = None

    def __post_init__(self) -> None:
        self.idle.set()

    def span(self, index: int) -> int:
        return max(0, min(self.chunk_size, self.size - index * self.chunk_size))

    def stored_ids(self) -> list[bytes]:
        return [i for i in self.ids if i is not None]


class FileContents:
    """Reads and writes file contents through the chunk store. Lives on the trio thread."""

    def __init__(
        self,
        store: ChunkStore,
        cache: ChunkCache,
        default_chunk_size: int,
        commit: Callable[[OpenFile], tuple[int, bytes]],
        *,
        max_sealing: int = 4,
        max_buffers: int = 32,
    ) -> None:
        self.store = store
        self.cache = cache
        self.default_chunk_size = default_chunk_size
        self._commit = commit
        self._sealing_slots = trio.Semaphore(max_sealing)
        self._limiter = trio.CapacityLimiter(max(2, max_sealing))
        self.max_buffers = max_buffers
        self.nursery: trio.Nursery | None = None
        self.open_files: dict[bytes, OpenFile] = {}
        self._fetching: dict[bytes, trio.Event] = {}
        # A swarm mount's way to chunks not stored here: ``fetch(chunk_id, hints)`` returns
        # verified plaintext (hints: node IDs likely to hold it) or raises NamespaceError.
        self.fetch: Callable[[bytes, tuple[bytes, ...]], Awaitable[bytes]] | None = None
        # Told the ID of every chunk sealed here (the swarm places it on other nodes).
        self.on_sealed: Callable[[bytes], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def load(self, row: ObjectRow) -> OpenFile:
        """The OpenFile for ``row``, shared if already open."""
        of = self.open_files.get(row.obj)
        if of is None:
            of = OpenFile(
                obj=row.obj,
                size=row.size,
                chunk_size=row.chunk_size or self.default_chunk_size,
                ids=row.chunk_list(),
                base=(row.content_ts, row.content_node),
                mtime=row.mtime,
            )
            self.open_files[row.obj] = of
        return of

    def release(self, of: OpenFile) -> None:
        """Forget ``of`` once nothing holds it (call after a final flush)."""
        if of.handles <= 0 and not of.dirty and not of.buffers and not of.pending:
            self.open_files.pop(of.obj, None)

    # -- reading -------------------------------------------------------------------------------

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
            plain = await self._plaintext(of, index)
            if start + n == cs or start == 0:
                self._prefetch(of, index + 1)
            piece = bytes(plain[start : start + n]) if plain is not None else b""
            if len(piece) < n:
                piece += bytes(n - len(piece))
            pieces.append(piece)
            pos += n
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _plaintext(self, of: OpenFile, index: int) -> bytes | bytearray | None:
        buf = of.buffers.get(index)
        if buf is not None:
            return buf
        sealing = of.sealing.get(index)
        if sealing is not None:
            return sealing
        chunk_id = of.ids[index] if index < len(of.ids) else None
        if chunk_id is None:
            return None
        return await self.get_chunk(chunk_id, (of.base[1],))

    async def get_chunk(self, chunk_id: bytes, hints: tuple[bytes, ...] = ()) -> bytes:
        """Plaintext of a chunk (cached): from the local store, else (a swarm mount) from the
        swarm via ``fetch`` with ``hints``; EIO if no one has it or it fails to verify.

        Concurrent calls for one chunk share one fetch.
        """
        data = self.cache.get(chunk_id)
        if data is not None:
            return data
        waiting = self._fetching.get(chunk_id)
        if waiting is not None:
            await waiting.wait()
            data = self.cache.get(chunk_id)
            if data is not None:
                return data
        done = self._fetching[chunk_id] = trio.Event()
        try:
            try:
                data = await trio.to_thread.run_sync(
                    self.store.get, chunk_id, limiter=self._limiter
                )
            except ChunkMissing:
                if self.fetch is None:
                    raise
                data = await self.fetch(chunk_id, hints)
        except ChunkError as exc:
            log.error("read failed: %s", exc)
            raise NamespaceError(errno.EIO, str(exc)) from exc
        finally:
            # After a failed fetch, several waiters may each retry and replace the entry;
            # remove only our own.
            if self._fetching.get(chunk_id) is done:
                del self._fetching[chunk_id]
            done.set()
        self.cache.put(chunk_id, data)
        return data

    def _prefetch(self, of: OpenFile, index: int) -> None:
        """Start fetching chunk ``index`` in the background (sequential read-ahead)."""
        if self.nursery is None or index >= len(of.ids) or index in of.buffers:
            return
        chunk_id = of.ids[index]
        if chunk_id is None or chunk_id in self._fetching or self.cache.get(chunk_id) is not None:
            return
        self.nursery.start_soon(self._prefetch_one, chunk_id, (of.base[1],))

    async def _prefetch_one(self, chunk_id: bytes, hints: tuple[bytes, ...]) -> None:
        try:
            await self.get_chunk(chunk_id, hints)
        except NamespaceError:
            pass  # the reader that needs it will get the error

    # -- writing -------------------------------------------------------------------------------

    async def write(self, of: OpenFile, offset: int, data: bytes) -> int:
        if of.error is not None:
            raise self._take_error(of)
        _check_size(of, offset + len(data))
        cs = of.chunk_size
        view = memoryview(data)
        # Slots for every chunk this write touches exist before any is sealed: a sealer that
        # finishes early must find ``ids[index]`` to record its chunk id in.
        needed = -(-max(of.size, offset + len(view)) // cs)
        if len(of.ids) < needed:
            of.ids.extend([None] * (needed - len(of.ids)))
        pos = 0
        while pos < len(view):
            index, start = divmod(offset + pos, cs)
            n = min(cs - start, len(view) - pos)
            if n == cs and index not in of.buffers:
                # A whole chunk in one request: seal the request's bytes, no buffer round trip.
                whole = (
                    data
                    if n == len(view) and isinstance(data, bytes)
                    else bytes(view[pos : pos + n])
                )
                await self._seal_bytes(of, index, whole, cache=False)
                pos += n
                continue
            buf = of.buffers.get(index)
            if buf is None:
                buf = await self._open_buffer(of, index, whole=start == 0 and n == cs)
            if len(buf) < start:
                buf.extend(bytes(start - len(buf)))
            buf[start : start + n] = view[pos : pos + n]
            pos += n
            if start + n == cs:
                await self._seal_soon(of, index, cache=False)
        new_end = offset + len(view)
        if new_end > of.size:
            of.size = new_end
        needed = -(-of.size // cs)
        if len(of.ids) < needed:
            of.ids.extend([None] * (needed - len(of.ids)))
        of.mtime = time.time_ns()
        of.dirty = True
        if len(of.buffers) > self.max_buffers:
            await self._seal_soon(of, min(of.buffers))
        return len(view)

    async def _open_buffer(self, of: OpenFile, index: int, *, whole: bool) -> bytearray:
        if whole:
            buf = bytearray()
        else:
            plain = await self._plaintext(of, index)
            buf = bytearray(plain) if plain is not None else bytearray()
        of.buffers[index] = buf
        return buf

    async def truncate(self, of: OpenFile, size: int) -> None:
        _check_size(of, size)
        cs = of.chunk_size
        if size < of.size:
            keep = -(-size // cs)
            for index in [i for i in of.buffers if i >= keep]:
                del of.buffers[index]
            for index in [i for i in of.sealing if i >= keep]:
                del of.sealing[index]
            del of.ids[keep:]
            tail = size - (keep - 1) * cs if keep else 0
            if keep and tail < cs:
                index = keep - 1
                buf = of.buffers.get(index)
                if buf is None and (index in of.sealing or of.ids[index] is not None):
                    buf = await self._open_buffer(of, index, whole=False)
                if buf is not None:
                    del buf[tail:]
        else:
            needed = -(-size // cs)
            of.ids.extend([None] * (needed - len(of.ids)))
        of.size = size
        if size == 0 and not of.ids:
            of.chunk_size = self.default_chunk_size
        of.mtime = time.time_ns()
        of.dirty = True

    async def flush(self, of: OpenFile) -> None:
        """Seal every buffer, wait for all sealing, commit the version if it changed."""
        while of.buffers or of.pending:
            for index in sorted(of.buffers):
                buf = of.buffers.get(index)
                if buf is not None and len(buf) <= THREAD_THRESHOLD:
                    self._seal_inline(of, index, buf)
                elif buf is not None:
                    await self._seal_soon(of, index)
            if of.pending:  # inline seals leave nothing to wait for (and no checkpoint)
                await of.idle.wait()
        if of.error is not None:
            raise self._take_error(of)
        if of.dirty:
            of.dirty = False
            try:
                of.base = self._commit(of)
            except BaseException:
                of.dirty = True
                raise

    def content_blob(self, of: OpenFile) -> bytes:
        return pack_chunks(of.ids)

    # -- sealing -------------------------------------------------------------------------------

    async def _seal_soon(self, of: OpenFile, index: int, *, cache: bool = True) -> None:
        """Hand buffer ``index`` to a background sealer (waits for a free slot).

        ``cache``: keep the plaintext in the chunk cache. Chunks completed by sequential
        writing are not (streaming writes would evict everything read, and retaining every
        written chunk costs a fresh page of memory per 4 KiB written); partial chunks sealed
        at flush are, since the next write to the file likely modifies them again.
        """
        await self._sealing_slots.acquire()
        buf = of.buffers.pop(index, None)
        if buf is None:
            self._sealing_slots.release()
            return
        self._start_seal(of, index, bytes(buf), cache)

    async def _seal_bytes(self, of: OpenFile, index: int, data: bytes, *, cache: bool) -> None:
        """Seal ``data`` as chunk ``index`` in the background (waits for a free slot)."""
        await self._sealing_slots.acquire()
        of.buffers.pop(index, None)
        self._start_seal(of, index, data, cache)

    def _start_seal(self, of: OpenFile, index: int, data: bytes, cache: bool) -> None:
        """Start sealing; the caller holds one sealing slot, which the sealer releases."""
        of.sealing[index] = data
        if of.pending == 0:
            of.idle = trio.Event()
        of.pending += 1
        assert self.nursery is not None, "FileContents.nursery must be set by the service"
        self.nursery.start_soon(self._seal, of, index, data, cache)

    async def _seal(self, of: OpenFile, index: int, data: bytes, cache: bool) -> None:
        try:
            if len(data) > THREAD_THRESHOLD:
                chunk_id = await trio.to_thread.run_sync(
                    self._hash_and_store, data, limiter=self._limiter
                )
            else:
                chunk_id = self._hash_and_store(data)
            if cache:
                self.cache.put(chunk_id, data)
            if self.on_sealed is not None:
                self.on_sealed(chunk_id)
            if of.sealing.get(index) is data:
                del of.sealing[index]
                if index < len(of.ids):
                    of.ids[index] = chunk_id
        except OSError as exc:
            log.error("storing a chunk failed: %s", exc)
            of.error = exc
            of.sealing.pop(index, None)
        finally:
            self._sealing_slots.release()
            of.pending -= 1
            if of.pending == 0:
                of.idle.set()

    def _seal_inline(self, of: OpenFile, index: int, buf: bytearray) -> None:
        """Seal a small buffer on this thread (cheaper than a task and a thread hop)."""
        del of.buffers[index]
        of.sealing.pop(index, None)  # an older seal in flight must not overwrite this one
        data = bytes(buf)
        try:
            chunk_id = self._hash_and_store(data)
        except OSError as exc:
            log.error("storing a chunk failed: %s", exc)
            of.error = exc
            return
        self.cache.put(chunk_id, data)
        if self.on_sealed is not None:
            self.on_sealed(chunk_id)
        if index < len(of.ids):
            of.ids[index] = chunk_id

    def _hash_and_store(self, data: bytes) -> bytes:
        chunk_id = chunk_id_of(data)
        self.store.put(chunk_id, data)
        return chunk_id

    @staticmethod
    def _take_error(of: OpenFile) -> NamespaceError:
        exc, of.error = of.error, None
        return NamespaceError(exc.errno if exc and exc.errno else errno.EIO, str(exc))
