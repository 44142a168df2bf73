"""File contents as extents, driven through ``Operations`` (no kernel) against a byte model:
random writes, truncates, flushes and compactions, with several handles and a reopen."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import pyfuse3
import pytest

from dhtfs.fs.compaction import Compactor
from dhtfs.meta.ops import decode_op, encode_op
from dhtfs.runtime.localfs import LocalFilesystem
from tests.unit.test_operations import CTX, SIZE_FIELDS, check_invariants, create

ROOT = pyfuse3.ROOT_INODE
CS = 4096


async def read_all(fs: LocalFilesystem, fh: int, size: int) -> bytes:
    return await fs.operations.read(fh, 0, size + 100)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_writes_truncates_and_compactions_match_a_model(
    fs: LocalFilesystem, seed: int
) -> None:
    rng = random.Random(seed)
    ops = fs.operations
    compactor = Compactor(fs.tree, fs.contents, max_pieces=3)
    ops.on_content = compactor.changed
    fh, ino = await create(fs, ROOT, b"f")
    other = (await ops.open(ino, os.O_RDWR, CTX)).fh
    obj = fs.inodes.obj_of(ino)
    model = bytearray()
    for step in range(400):
        roll = rng.random()
        handle = fh if rng.random() < 0.7 else other
        if roll < 0.6:
            off = rng.randrange(0, 12 * CS)
            data = rng.randbytes(rng.choice([1, 100, 4096, CS + 7, 3 * CS]))
            assert await ops.write(handle, off, data) == len(data)
            if len(model) < off:
                model.extend(bytes(off - len(model)))
            model[off : off + len(data)] = data
        elif roll < 0.72:
            size = rng.randrange(0, 14 * CS)
            await ops.setattr(ino, SimpleNamespace(st_size=size), SIZE_FIELDS, handle, CTX)
            del model[size:]
            model.extend(bytes(size - len(model)))
        elif roll < 0.85:
            await ops.flush(handle)
        elif roll < 0.92:
            await ops.flush(handle)
            await compactor.compact(obj, set(range(14)))
        else:
            off = rng.randrange(0, 14 * CS)
            n = rng.randrange(1, 3 * CS)
            assert await ops.read(handle, off, n) == bytes(model[off : off + n]), step
        if step % 50 == 0:
            assert await read_all(fs, fh, len(model)) == bytes(model), step
            assert (await ops.getattr(ino)).st_size == len(model)
    await ops.release(fh)
    await ops.release(other)
    fresh = (await ops.open(ino, os.O_RDONLY, CTX)).fh
    assert await read_all(fs, fresh, len(model)) == bytes(model)
    await ops.release(fresh)
    assert compactor.compacted > 0
    for _, pieces in fs.namespace.extents(obj):
        assert pieces and all(p[0] + p[1] <= CS for p in pieces)
    check_invariants(fs)


async def test_a_small_write_into_a_big_file_makes_a_small_op(fs: LocalFilesystem) -> None:
    """The content op of a 4 KiB write into a 4 GiB file (4 KiB chunks: a million of them)
    carries the change, not the file: well under 1 KiB."""
    ops = fs.operations
    fh, ino = await create(fs, ROOT, b"big")
    await ops.setattr(ino, SimpleNamespace(st_size=4 << 30), SIZE_FIELDS, fh, CTX)
    for i in range(64):
        await ops.write(fh, i * (64 << 20), os.urandom(CS))
    await ops.release(fh)
    fh = (await ops.open(ino, os.O_RDWR, CTX)).fh
    await ops.write(fh, 3 << 30, os.urandom(CS))
    await ops.flush(fh)
    fs.namespace.write_back()
    body = fs.namespace.db.execute("SELECT body FROM oplog ORDER BY ts DESC LIMIT 1").fetchone()[0]
    op = decode_op(body)
    assert [c["c"] for c in op.changes] == ["content"]
    assert len(encode_op(op)) < 1024
    await ops.release(fh)
