"""Compaction: chunks that gathered many small pieces are rewritten as one block each.

Small writes leave a chunk as many pieces of small blocks; reading it then costs one block
fetch per piece, and blocks that later writes hid stay referenced. Once a file this node
changed has been left alone for ``idle_seconds``, each chunk the changes touched that holds
more than ``max_pieces`` pieces is read, its bytes from its first piece to its last stored as
one block, and the result committed as a ``compact`` op (``dhtfs.meta.versions``): the same
bytes, so the version keeps its ID and nobody's later write conflicts with it.

Invariants:
- a compact op is based on the version whose bytes it read; if the version changed before
  commit, nothing is committed (and on any node where it arrives too late it is skipped);
- the new block is fsynced before the op that references it is committed: compaction never
  makes durable data depend on a block that a power loss could take;
- only the node that made a change compacts after it (the origin), so nodes do not race;
- errors are logged and the chunk left as it was: compaction is an optimisation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from dhtfs.fs.files import FileContents
from dhtfs.meta.extents import Piece
from dhtfs.meta.tree import Tree

log = logging.getLogger(__name__)

MAX_PIECES = 16
"""A chunk with more pieces than this is compacted."""
OP_CHUNKS = 64
"""Chunks per compact op (an op stays a few KiB)."""


class Compactor:
    """Finds chunks to compact among recently changed files and compacts them, one file at a
    time, in the background. Lives on the trio thread."""

    def __init__(
        self,
        tree: Tree,
        contents: FileContents,
        *,
        max_pieces: int = MAX_PIECES,
        idle_seconds: float = 1.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.tree = tree
        self.contents = contents
        self.max_pieces = max_pieces
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._due: dict[bytes, tuple[float, set[int]]] = {}  # obj → (last change, chunks)
        self._wake = trio.Event()
        self.compacted = 0  # chunks rewritten (for tests and status)

    def changed(self, obj: bytes, change: dict[int, list[Piece]]) -> None:
        """This node committed ``change`` (chunk index → the pieces it laid) to ``obj``.

        Remembers the chunks now holding more than ``max_pieces`` pieces; a chunk the change
        rewrote from its start in one piece (sequential writing, small files) is not looked
        at, so a copy of many files costs nothing here."""
        ns = self.tree.ns
        crowded = {
            index
            for index, pieces in change.items()
            if not (len(pieces) == 1 and pieces[0][0] == 0)
            and len(ns.chunk_pieces(obj, index)) > self.max_pieces
        }
        entry = self._due.get(obj)
        if entry is not None:
            crowded |= entry[1]
        elif not crowded:
            return
        self._due[obj] = (self._clock(), crowded)
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._due:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            now = self._clock()
            obj, (since, indexes) = min(self._due.items(), key=lambda item: item[1][0])
            wait = since + self.idle_seconds - now
            of = self.contents.open_files.get(obj)
            if of is not None and (of.changing or of.new):
                wait = max(wait, self.idle_seconds)  # being written: later
            if wait > 0:
                with trio.move_on_after(wait):
                    await self._wake.wait()
                    self._wake = trio.Event()
                continue
            del self._due[obj]
            try:
                await self.compact(obj, indexes)
            except Exception as exc:  # an optimisation: never let it take the mount down
                log.warning("compacting a file failed (it stays as it was): %r", exc)

    async def compact(self, obj: bytes, indexes: set[int]) -> int:
        """Compact those of ``indexes`` that need it; returns how many chunks were."""
        ns = self.tree.ns
        row = ns.get_object(obj)
        if row is None or not row.chunk_size:
            return 0
        version = (row.content_ts, row.content_node)
        crowded = [
            (i, pieces)
            for i in sorted(indexes)
            if len(pieces := ns.chunk_pieces(obj, i)) > self.max_pieces
        ]
        done = 0
        for start in range(0, len(crowded), OP_CHUNKS):
            put: list[list[object]] = []
            blocks: list[bytes] = []
            for index, pieces in crowded[start : start + OP_CHUNKS]:
                offset, block = await self._rewrite(pieces, row.content_node)
                put.append([index * row.chunk_size + offset[0], offset[1], block, 0])
                blocks.append(block)
            await trio.to_thread.run_sync(self.contents.store.sync, blocks)
            row = ns.get_object(obj)
            if row is None or (row.content_ts, row.content_node) != version:
                return done  # changed meanwhile: its writer will queue it again
            self.tree.compact(obj, version, put)
            done += len(put)
        self.compacted += done
        if done:
            log.debug("compacted %d chunks of %s", done, obj.hex()[:12])
        return done

    async def _rewrite(self, pieces: list[Piece], writer: bytes) -> tuple[tuple[int, int], bytes]:
        """Store the bytes from the first piece to the end of the last as one block;
        returns ``((position, length), block)``."""
        lo = pieces[0][0]
        hi = pieces[-1][0] + pieces[-1][1]
        data = bytearray(hi - lo)
        for pos, length, block, boff in pieces:
            plain = await self.contents.get_block(block, (writer,))
            part = plain[boff : boff + length]
            data[pos - lo : pos - lo + len(part)] = part
        plain_bytes = bytes(data)
        block = await trio.to_thread.run_sync(self.contents.store_block, plain_bytes)
        self.contents.cache.put(block, plain_bytes)
        if self.contents.on_sealed is not None:
            self.contents.on_sealed(block, len(plain_bytes), plain_bytes)
        return (lo, hi - lo), block
