"""What the gateway sends: a file version read through the mount's read path, or one block.

``FileVersion`` reads the committed version of a file that was current when the request was
resolved, through ``FileContents.read`` (``dhtfs.fs.reading``: the plaintext cache, the local
store, else the swarm's nearest provider, every block verified; sequential read-ahead of
``PREFETCH_CHUNKS`` chunks). It reads with an ``OpenFile`` of its own that no handle shares,
so it sees only committed content (what its ETag names), never another writer's buffers.

Invariants:
- never wrong bytes: before each read, within one chunk, the file's version is checked on
  the trio thread with no await between the check and the read's choice of pieces; a version
  that changed mid-body raises ``VersionChanged`` (the server then cuts the connection, so
  the client sees a short body, never a mix of two versions);
- bounded memory: at most ``READ_BYTES`` are read ahead of what the client took (the caller
  awaits each send before asking for more), plus the blocks the read path caches.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import trio

from dhtfs.fs.buffers import OpenFile
from dhtfs.fs.files import FileContents
from dhtfs.meta.schema import ObjectRow
from dhtfs.meta.tree import Tree

READ_BYTES = 1024 * 1024
HASH_INLINE = 64 * 1024


class VersionChanged(RuntimeError):
    """The file's content changed while its body was being sent."""


class FileVersion:
    """One version of a file (``row``), read in pieces (module docstring)."""

    def __init__(self, tree: Tree, contents: FileContents, row: ObjectRow,
                 default_chunk_size: int) -> None:
        self.tree = tree
        self.contents = contents
        self.row = row
        self.version = (row.content_ts, row.content_node, row.size)
        self._of = OpenFile(obj=row.obj, size=row.size,
                            chunk_size=row.chunk_size or default_chunk_size,
                            base=(row.content_ts, row.content_node), mtime=row.mtime)

    @property
    def size(self) -> int:
        return self.row.size

    def _check(self) -> None:
        now = self.tree.ns.get_object(self.row.obj)
        if now is None or (now.content_ts, now.content_node, now.size) != self.version:
            raise VersionChanged(f"{self.row.obj.hex()} changed while being sent")

    async def read(self, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes ``[first, last]`` (inclusive), in pieces of at most ``READ_BYTES`` that
        never cross a chunk boundary; VersionChanged as the module docstring says."""
        of = self._of
        cs = of.chunk_size
        pos, end = first, last + 1
        while pos < end:
            n = min(READ_BYTES, end - pos, cs - pos % cs)
            self._check()  # no await between this and the read choosing its pieces
            data = await self.contents.read(of, pos, n)
            self._check()
            if len(data) != n:
                raise VersionChanged("short read")
            yield data
            pos += n


class BlockBody:
    """One block's plaintext, checked against its ID (SHA-256) before it is served."""

    def __init__(self, block_id: bytes, data: bytes) -> None:
        self.block_id = block_id
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    @classmethod
    async def fetch(cls, contents: FileContents, block_id: bytes) -> BlockBody:
        """The block from the read path (cache, store, swarm), verified again here;
        ValueError if its bytes do not hash to its ID (never served)."""
        data = await contents.get_block(block_id)
        if len(data) <= HASH_INLINE:
            digest = hashlib.sha256(data).digest()
        else:
            digest = await trio.to_thread.run_sync(lambda: hashlib.sha256(data).digest())
        if digest != block_id:
            raise ValueError(f"block {block_id.hex()[:16]} does not hash to its ID")
        return cls(block_id, data)

    async def read(self, first: int, last: int) -> AsyncIterator[bytes]:
        view = memoryview(self.data)
        for pos in range(first, last + 1, READ_BYTES):
            yield bytes(view[pos : min(pos + READ_BYTES, last + 1)])
