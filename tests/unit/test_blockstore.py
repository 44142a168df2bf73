"""The encrypted block store and the master key: round trips, tampering, keys, modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtfs.base.errors import BlockCorrupt, BlockMissing, KeyFileError
from dhtfs.store.blockstore import BlockStore, block_id_of
from dhtfs.store.masterkey import MasterKey, load_master_key, verify_key_check


def store_in(tmp_path: Path, key: bytes | None = None) -> BlockStore:
    return BlockStore(tmp_path / "chunks", MasterKey(key or bytes(32), False, None))


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=70_000))
def test_round_trip_and_dedup(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    store = store_in(tmp_path_factory.mktemp("s"))
    cid = block_id_of(data)
    assert store.put_verified(cid, data) is True
    assert store.put_verified(cid, data) is False  # stored once
    assert store.get(cid) == data
    assert list(store.ids()) == [cid]


def test_on_disk_bytes_are_not_plaintext(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    data = b"PLAINTEXT-MARKER-" * 100
    cid = block_id_of(data)
    store.put(cid, data)
    blob = store.path_of(cid).read_bytes()
    assert b"PLAINTEXT-MARKER" not in blob
    assert stat.S_IMODE(store.path_of(cid).stat().st_mode) == 0o600


def test_tampered_block_is_corrupt_not_garbage(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    data = os.urandom(5000)
    cid = block_id_of(data)
    store.put(cid, data)
    path = store.path_of(cid)
    blob = bytearray(path.read_bytes())
    blob[100] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(BlockCorrupt):
        store.get(cid)


def test_block_file_renamed_to_another_id_fails(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    a, b = b"a" * 10, b"b" * 10
    store.put(block_id_of(a), a)
    other = store.path_of(block_id_of(b))
    other.parent.mkdir(exist_ok=True)
    os.replace(store.path_of(block_id_of(a)), other)
    with pytest.raises(BlockCorrupt):
        store.get(block_id_of(b))  # the block ID is the associated data


def test_wrong_key_cannot_read(tmp_path: Path) -> None:
    data = b"x" * 100
    store_in(tmp_path, bytes(32)).put(block_id_of(data), data)
    with pytest.raises(BlockCorrupt):
        store_in(tmp_path, b"\1" * 32).get(block_id_of(data))


def test_missing_block(tmp_path: Path) -> None:
    with pytest.raises(BlockMissing):
        store_in(tmp_path).get(bytes(32))


def test_put_verified_rejects_wrong_id(tmp_path: Path) -> None:
    with pytest.raises(BlockCorrupt):
        store_in(tmp_path).put_verified(bytes(32), b"not the preimage")


def test_key_file_created_0600_and_reloaded(tmp_path: Path) -> None:
    first = load_master_key("", tmp_path)
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    assert load_master_key("", tmp_path).key == first.key
    verify_key_check(first, tmp_path)
    verify_key_check(first, tmp_path)  # matches


def test_key_file_with_loose_mode_is_refused(tmp_path: Path) -> None:
    load_master_key("", tmp_path)
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_master_key("", tmp_path)


def test_wrong_key_for_state_dir_is_refused(tmp_path: Path) -> None:
    verify_key_check(load_master_key("", tmp_path), tmp_path)
    other = load_master_key(str(tmp_path / "other.key"), tmp_path)
    with pytest.raises(KeyFileError, match="does not match"):
        verify_key_check(other, tmp_path)


def test_ephemeral_key_is_never_written_and_discards_old_blocks(tmp_path: Path) -> None:
    key = load_master_key("ephemeral", tmp_path)
    assert key.ephemeral and not list(tmp_path.iterdir())
    store = BlockStore(tmp_path / "chunks", key)
    store.put(block_id_of(b"old"), b"old")
    again = BlockStore(tmp_path / "chunks", load_master_key("ephemeral", tmp_path))
    assert list(again.ids()) == []


def test_torn_block_file_is_replaced_by_the_next_put(tmp_path: Path) -> None:
    """A write cut short by a crash leaves a short file under the final name: a reader gets
    BlockCorrupt, and putting the same block again replaces it whole (no dedup against it)."""
    store = store_in(tmp_path)
    data = os.urandom(10_000)
    cid = block_id_of(data)
    assert store.put(cid, data) is True
    path = store.path_of(cid)
    with open(path, "r+b") as fh:
        fh.truncate(4096)
    with pytest.raises(BlockCorrupt):
        store.get(cid)
    assert store.put(cid, data) is True
    assert store.get(cid) == data
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    inode = path.stat().st_ino
    assert store.put(cid, data) is False  # a complete file: deduplicated, left alone
    assert path.stat().st_ino == inode


def test_durable_put_fsyncs_file_and_directory(tmp_path: Path, monkeypatch) -> None:
    """``put(durable=True)`` is ``put`` then ``sync``: the file and its directory fsynced,
    whether the block is new, already there (dedup) or replaces a torn file."""
    store = store_in(tmp_path)
    data = os.urandom(100_000)
    cid = block_id_of(data)
    synced: list[bool] = []  # one entry per fsync: is the target a directory?
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)),
                                                 real_fsync(fd))[1])
    assert store.put_verified(cid, data, durable=True) is True
    assert sorted(synced) == [False, True]
    synced.clear()
    assert store.put(cid, data, durable=True) is False
    assert sorted(synced) == [False, True]
    synced.clear()
    store.path_of(cid).write_bytes(store.path_of(cid).read_bytes()[:1000])  # torn
    assert store.put(cid, data, durable=True) is True
    assert sorted(synced) == [False, True]
    assert store.get(cid) == data
    synced.clear()
    other = os.urandom(1000)
    assert store.put(block_id_of(other), other) is True
    assert synced == []
