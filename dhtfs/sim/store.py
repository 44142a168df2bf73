"""A block store in memory, for the simulator: the same contract as ``BlockStore``
(``dhtfs.blocks.storage.BlockStorage``), no disk, no encryption (simulated nodes share one
process, and nothing leaves it)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from dhtfs.base.errors import BlockCorrupt, BlockMissing
from dhtfs.base.ids import sha256_id


class MemoryStore:
    """``has/get/put/put_verified/remove/ids`` over a dict. Invariant: every stored value hashes
    to its key, unless written by ``put`` (which, like ``BlockStore.put``, trusts the caller)."""

    __slots__ = ("_blocks",)

    root: Path | None = None
    """No files: the blocks live in memory."""

    def __init__(self) -> None:
        self._blocks: dict[bytes, bytes] = {}

    def has(self, block_id: bytes) -> bool:
        return block_id in self._blocks

    def get(self, block_id: bytes) -> bytes:
        try:
            return self._blocks[block_id]
        except KeyError:
            raise BlockMissing(block_id, "not stored on this node") from None

    def put(self, block_id: bytes, data: bytes) -> bool:
        if block_id in self._blocks:
            return False
        self._blocks[block_id] = bytes(data)
        return True

    def path_of(self, block_id: bytes) -> Path:
        """No block has a file here (``root`` is None)."""
        raise BlockMissing(block_id, "a memory store keeps no files")

    def put_verified(self, block_id: bytes, data: bytes, *, durable: bool = False) -> bool:
        """``durable`` changes nothing: memory is all there is."""
        if sha256_id(data) != block_id:
            raise BlockCorrupt(block_id, "content does not hash to its id")
        return self.put(block_id, data)

    def touch(self, block_id: bytes) -> bool:
        """Whether ``block_id`` is held (nothing is collected here: no grace to restart)."""
        return block_id in self._blocks

    def sync(self, block_ids: Iterable[bytes]) -> None:
        """Nothing to make durable."""

    def remove(self, block_id: bytes) -> bool:
        return self._blocks.pop(block_id, None) is not None

    def ids(self) -> Iterator[bytes]:
        return iter(list(self._blocks))

    def __len__(self) -> int:
        return len(self._blocks)
