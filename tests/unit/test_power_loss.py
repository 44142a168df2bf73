"""Power loss at every step of small fsyncs: what a restart recovers.

A small fsync makes its blocks and ops durable with one write to the fsync journal
(``dhtfs.store.syncjournal``), nothing else. So after power loss the disk holds: the state
of the last durable point (the database and block files as a clean stop left them), and the
fsync journal's file as far as the writes of this run reached it, over what the last lap
left there. The test makes that disk for every cut: at every record boundary and inside
every record of the journal, with the block files written since the durable point gone (never
fsynced), and checks that a restart shows every fsync whose records were complete before
the cut, exactly, and never anything but an fsynced state of the file (the next fsync's
content may show up once its records are in: it was under way). A second file, written
and never fsynced, may show any state it had, but always readable: an fsync of one file
journals the ops of the other too, and so the blocks they name.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyfuse3
import trio

from dhtfs.base.config import Config
from dhtfs.runtime.localfs import LocalFilesystem, open_state
from dhtfs.store.syncjournal import HEADER, decode

ROOT = pyfuse3.ROOT_INODE
CTX = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)
CS = 4096
FSYNCS = 4


async def with_fs(state: Path, work) -> object:
    """Open ``state`` in-process, run ``await work(lfs)``, close cleanly (a durable point)."""
    lfs = open_state(Config(state=state, chunk_size=CS))
    try:
        async with trio.open_nursery() as nursery:
            lfs.contents.nursery = nursery
            result = await work(lfs)
            nursery.cancel_scope.cancel()
    finally:
        lfs.close()
    return result


async def read_file(lfs: LocalFilesystem, name: bytes = b"f") -> bytes:
    ops = lfs.operations
    attrs = await ops.lookup(ROOT, name, CTX)
    info = await ops.open(attrs.st_ino, os.O_RDONLY, CTX)
    try:
        return await ops.read(info.fh, 0, attrs.st_size + 1)
    finally:
        await ops.release(info.fh)


def cut_points(journal: bytes, fsync_ends: list[int]) -> list[int]:
    """Every record boundary, and inside every record: half its header, its header without
    the payload, half of it, all but its last byte."""
    cuts = {0, *fsync_ends}
    pos = 0
    lap_records = decode(journal)[1]
    for _kind, body in lap_records:
        size = HEADER.size + 1 + len(body)
        cuts.update({pos + HEADER.size // 2, pos + HEADER.size, pos + size // 2,
                     pos + size - 1, pos + size})
        pos += size
    return sorted(c for c in cuts if c <= len(journal))


def test_power_loss_at_every_step_of_small_fsyncs(tmp_path: Path) -> None:
    state, base = tmp_path / "state", tmp_path / "base"
    rng = random.Random(5)
    first = rng.randbytes(4 * CS)

    async def make_base(lfs: LocalFilesystem) -> None:
        ops = lfs.operations
        info, _attrs = await ops.create(ROOT, b"f", 0o644, os.O_RDWR, CTX)
        await ops.write(info.fh, 0, first)
        await ops.fsync(info.fh, False)
        await ops.release(info.fh)
        info, _attrs = await ops.create(ROOT, b"g", 0o644, os.O_RDWR, CTX)
        await ops.release(info.fh)

    trio.run(with_fs, state, make_base)
    shutil.copytree(state, base)  # the disk at the durable point a clean stop made

    models = [first]
    other_models = [b""]
    fsync_ends: list[int] = []

    async def small_fsyncs(lfs: LocalFilesystem) -> bytes:
        ops = lfs.operations
        journal = lfs.contents.sync_journal
        assert journal is not None
        attrs = await ops.lookup(ROOT, b"f", CTX)
        info = await ops.open(attrs.st_ino, os.O_RDWR, CTX)
        other = await ops.open((await ops.lookup(ROOT, b"g", CTX)).st_ino, os.O_RDWR, CTX)
        model, other_model = bytearray(first), bytearray()
        for _ in range(FSYNCS):
            data = rng.randbytes(2048)
            await ops.write(other.fh, len(other_model), data)  # never fsynced
            await ops.flush(other.fh)
            other_model += data
            other_models.append(bytes(other_model))
            off = rng.randrange(0, 5 * CS)
            data = rng.randbytes(rng.choice([100, CS, 2 * CS + 7]))
            await ops.write(info.fh, off, data)
            model.extend(bytes(max(0, off - len(model))))
            model[off : off + len(data)] = data
            before = journal.size
            await ops.fsync(info.fh, False)
            assert journal.size > before, "the fsync went to the journal"
            models.append(bytes(model))
            fsync_ends.append(journal.size)
        # Power fails here: no checkpoint ran (the mount's loop does them), nothing is closed.
        return (lfs.config.state_dir / "sync.journal").read_bytes()

    async def run_and_lose_power() -> bytes:
        lfs = open_state(Config(state=state, chunk_size=CS))
        async with trio.open_nursery() as nursery:
            lfs.contents.nursery = nursery
            written = await small_fsyncs(lfs)
            nursery.cancel_scope.cancel()
        lfs.namespace.db.close()  # rolls back what was not committed, as power loss does
        os.close(lfs.lock_fd)
        return written

    written = trio.run(run_and_lose_power)
    assert len(fsync_ends) == FSYNCS and fsync_ends[-1] <= len(written)
    new_blocks = {p.relative_to(state) for p in (state / "chunks").rglob("*") if p.is_file()}
    new_blocks -= {p.relative_to(base) for p in (base / "chunks").rglob("*") if p.is_file()}
    assert new_blocks, "the small writes stored new block files (lost with the power)"
    old_lap = (base / "sync.journal").read_bytes()

    for i, cut in enumerate(cut_points(written[: fsync_ends[-1]], fsync_ends)):
        disk = tmp_path / f"cut{i}"
        shutil.copytree(base, disk)
        # This run's lap reached the file up to ``cut``; past it, the last lap's bytes remain.
        (disk / "sync.journal").write_bytes(written[:cut] + old_lap[cut:])
        done = sum(1 for end in fsync_ends if end <= cut)

        async def check(lfs: LocalFilesystem, done: int = done, cut: int = cut) -> None:
            content = await read_file(lfs)
            allowed = models[done : done + 2]
            assert content in allowed, (
                f"cut at byte {cut}: {done} fsyncs complete, yet the file is not their state")
            assert await read_file(lfs, b"g") in other_models, f"cut at byte {cut}"
            for block in set(lfs.namespace.linked_blocks()):
                lfs.store.get(block)  # every block the tree names is there and opens

        trio.run(with_fs, disk, check)
        if cut in fsync_ends:  # and the restart made it durable: a second one shows the same
            trio.run(with_fs, disk, check)
        shutil.rmtree(disk)
