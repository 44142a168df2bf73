"""kill -9 of the daemon loses nothing that close() or fsync() acknowledged."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.env import MOUNT
from testkit.mounting import Mount, is_mounted
from testkit.shell import ENV, sh
from testkit.wait import wait_until

pytestmark = pytest.mark.mount

MIB = 1024 * 1024


def _expected_files() -> dict[str, bytes]:
    return {
        "empty": b"",
        "tiny": b"x",
        "small.txt": b"hello\n" * 100,
        "one-chunk": os.urandom(MIB),
        "multi": os.urandom(3 * MIB + 12345),
        "dir/nested/deep": os.urandom(200_000),
        "dir/dedup-a": b"\x07" * (2 * MIB),
        "dir/dedup-b": b"\x07" * (2 * MIB),
    }


def _write_closed(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _sigkill(m: Mount) -> None:
    """SIGKILL the daemon and leave its stale mount in place."""
    assert m.proc is not None
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(30)


def test_kill9_after_close_and_fsync(mount: Mount) -> None:
    """Files closed, renamed, fsynced (still open) or changed in place survive kill -9."""
    root = mount.mountpoint
    closed = _expected_files()
    _write_closed(root, closed)
    (root / "dir" / "renamed-from").write_bytes(b"rename me")
    os.rename(root / "dir" / "renamed-from", root / "renamed-to")
    closed["renamed-to"] = b"rename me"
    (root / "gone").write_bytes(b"deleted")
    (root / "gone").unlink()
    with open(root / "multi", "r+b") as fh:  # an in-place change to an existing file
        fh.seek(MIB - 3)
        fh.write(b"PATCHED")
    patched = bytearray(closed["multi"])
    patched[MIB - 3 : MIB + 4] = b"PATCHED"
    closed["multi"] = bytes(patched)
    os.truncate(root / "small.txt", 50)
    closed["small.txt"] = closed["small.txt"][:50]
    os.chmod(root / "tiny", 0o600)

    synced = {"synced-a": os.urandom(2 * MIB + 1), "synced-b": b"fsynced but open\n"}
    fds = []
    try:
        for name, data in synced.items():
            fd = os.open(root / name, os.O_WRONLY | os.O_CREAT, 0o644)
            fds.append(fd)
            os.write(fd, data)
            os.fsync(fd)
        mount.kill()
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
    mount.start()
    for name, data in {**closed, **synced}.items():
        assert (root / name).read_bytes() == data, name
    assert not (root / "gone").exists()
    assert not (root / "dir" / "renamed-from").exists()
    assert (root / "tiny").stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(root)) == sorted(
        ["dir", "empty", "tiny", "small.txt", "one-chunk", "multi", "renamed-to", *synced]
    )


def test_kill9_before_any_sqlite_commit_replays_the_journal(tmp_path: Path) -> None:
    """With group commits pushed an hour out, every acknowledged change lives only in the
    op journal when the daemon is killed; the restart must replay all of it."""
    m = Mount(tmp_path / "mnt", tmp_path / "state", ["commit_interval=3600"])
    m.start()
    try:
        root = m.mountpoint
        (root / "a" / "b").mkdir(parents=True)
        (root / "a" / "b" / "f").write_bytes(b"journaled")
        (root / "tmp").write_bytes(b"soon renamed")
        os.rename(root / "tmp", root / "a" / "renamed")
        (root / "gone").write_bytes(b"x")
        (root / "gone").unlink()
        os.chmod(root / "a", 0o700)
        os.setxattr(root / "a" / "renamed", "user.k", b"v")
        os.symlink("a/renamed", root / "link")
        assert (tmp_path / "state" / "ops.journal").stat().st_size > 0
        m.kill()
        m.start()
        assert (root / "a" / "b" / "f").read_bytes() == b"journaled"
        assert (root / "a" / "renamed").read_bytes() == b"soon renamed"
        assert os.getxattr(root / "a" / "renamed", "user.k") == b"v"
        assert os.readlink(root / "link") == "a/renamed"
        assert (root / "a").stat().st_mode & 0o777 == 0o700
        assert sorted(os.listdir(root)) == ["a", "link"]
        assert "replayed" in m.log_text()
    finally:
        m.close()


def test_kill9_repeatedly(mount: Mount) -> None:
    """Several crash/restart cycles in a row, each adding files, lose none of them."""
    expected: dict[str, bytes] = {}
    for round_ in range(3):
        for i in range(5):
            name = f"r{round_}-{i}"
            expected[name] = os.urandom(100_000 * (i + 1))
            (mount.mountpoint / name).write_bytes(expected[name])
        mount.kill()
        mount.start()
        for name, data in expected.items():
            assert (mount.mountpoint / name).read_bytes() == data, name


def test_stale_mount_cleaned_by_next_mount(mount: Mount) -> None:
    """After kill -9 the mount point is stale (ENOTCONN); the next mount.dhtfs cleans it up."""
    (mount.mountpoint / "f").write_bytes(b"before the crash")
    _sigkill(mount)
    assert is_mounted(mount.mountpoint)
    with pytest.raises(OSError) as info:
        os.stat(mount.mountpoint)
    assert info.value.errno == errno.ENOTCONN
    # Mount.start would stat the stale mount point itself; start the daemon by hand.
    assert mount.log is not None
    with open(mount.log, "ab") as log:
        mount.proc = subprocess.Popen(
            [MOUNT, str(mount.mountpoint), "-f", "-o", f"state={mount.state}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=ENV,
        )

    def live() -> bool:
        if mount.proc is not None and mount.proc.poll() is not None:
            raise AssertionError(f"mount.dhtfs exited: {mount.log_text()}")
        try:
            os.stat(mount.mountpoint)
        except OSError:
            return False
        return is_mounted(mount.mountpoint) and (mount.mountpoint / "f").exists()

    wait_until(live, "the new mount over the stale one")
    assert (mount.mountpoint / "f").read_bytes() == b"before the crash"
    with open("/proc/mounts") as fh:
        entries = [ln for ln in fh if ln.split()[1] == str(mount.mountpoint)]
    assert len(entries) == 1
    assert "removing the stale mount" in mount.log_text()


def test_kill9_during_unfinished_write(mount: Mount) -> None:
    """kill -9 while a writer is still appending leaves the closed version intact and readable
    (no EIO, no garbage), and the rest of the tree untouched."""
    root = mount.mountpoint
    old = os.urandom(5 * MIB + 3)
    other = os.urandom(MIB // 2)
    (root / "big").write_bytes(old)
    (root / "other").write_bytes(other)
    writer = subprocess.Popen(
        ["dd", "if=/dev/urandom", f"of={root / 'big'}", "bs=64k", "seek=100", "conv=notrunc"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (root / "big").stat().st_size > 100 * 65536 + MIB, "dd to be writing")
        mount.kill()
    finally:
        writer.kill()
        writer.wait()
    mount.start()
    data = (root / "big").read_bytes()
    assert len(data) >= len(old)
    assert data[: len(old)] == old
    assert (root / "other").read_bytes() == other


def test_gc_keeps_shared_blocks_and_frees_the_rest(mount: Mount) -> None:
    """After deletes and overwrites, the restart-time collection leaves exactly the blocks that
    live files use: shared (deduplicated) blocks stay, every file reads back intact."""
    root = mount.mountpoint
    shared = os.urandom(MIB)
    (root / "a").write_bytes(shared + os.urandom(MIB))
    (root / "b").write_bytes(shared + os.urandom(1000))
    os.link(root / "b", root / "b-link")
    (root / "c").write_bytes(os.urandom(3 * MIB))
    (root / "a").unlink()
    (root / "b").unlink()  # b-link keeps it
    with open(root / "c", "r+b") as fh:
        fh.seek(MIB)
        fh.write(os.urandom(MIB))  # replaces c's second chunk
    (root / "d").write_bytes(os.urandom(MIB))
    os.truncate(root / "d", 10)
    expected = {name: (root / name).read_bytes() for name in ("b-link", "c", "d")}
    assert mount.stop() == 0
    mount.start()
    for name, data in expected.items():
        assert (root / name).read_bytes() == data, name
    live = {
        cid
        for name in expected
        for cid in json.loads(os.getxattr(root / name, "user.dhtfs.chunks"))
        if cid is not None
    }
    on_disk = {
        p.parent.name + p.name
        for p in (mount.state / "chunks").glob("*/*")
        if len(p.parent.name + p.name) == 64
    }
    assert on_disk == live


SQLITE_LOOP = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=" + sys.argv[2])
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS t (i INTEGER PRIMARY KEY, b BLOB)")
n = 0
while True:
    with db:
        db.execute("INSERT INTO t (b) VALUES (?)", (os.urandom(3000),))
    n += 1
    print(n, flush=True)
"""


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_kill9_under_sqlite_keeps_committed_transactions(mount: Mount, journal: str) -> None:
    """SQLite never closes its files; its commits (fsync) survive kill -9 of the daemon, and
    the database is sound afterwards."""
    db = mount.mountpoint / "k.db"
    app = subprocess.Popen(
        [sys.executable, "-c", SQLITE_LOOP, str(db), journal],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert app.stdout is not None
    try:
        committed = 0
        while committed < 60:
            committed = int(app.stdout.readline())
        mount.kill()
    finally:
        app.kill()
        app.wait()
    mount.start()
    out = sh(["sqlite3", db, "PRAGMA integrity_check; SELECT count(*) FROM t;"]).stdout.split()
    assert out[0] == "ok"
    assert int(out[1]) >= committed
