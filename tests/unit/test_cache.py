"""The disk cache's eviction rules (dhtfs.store.diskcache) over a dict standing in for the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhtfs.store.diskcache import INDEX_NAME, DiskCache
from dhtfs.store.idset import IdSetFile


def cid(i: int) -> bytes:
    return i.to_bytes(32, "big")


class Store:
    def __init__(self) -> None:
        self.files: dict[bytes, int] = {}

    def size_of(self, c: bytes) -> int | None:
        return self.files.get(c)

    def remove(self, c: bytes) -> bool:
        return self.files.pop(c, None) is not None


def make(tmp_path: Path, store: Store, capacity: int, *, responsible=(), pending=()) -> DiskCache:
    return DiskCache(tmp_path, capacity, size_of=store.size_of, remove=store.remove,
                      responsible=lambda c: c in responsible, pending=lambda c: c in pending)


async def test_evicts_least_recently_used_down_to_low_water(tmp_path: Path) -> None:
    store = Store()
    cache = make(tmp_path, store, 1000)
    for i in range(10):
        store.files[cid(i)] = 100
        cache.add(cid(i))
    cache.touch(cid(0))  # now the most recently used
    store.files[cid(10)] = 100
    cache.add(cid(10))
    assert cache.bytes == 1100
    assert await cache.evict() == 2  # down to 900 = LOW_WATER * capacity
    assert cid(0) in store.files and cid(10) in store.files
    assert cid(1) not in store.files and cid(2) not in store.files
    assert cache.bytes == 900 == sum(store.files.values())


async def test_responsible_blocks_are_promoted_and_pending_ones_skipped(tmp_path: Path) -> None:
    store = Store()
    responsible = {cid(0)}
    pending = {cid(1)}
    cache = make(tmp_path, store, 250, responsible=responsible, pending=pending)
    for i in range(4):
        store.files[cid(i)] = 100
        cache.add(cid(i))
    await cache.evict()
    assert cid(0) in store.files and cid(0) not in cache  # promoted: kept, out of the cache
    assert cid(1) in store.files and cid(1) in cache  # waiting for replication: kept
    assert cache.promoted == 1
    assert cache.bytes <= 250
    # Nothing but protected blocks left: eviction stops instead of spinning.
    assert cid(2) not in store.files
    assert await cache.evict() == 0


async def test_membership_survives_a_restart_and_drops_collected(tmp_path: Path) -> None:
    store = Store()
    cache = make(tmp_path, store, 10_000)
    for i in range(3):
        store.files[cid(i)] = 100
        cache.add(cid(i))
    cache.forget(cid(2))  # e.g. now held for the swarm
    del store.files[cid(1)]  # collected while the node was down
    again = make(tmp_path, store, 10_000)
    assert list(again.lru) == [cid(0)]
    assert again.bytes == 100
    assert list(IdSetFile(tmp_path / INDEX_NAME)) == [cid(0)]


@pytest.mark.parametrize("torn", [1, 32])
def test_idset_drops_a_torn_record(tmp_path: Path, torn: int) -> None:
    s = IdSetFile(tmp_path / "set")
    s.add(cid(1))
    s.add(cid(2))
    s.discard(cid(1))
    s.close()
    with open(tmp_path / "set", "ab") as f:
        f.write(b"+" + cid(3)[: torn - 1])
    assert list(IdSetFile(tmp_path / "set")) == [cid(2)]
