"""A full disk is an ordinary error: real mounts whose state directory is a small ext4
filesystem made by the test (a loop-mounted image).

- every byte ``write()`` acknowledged reads back exactly, before and after a remount; the
  first ENOSPC comes from ``write()``; nothing past the acknowledged bytes shows (no zeros);
- when storing fails after the write was acknowledged (the disk filled behind dhtfs's back),
  the file keeps its previous version, never a size over bytes that were not stored;
- df on the mount tells what can be written;
- once space is freed, writes work again without a remount.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.mounting import Mount
from testkit.smalldisk import fill_until_full, make_small_fs, remove_small_fs

pytestmark = pytest.mark.mount

MiB = 1024 * 1024
@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB ext4 filesystem to hold a mount's state directory (unmounted afterwards)."""
    where = tmp_path / "state"
    image = tmp_path / "state.img"
    make_small_fs(image, where)
    try:
        yield where
    finally:
        remove_small_fs(image, where)


@pytest.fixture
def full_mount(tmp_path: Path, small_state: Path) -> Iterator[Mount]:
    m = Mount(tmp_path / "mnt", small_state)
    m.start()
    try:
        yield m
    finally:
        m.close()


def pattern(seed: int, n: int) -> bytes:
    """``n`` bytes no other seed gives (so no two blocks dedup)."""
    return random.Random(seed).randbytes(n)


def write_until_full(path: Path, total: int, step: int = MiB) -> tuple[bytes, OSError | None]:
    """Write ``total`` bytes in ``step`` writes until one fails; returns what ``write()``
    acknowledged and the error that ended it (and the error close gave, if any, second)."""
    acked = bytearray()
    error: OSError | None = None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(total // step):
            data = pattern(i, step)
            try:
                n = os.write(fd, data)
            except OSError as exc:
                error = exc
                break
            acked += data[:n]
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return bytes(acked), error


def backing_avail(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def assert_content(path: Path, acked: bytes) -> None:
    data = path.read_bytes()
    assert len(data) == len(acked), (len(data), len(acked))
    if data != acked:
        first = next(i for i in range(len(data)) if data[i] != acked[i])
        zeros = data[first : first + 4096] == bytes(len(data[first : first + 4096]))
        pytest.fail(f"content differs from the acknowledged bytes at {first} "
                    f"({'zeros' if zeros else 'other bytes'}) of {len(data)}")


def test_acknowledged_bytes_survive_a_full_disk(full_mount: Mount, small_state: Path):
    """100 MiB in 1 MiB writes on a 64 MiB disk: ENOSPC from write(), and exactly the
    acknowledged bytes in the file, before and after a remount."""
    target = full_mount.mountpoint / "big"
    acked, error = write_until_full(target, 100 * MiB)
    assert error is not None and error.errno == errno.ENOSPC, error
    assert len(acked) > 16 * MiB, "refused far too early"
    assert_content(target, acked)
    full_mount.stop()
    full_mount.start()
    assert_content(full_mount.mountpoint / "big", acked)


def test_storing_fails_after_write_acknowledged(full_mount: Mount, small_state: Path):
    """Bytes acknowledged into a buffer, then the disk fills behind dhtfs's back: close
    fails with ENOSPC and the file keeps its previous version (no size over lost bytes);
    the mount keeps working once space is back."""
    target = full_mount.mountpoint / "f"
    before = pattern(99, 100_000)
    target.write_bytes(before)
    fd = os.open(target, os.O_WRONLY)
    try:
        assert os.write(fd, pattern(1, 512 * 1024)) == 512 * 1024  # half a chunk: buffered
        assert os.fstat(fd).st_size == 512 * 1024  # the kernel now holds that size
        ballast = small_state / "ballast"
        exc = fill_until_full(ballast, MiB)  # fill the disk to the last block
        assert exc.errno == errno.ENOSPC
        closed: OSError | None = None
    finally:
        try:
            os.close(fd)
            closed = None
        except OSError as exc:
            closed = exc
    data = target.read_bytes()
    assert target.stat().st_size == len(data)  # the kernel was told (its attributes live 10 s)
    if closed is None:  # stored all the same (it fit): exactly what was written
        assert data[:512 * 1024] == pattern(1, 512 * 1024)
        assert data[512 * 1024:] == before[512 * 1024:]
    else:
        assert closed.errno == errno.ENOSPC, closed
        assert data == before, f"file is {len(data)} bytes, not its previous version"
    ballast.unlink()
    again = full_mount.mountpoint / "after"
    again.write_bytes(pattern(7, 3 * MiB))
    assert again.read_bytes() == pattern(7, 3 * MiB)
    full_mount.stop()
    full_mount.start()
    assert (full_mount.mountpoint / "f").read_bytes() == data
    assert (full_mount.mountpoint / "after").read_bytes() == pattern(7, 3 * MiB)


def mount_avail(m: Mount) -> int:
    st = os.statvfs(m.mountpoint)
    return st.f_bavail * st.f_frsize


def test_df_tells_what_can_be_written(full_mount: Mount, small_state: Path):
    """df on the mount: at most the backing disk's free space; bytes written and not yet
    stored already count as used; writes take about what it says, never more."""
    said = mount_avail(full_mount)
    real = backing_avail(small_state)
    assert real - 16 * MiB <= said <= real, (said, real)
    fd = os.open(full_mount.mountpoint / "sparse", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(16):  # half of each of 16 chunks: held in write buffers, not stored
            os.pwrite(fd, pattern(i, 512 * 1024), i * MiB)
        held = mount_avail(full_mount)
        assert held <= said - 7 * MiB, f"df shows {said - held} bytes used by 8 MiB written"
    finally:
        os.close(fd)
    stored = mount_avail(full_mount)
    assert abs(stored - held) < 2 * MiB, (stored, held)
    acked, error = write_until_full(full_mount.mountpoint / "big", 100 * MiB)
    assert error is not None and error.errno == errno.ENOSPC
    assert stored - 8 * MiB <= len(acked) <= stored + MiB, (len(acked), stored)
    assert mount_avail(full_mount) < 2 * MiB, "df still shows room after ENOSPC"


def test_space_held_for_writes_is_given_back(full_mount: Mount, small_state: Path):
    """Writes of every shape (sequential, sparse, overwrites, appends, truncated while
    buffered, unlinked while open), once closed, hold nothing: df on the mount is the backing
    disk's free space less the metadata margin (8 MiB) again."""
    m = full_mount.mountpoint
    (m / "seq").write_bytes(pattern(1, 3 * MiB + 17))
    fd = os.open(m / "sparse", os.O_RDWR | os.O_CREAT, 0o644)
    for i in range(6):
        os.pwrite(fd, pattern(10 + i, 100_000), i * MiB + 4096)
    os.pwrite(fd, pattern(20, 50_000), 2 * MiB + 10_000)  # over buffered bytes
    os.ftruncate(fd, 3 * MiB)  # drops buffered ranges past it
    os.close(fd)
    fd = os.open(m / "app", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for i in range(50):
        os.write(fd, pattern(100 + i, 3000))
    os.close(fd)
    fd = os.open(m / "gone", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, pattern(200, 700_000))
    os.unlink(m / "gone")
    os.close(fd)
    fd = os.open(m / "zero", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, pattern(300, 900_000))
    os.ftruncate(fd, 0)
    os.close(fd)
    held = backing_avail(small_state) - mount_avail(full_mount)
    assert 8 * MiB - 64 * 1024 <= held <= 8 * MiB + 64 * 1024, held


def test_writes_work_again_once_space_is_freed(full_mount: Mount, small_state: Path):
    """A ballast file leaves a few MiB; the writer fills them (ENOSPC at write, exactly the
    acknowledged bytes kept); the ballast goes; new writes and appends work, no remount."""
    ballast = small_state / "ballast"
    with open(ballast, "wb") as fh:
        fh.write(b"\xff" * (backing_avail(small_state) - 20 * MiB))
    first = full_mount.mountpoint / "first"
    acked, error = write_until_full(first, 40 * MiB)
    assert error is not None and error.errno == errno.ENOSPC, error
    assert_content(first, acked)
    ballast.unlink()
    second = full_mount.mountpoint / "second"
    second.write_bytes(pattern(1000, 30 * MiB))
    with open(first, "ab") as fh:
        fh.write(pattern(1001, 2 * MiB))
    assert second.read_bytes() == pattern(1000, 30 * MiB)
    assert_content(first, acked + pattern(1001, 2 * MiB))


def test_metadata_on_a_full_disk_is_refused_not_lost(full_mount: Mount, small_state: Path):
    """The disk filled to its last block behind dhtfs's back: creating names and files fails
    with ENOSPC (never EIO), the mount lives on, and once space is back every change works;
    what was acknowledged survives a remount."""
    ballast = small_state / "ballast"
    exc = fill_until_full(ballast, MiB)
    assert exc.errno == errno.ENOSPC
    exc = fill_until_full(small_state / "ballast2", 4096)  # the last partial MiB too
    assert exc.errno == errno.ENOSPC
    refused = 0
    acked: dict[str, bytes | None] = {}  # what each call that succeeded left: None, a dir
    for i in range(40):
        try:
            (full_mount.mountpoint / f"d{i}").mkdir()
            acked[f"d{i}"] = None
            fd = os.open(full_mount.mountpoint / f"d{i}" / "f", os.O_WRONLY | os.O_CREAT)
            acked[f"d{i}/f"] = b""
            try:
                os.write(fd, pattern(i, 20_000))
                acked[f"d{i}/f"] = pattern(i, 20_000)
            finally:
                os.close(fd)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            refused += 1
    assert refused, "nothing was refused on a full disk"
    assert os.statvfs(full_mount.mountpoint).f_bavail == 0
    ballast.unlink()
    (small_state / "ballast2").unlink()
    (full_mount.mountpoint / "later").mkdir()
    (full_mount.mountpoint / "later" / "f").write_bytes(pattern(500, 2 * MiB))
    full_mount.stop()
    full_mount.start()
    assert (full_mount.mountpoint / "later" / "f").read_bytes() == pattern(500, 2 * MiB)
    for name, content in acked.items():  # acknowledged before the space came back
        path = full_mount.mountpoint / name
        if content is None:
            assert path.is_dir(), name
        else:
            assert path.read_bytes() == content, name


def fill_up(where: Path) -> Path:
    """A ballast file that takes every free block of ``where``'s filesystem."""
    ballast = where / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for step in (MiB, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\xff" * step)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (it writes short when it fills mid-write, as ext4 seldom does)."""
    where = tmp_path / "tiny"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def test_journal_and_id_sets_never_tear_on_a_full_disk(tiny_tmpfs: Path):
    """The op journal and the replication backlog / cache index files on a disk that fills
    up: a failed append leaves no partial record (replay and reload see every whole one),
    nothing raises from an id set, and both catch up once there is room."""
    from dhtfs.meta.journal import OpJournal
    from dhtfs.store.idset import IdSetFile

    journal = OpJournal(tiny_tmpfs / "ops.journal")
    ids = IdSetFile(tiny_tmpfs / "replication.backlog")
    written = 0
    for i in range(3):  # a block of the journal is partly filled: the disk fills mid-record
        journal.add(pattern(i, 1000))
        journal.write()
        written += 1
    ballast = fill_up(tiny_tmpfs)
    with pytest.raises(OSError) as failed:
        for i in range(3, 100_000):  # past the room the journal keeps allocated
            journal.add(pattern(i, 1000))
            journal.write()
            written += 1
    assert failed.value.errno == errno.ENOSPC
    assert [len(r) for r in journal.records()] == [1000] * written
    members = [pattern(10_000 + i, 32) for i in range(2000)]
    for cid in members:  # fills what is left, then keeps the rest in memory
        ids.add(cid)
    ids.discard(members[0])
    assert IdSetFile(tiny_tmpfs / "replication.backlog").members.keys() <= set(members)
    ballast.unlink()
    journal.write()  # the op that failed, now that there is room
    assert len(journal.records()) == written + 1
    ids.add(pattern(99_999, 32))
    ids.close()  # with room again, the whole set is written back (now, or at the latest here)
    journal.close()
    again = IdSetFile(tiny_tmpfs / "replication.backlog")
    assert list(again) == [*members[1:], pattern(99_999, 32)]
