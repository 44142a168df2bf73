"""Ordinary tools on a real mount: cp, rsync, tar, git, sqlite, editors, dd."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.mounting import Mount
from testkit.shell import ENV, make_tree, sh, snapshot

pytestmark = pytest.mark.mount


def test_cp_a_preserves_tree(mount: Mount, tmp_path: Path) -> None:
    """cp -a into and back out of the mount keeps contents, modes, owners, mtimes, symlinks."""
    src = tmp_path / "src"
    make_tree(src)
    dst = mount.mountpoint / "copy"
    sh(["cp", "-a", src, dst])
    assert snapshot(dst) == snapshot(src)
    back = tmp_path / "back"
    sh(["cp", "-a", dst, back])
    assert snapshot(back) == snapshot(src)


def test_rsync_a_then_nothing_to_do(mount: Mount, tmp_path: Path) -> None:
    """rsync -a copies the tree exactly; a second rsync -ai finds nothing to change."""
    src = tmp_path / "src"
    make_tree(src)
    dst = mount.mountpoint / "r"
    sh(["rsync", "-a", f"{src}/", f"{dst}/"])
    assert snapshot(dst) == snapshot(src)
    second = sh(["rsync", "-ai", f"{src}/", f"{dst}/"])
    assert second.stdout == ""
    # A checksum pass must agree too (catches content that differs under equal size+mtime).
    third = sh(["rsync", "-aic", f"{src}/", f"{dst}/"])
    assert third.stdout == ""


def test_tar_round_trip(mount: Mount, tmp_path: Path) -> None:
    """tar (pax format, ns mtimes) x into the mount and c out of it reproduce the tree."""
    src = tmp_path / "src"
    make_tree(src)
    archive = tmp_path / "a.tar"
    sh(["tar", "--format=posix", "-cf", archive, "-C", src, "."])
    inside = mount.mountpoint / "t"
    inside.mkdir()
    sh(["tar", "xpf", archive, "-C", inside])
    assert snapshot(inside) == snapshot(src)
    archive2 = mount.mountpoint / "b.tar"
    sh(["tar", "--format=posix", "-cf", archive2, "-C", inside, "."])
    out = tmp_path / "out"
    out.mkdir()
    sh(["tar", "xpf", archive2, "-C", out])
    assert snapshot(out) == snapshot(src)


def test_git_inside_mount(mount: Mount) -> None:
    """git init/add/commit/log/fsck/gc work with the repository inside the mount."""
    repo = mount.mountpoint / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    sh([*git, "init", "-q", "-b", "main"])
    for i in range(3):
        (repo / f"file{i}.txt").write_text(f"version {i}\n" * (i + 1))
        (repo / "bin").write_bytes(os.urandom(50_000))
        sh([*git, "add", "-A"])
        sh([*git, "commit", "-q", "-m", f"commit {i}"])
    log = sh([*git, "log", "--format=%s"]).stdout.split("\n")
    assert log[:3] == ["commit 2", "commit 1", "commit 0"]
    sh([*git, "fsck", "--full", "--strict"])
    sh([*git, "gc", "-q"])
    sh([*git, "fsck", "--full"])
    assert sh([*git, "status", "--porcelain"]).stdout == ""
    assert sh([*git, "show", "HEAD~2:file0.txt"]).stdout == "version 0\n"


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_inside_mount(mount: Mount, journal: str) -> None:
    """A SQLite database on the mount survives many transactions and an integrity check."""
    path = mount.mountpoint / "db.sqlite"
    db = sqlite3.connect(path)
    try:
        assert db.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
        for batch in range(20):
            with db:
                db.executemany(
                    "INSERT INTO t (v, b) VALUES (?, ?)",
                    [(f"row {batch}-{i}", os.urandom(64)) for i in range(250)],
                )
        with db:
            db.execute("DELETE FROM t WHERE id % 3 = 0")
        with db:
            db.execute("UPDATE t SET v = v || '!' WHERE id % 5 = 0")
    finally:
        db.close()
    out = sh(["sqlite3", path, "PRAGMA integrity_check; SELECT count(*) FROM t;"]).stdout
    assert out.split() == ["ok", str(5000 - 5000 // 3)]
    assert sh(["sqlite3", path, "SELECT v FROM t WHERE id = 10"]).stdout.strip() == "row 0-9!"


def test_editor_save_by_rename(mount: Mount) -> None:
    """Write-temp + fsync + rename-over replaces atomically; an old open handle keeps old data."""
    target = mount.mountpoint / "doc.txt"
    target.write_text("old contents\n")
    old_ino = target.stat().st_ino
    with open(target, "rb") as old:
        tmp = mount.mountpoint / ".doc.txt.swp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"new contents\n" * 1000)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
        assert target.read_bytes() == b"new contents\n" * 1000
        assert target.stat().st_ino != old_ino
        assert not tmp.exists()
        assert old.read() == b"old contents\n"
    assert sorted(p.name for p in mount.mountpoint.iterdir()) == ["doc.txt"]


def test_shell_tools_edit_in_place(mount: Mount) -> None:
    """sed -i (rename-based) and shell appends behave as on a local filesystem."""
    f = mount.mountpoint / "conf"
    f.write_text("a=1\nb=2\n")
    sh(["sed", "-i", "s/b=2/b=3/", f])
    sh(["sh", "-c", f"echo c=4 >> {f}"])
    assert f.read_text() == "a=1\nb=3\nc=4\n"


@pytest.mark.slow
def test_dd_one_gib(mount: Mount) -> None:
    """dd of 1 GiB (bs=1M, conv=fsync) stores exactly the bytes written; deleting frees it."""
    rng = random.Random(1234)
    expected = hashlib.sha256()
    target = mount.mountpoint / "big"
    dd = subprocess.Popen(
        ["dd", f"of={target}", "bs=1M", "count=1024", "iflag=fullblock", "conv=fsync"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert dd.stdin is not None
    for _ in range(1024):
        block = rng.randbytes(1024 * 1024)
        expected.update(block)
        dd.stdin.write(block)
    dd.stdin.close()
    assert dd.wait(timeout=300) == 0, dd.stderr.read() if dd.stderr else ""
    assert target.stat().st_size == 1024**3
    assert mount.stop() == 0  # read back from the block store, not the kernel's page cache
    mount.start()
    out = sh(["sha256sum", target], timeout=300).stdout.split()[0]
    assert out == expected.hexdigest()
    target.unlink()
    assert mount.stop() == 0
    mount.start()  # unreferenced blocks are collected at start: the GiB is freed again
    on_disk = sum(f.stat().st_size for f in (mount.state / "chunks").rglob("*") if f.is_file())
    assert on_disk < 1024 * 1024


def test_xattr_copying_tools(mount: Mount, tmp_path: Path) -> None:
    """rsync -aX, cp --preserve=xattr and tar --xattrs copy user.* xattrs within the mount
    cleanly, and nothing dhtfs-internal leaks onto a local copy."""
    m = mount.mountpoint
    (m / "d").mkdir()
    (m / "d" / "f").write_bytes(os.urandom(10_000))
    os.setxattr(m / "d" / "f", "user.tag", b"v")
    sh(["rsync", "-aX", f"{m / 'd'}/", f"{m / 'rsynced'}/"])
    assert os.getxattr(m / "rsynced" / "f", "user.tag") == b"v"
    sh(["cp", "--preserve=xattr", m / "d" / "f", m / "cp-copy"])
    assert os.getxattr(m / "cp-copy", "user.tag") == b"v"
    sh(["tar", "--xattrs", "-cf", tmp_path / "x.tar", "-C", m / "d", "f"])
    (m / "untar").mkdir()
    assert sh(["tar", "--xattrs", "-xf", tmp_path / "x.tar", "-C", m / "untar"]).stderr == ""
    assert os.getxattr(m / "untar" / "f", "user.tag") == b"v"
    sh(["cp", "-a", m / "d" / "f", tmp_path / "local"])
    assert os.listxattr(tmp_path / "local") == ["user.tag"]


SQLITE_WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=60)
for i in range(20):
    with db:
        db.execute("INSERT INTO t VALUES (?, ?)", (sys.argv[2], i))
"""


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_concurrent_processes(mount: Mount, journal: str) -> None:
    """Three processes writing one SQLite database at once (kernel locks, shared mmap in WAL
    mode) leave every row and a sound database."""
    path = mount.mountpoint / "shared.db"
    sh(["sqlite3", path, f"PRAGMA journal_mode={journal}; CREATE TABLE t (who TEXT, i INT);"])
    writers = [
        subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, str(path), str(k)], env=ENV)
        for k in range(3)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    out = sh(["sqlite3", path, "PRAGMA integrity_check; SELECT who, count(*) FROM t GROUP BY who;"])
    assert out.stdout.split() == ["ok", "0|20", "1|20", "2|20"]
