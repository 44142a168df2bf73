"""POSIX semantics on a real mount, driven with plain os calls from the test process."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import mmap
import os
import random
import stat
import threading
from pathlib import Path

import pytest

from testkit.mounting import Mount
from testkit.shell import sh
from tests.mount.conftest import SMALL_CHUNK

pytestmark = pytest.mark.mount

MIB = 1024**2
GIB = 1024**3


def _errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    raise AssertionError(f"{fn.__name__}{args} did not fail")


def test_sparse_file_holes_read_as_zeros(small_mount: Mount) -> None:
    """A write far past the end leaves a hole that reads as zeros and takes no blocks."""
    f = small_mount.mountpoint / "sparse"
    far = 5 * GIB + 12345  # past 32 bits, not chunk aligned
    with open(f, "wb") as fh:
        fh.write(b"head")
        fh.seek(far)
        fh.write(b"tail")
    st = f.stat()
    assert st.st_size == far + 4
    assert st.st_blocks * 512 < 4 * SMALL_CHUNK
    du = int(sh(["du", "-k", f]).stdout.split()[0])
    assert du * 1024 < 4 * SMALL_CHUNK
    with open(f, "rb") as fh:
        assert fh.read(4) == b"head"
        assert fh.read(SMALL_CHUNK * 2) == bytes(SMALL_CHUNK * 2)
        fh.seek(3 * GIB - 100)
        assert fh.read(200) == bytes(200)
        fh.seek(far - 10)
        assert fh.read() == bytes(10) + b"tail"
    # Holes stay holes after a remount.
    assert small_mount.stop() == 0
    small_mount.start()
    with open(f, "rb") as fh:
        fh.seek(far - 3)
        assert fh.read() == bytes(3) + b"tail"
        fh.seek(SMALL_CHUNK * 7 + 5)
        assert fh.read(100) == bytes(100)
    assert f.stat().st_blocks * 512 < 4 * SMALL_CHUNK


def test_o_append_two_fds(small_mount: Mount) -> None:
    """Two O_APPEND descriptors interleave whole writes at the end, never overwriting."""
    f = small_mount.mountpoint / "log"
    f.write_bytes(b"start\n")
    a = os.open(f, os.O_WRONLY | os.O_APPEND)
    b = os.open(f, os.O_WRONLY | os.O_APPEND)
    expected = b"start\n"
    try:
        for i in range(200):
            for fd, tag in ((a, b"A"), (b, b"B")):
                line = tag + str(i).encode() * (i % 7 + 1) + b"\n"
                assert os.write(fd, line) == len(line)
                expected += line
        big = os.urandom(SMALL_CHUNK + 3)
        os.write(a, big)
        expected += big
        os.write(b, b"end")
        expected += b"end"
    finally:
        os.close(a)
        os.close(b)
    assert f.read_bytes() == expected


@pytest.mark.parametrize("chunked", [False, True], ids=["in-chunk", "across-chunks"])
def test_truncate_matches_local_file(small_mount: Mount, tmp_path: Path, chunked: bool) -> None:
    """truncate/ftruncate up and down give the same bytes as on a local filesystem."""
    unit = SMALL_CHUNK if chunked else 1000
    local = tmp_path / "local"
    remote = small_mount.mountpoint / "t"
    data = os.urandom(3 * unit + 77)
    steps: list[tuple[str, int]] = [
        ("truncate", 2 * unit + 5),
        ("write", unit // 2),
        ("truncate", 5 * unit + 1),
        ("write", 4 * unit),
        ("ftruncate", unit - 1),
        ("truncate", 0),
        ("write", 10),
        ("truncate", 3 * unit),
        ("ftruncate", 3 * unit + 9),
    ]
    for path in (local, remote):
        path.write_bytes(data)
    for op, n in steps:
        for path in (local, remote):
            if op == "truncate":
                os.truncate(path, n)
            else:
                fd = os.open(path, os.O_RDWR)
                try:
                    if op == "ftruncate":
                        os.ftruncate(fd, n)
                    else:
                        os.pwrite(fd, b"\xab" * 300, n)
                finally:
                    os.close(fd)
        assert remote.stat().st_size == local.stat().st_size, (op, n)
        assert remote.read_bytes() == local.read_bytes(), (op, n)
    small_mount.stop()
    small_mount.start()
    assert remote.read_bytes() == local.read_bytes()


def test_open_o_trunc(mount: Mount) -> None:
    """open(O_TRUNC) empties the file."""
    f = mount.mountpoint / "f"
    f.write_bytes(b"x" * 5000)
    with open(f, "wb") as fh:
        fh.write(b"y")
    assert f.read_bytes() == b"y"


def test_hard_links(mount: Mount) -> None:
    """Hard links share content and inode; nlink counts; unlinking one keeps the other."""
    a = mount.mountpoint / "a"
    (mount.mountpoint / "d").mkdir()
    b = mount.mountpoint / "d" / "b"
    a.write_bytes(b"shared")
    os.link(a, b)
    assert a.stat().st_nlink == 2
    assert b.stat().st_ino == a.stat().st_ino
    with open(b, "r+b") as fh:
        fh.write(b"SH")
    assert a.read_bytes() == b"SHared"
    with open(a, "ab") as fh:
        fh.write(b"!")
    assert b.read_bytes() == b"SHared!"
    a.unlink()
    assert not a.exists()
    assert b.stat().st_nlink == 1
    assert b.read_bytes() == b"SHared!"
    assert _errno_of(os.link, mount.mountpoint / "d", mount.mountpoint / "dirlink") == errno.EPERM
    mount.stop()
    mount.start()
    assert b.read_bytes() == b"SHared!"
    assert b.stat().st_nlink == 1


def test_symlinks(mount: Mount) -> None:
    """Symlinks resolve, readlink returns the target verbatim, dangling links are kept."""
    m = mount.mountpoint
    (m / "dir").mkdir()
    (m / "dir" / "target").write_text("T")
    os.symlink("dir/target", m / "rel")
    os.symlink(str(m / "dir"), m / "abs")
    os.symlink("nowhere/at/all", m / "dangling")
    assert os.readlink(m / "rel") == "dir/target"
    assert (m / "rel").read_text() == "T"
    assert (m / "abs" / "target").read_text() == "T"
    assert stat.S_ISLNK(os.lstat(m / "rel").st_mode)
    assert os.lstat(m / "rel").st_size == len("dir/target")
    assert os.readlink(m / "dangling") == "nowhere/at/all"
    assert not (m / "dangling").exists()
    assert os.path.lexists(m / "dangling")
    assert _errno_of(os.open, m / "dangling", os.O_RDONLY) == errno.ENOENT
    assert _errno_of(os.readlink, m / "dir" / "target") == errno.EINVAL
    (m / "rel").unlink()
    assert (m / "dir" / "target").read_text() == "T"


def test_rename_over_and_across(mount: Mount) -> None:
    """rename replaces an existing file and moves files and directories between directories."""
    m = mount.mountpoint
    (m / "src").mkdir()
    (m / "dst").mkdir()
    (m / "src" / "a").write_text("A")
    (m / "dst" / "b").write_text("B")
    os.rename(m / "src" / "a", m / "dst" / "b")
    assert (m / "dst" / "b").read_text() == "A"
    assert os.listdir(m / "src") == []
    (m / "src" / "inner").mkdir()
    (m / "src" / "inner" / "x").write_text("X")
    os.rename(m / "src" / "inner", m / "dst" / "moved")
    assert (m / "dst" / "moved" / "x").read_text() == "X"
    assert sorted(os.listdir(m / "dst")) == ["b", "moved"]
    assert (m / "dst").stat().st_nlink == 3
    assert (m / "src").stat().st_nlink == 2
    (m / "empty").mkdir()
    os.rename(m / "empty", m / "dst" / "moved" / "sub")  # into an unrelated directory
    assert _errno_of(os.rename, m / "dst" / "b", m / "dst" / "moved") == errno.EISDIR
    os.rename(m / "dst", m / "src" / "dst2")  # a populated directory, into a sibling
    assert (m / "src" / "dst2" / "moved" / "x").read_text() == "X"
    assert (m / "src" / "dst2" / "moved" / "sub").is_dir()
    assert sorted(os.listdir(m)) == ["src"]
    mount.stop()
    mount.start()
    assert (m / "src" / "dst2" / "b").read_text() == "A"
    assert (m / "src" / "dst2" / "moved" / "x").read_text() == "X"


def test_rename_errors(mount: Mount) -> None:
    """A directory cannot move into itself; dir over file and over non-empty dir fail."""
    m = mount.mountpoint
    (m / "top" / "child" / "grand").mkdir(parents=True)
    (m / "file").write_text("f")
    (m / "full").mkdir()
    (m / "full" / "x").write_text("x")
    assert _errno_of(os.rename, m / "top", m / "top" / "child" / "top") == errno.EINVAL
    assert _errno_of(os.rename, m / "top", m / "top" / "child" / "grand" / "t") == errno.EINVAL
    assert _errno_of(os.rename, m / "top", m / "file") == errno.ENOTDIR
    assert _errno_of(os.rename, m / "file", m / "top") == errno.EISDIR
    assert _errno_of(os.rename, m / "top", m / "full") in (errno.ENOTEMPTY, errno.EEXIST)
    assert _errno_of(os.rename, m / "missing", m / "y") == errno.ENOENT
    assert (m / "top" / "child" / "grand").is_dir()


RENAME_NOREPLACE = 1


def _renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("libc has no renameat2")
    at_fdcwd = -100
    rc = libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def test_rename_noreplace(mount: Mount) -> None:
    """renameat2(RENAME_NOREPLACE) refuses to replace (EEXIST) and renames otherwise."""
    m = mount.mountpoint
    (m / "a").write_text("A")
    (m / "b").write_text("B")
    assert _errno_of(_renameat2, m / "a", m / "b", RENAME_NOREPLACE) == errno.EEXIST
    assert (m / "a").read_text() == "A"
    assert (m / "b").read_text() == "B"
    _renameat2(m / "a", m / "c", RENAME_NOREPLACE)
    assert (m / "c").read_text() == "A"
    assert not (m / "a").exists()


def test_chmod_chown_utimens(mount: Mount) -> None:
    """chmod, chown and utimensat with nanoseconds are stored exactly and survive a remount."""
    f = mount.mountpoint / "f"
    f.write_text("x")
    d = mount.mountpoint / "d"
    d.mkdir()
    before = f.stat()
    os.chmod(f, 0o4755)
    os.chown(f, 1234, 5678)
    assert stat.S_IMODE(f.stat().st_mode) == 0o755  # chown clears set-user-ID, as on Linux
    os.chmod(f, 0o4751)
    os.chmod(d, 0o1777)
    atime, mtime = 1_234_567_890_123_456_789, 1_500_000_000_987_654_321
    os.utime(f, ns=(atime, mtime))
    os.utime(d, ns=(atime + 1, mtime + 1))
    os.symlink("f", mount.mountpoint / "l")
    os.utime(mount.mountpoint / "l", ns=(atime + 2, mtime + 2), follow_symlinks=False)

    def check() -> None:
        st = f.stat()
        assert stat.S_IMODE(st.st_mode) == 0o4751
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
        assert st.st_ctime_ns >= before.st_ctime_ns
        sd = d.stat()
        assert stat.S_IMODE(sd.st_mode) == 0o1777
        assert (sd.st_atime_ns, sd.st_mtime_ns) == (atime + 1, mtime + 1)
        sl = os.lstat(mount.mountpoint / "l")
        assert sl.st_mtime_ns == mtime + 2
        assert f.stat().st_mtime_ns == mtime

    check()
    mount.stop()
    mount.start()
    check()


def test_write_updates_mtime_and_ctime(mount: Mount) -> None:
    """Writing a file moves its mtime forward; creating a name moves the directory's."""
    d = mount.mountpoint / "d"
    d.mkdir()
    os.utime(d, ns=(10**18, 10**18))
    f = d / "f"
    f.write_text("1")
    assert d.stat().st_mtime_ns > 10**18
    os.utime(f, ns=(10**18, 10**18))
    with open(f, "ab") as fh:
        fh.write(b"2")
    assert f.stat().st_mtime_ns > 10**18


def test_statvfs_sane(mount: Mount) -> None:
    """statvfs reports consistent, non-zero figures."""
    st = os.statvfs(mount.mountpoint)
    assert st.f_bsize > 0 and st.f_frsize > 0
    assert st.f_blocks > 0
    assert st.f_blocks >= st.f_bfree >= st.f_bavail >= 0
    assert st.f_files >= st.f_ffree > 0
    assert st.f_namemax == 255
    sh(["df", "-h", mount.mountpoint])


def test_fsync_file_and_directory(mount: Mount) -> None:
    """fsync and fdatasync on files and fsync on directories succeed."""
    f = mount.mountpoint / "f"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.urandom(3 * 1024 * 1024))
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(mount.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert f.stat().st_size == 3 * 1024 * 1024


def test_user_xattrs(mount: Mount) -> None:
    """user.* xattrs can be set, read, listed, replaced and removed, and persist."""
    f = mount.mountpoint / "f"
    f.write_text("x")
    d = mount.mountpoint / "d"
    d.mkdir()
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(f, "user.bin", bytes(range(256)))
    os.setxattr(d, "user.dir", b"yes")
    assert os.getxattr(f, "user.color") == b"blue"
    assert os.getxattr(f, "user.bin") == bytes(range(256))
    assert {"user.color", "user.bin"} <= set(os.listxattr(f))
    assert os.listxattr(d) == ["user.dir"]
    os.setxattr(f, "user.color", b"red")
    assert os.getxattr(f, "user.color") == b"red"
    os.removexattr(f, "user.bin")
    assert "user.bin" not in os.listxattr(f)
    assert _errno_of(os.getxattr, f, "user.bin") == errno.ENODATA
    assert _errno_of(os.getxattr, f, "user.never") == errno.ENODATA
    assert _errno_of(os.removexattr, f, "user.never") == errno.ENODATA
    mount.stop()
    mount.start()
    assert os.getxattr(f, "user.color") == b"red"
    assert os.getxattr(d, "user.dir") == b"yes"
    out = sh(["getfattr", "-d", f]).stdout
    assert 'user.color="red"' in out


def test_dhtfs_chunks_xattr(small_mount: Mount) -> None:
    """user.dhtfs.chunks lists the file's block ids (SHA-256 of each chunk) and is read-only."""
    f = small_mount.mountpoint / "f"
    data = os.urandom(2 * SMALL_CHUNK + 100)
    f.write_bytes(data)
    ids = json.loads(os.getxattr(f, "user.dhtfs.chunks"))
    expected = [
        hashlib.sha256(data[i : i + SMALL_CHUNK]).hexdigest()
        for i in range(0, len(data), SMALL_CHUNK)
    ]
    assert ids == expected
    for cid in ids:
        assert (small_mount.state / "chunks" / cid[:2] / cid[2:]).is_file()
    assert _errno_of(os.setxattr, f, "user.dhtfs.chunks", b"[]") == errno.EPERM
    assert _errno_of(os.removexattr, f, "user.dhtfs.chunks") == errno.EPERM
    assert json.loads(os.getxattr(f, "user.dhtfs.chunks")) == expected
    assert sh(["setfattr", "-n", "user.dhtfs.chunks", "-v", "x", f], check=False).returncode != 0


def test_chunk_sized_writes_read_back(tmp_path: Path) -> None:
    """With chunks smaller than the kernel's writes, every chunk of every write is kept.

    Regression: a chunk sealed within the write that filled it lost its block id (read as zeros).
    """
    m = Mount(tmp_path / "mnt", tmp_path / "state", options=["chunk_size=4096"]).start()
    try:
        files = {f"f{i}": os.urandom(300_000 + i * 4096) for i in range(4)}
        for name, data in files.items():
            (m.mountpoint / name).write_bytes(data)
        for name, data in files.items():
            assert hashlib.sha256((m.mountpoint / name).read_bytes()).digest() == (
                hashlib.sha256(data).digest()
            ), name
        assert m.stop() == 0
        m.start()
        for name, data in files.items():
            assert (m.mountpoint / name).read_bytes() == data, name
            assert None not in json.loads(os.getxattr(m.mountpoint / name, "user.dhtfs.chunks"))
    finally:
        m.close()


def test_unlinked_open_file_stays_usable(small_mount: Mount) -> None:
    """An unlinked file stays readable and writable through an open descriptor."""
    m = small_mount.mountpoint
    f = m / "tmpfile"
    data = os.urandom(3 * SMALL_CHUNK + 10)
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        f.unlink()
        assert not f.exists()
        assert os.listdir(m) == []
        os.write(fd, b"more")
        assert os.pread(fd, len(data) + 10, 0) == data + b"more"
        assert os.fstat(fd).st_nlink == 0
        assert os.fstat(fd).st_size == len(data) + 4
    finally:
        os.close(fd)
    assert os.listdir(m) == []


def test_renamed_open_file_keeps_writing(mount: Mount) -> None:
    """Writes through a descriptor land in the file under its new name after a rename."""
    m = mount.mountpoint
    (m / "d").mkdir()
    with open(m / "a", "wb") as fh:
        fh.write(b"one ")
        fh.flush()
        os.rename(m / "a", m / "d" / "b")
        fh.write(b"two")
    assert (m / "d" / "b").read_bytes() == b"one two"
    assert not (m / "a").exists()


def test_shared_content_between_descriptors(mount: Mount) -> None:
    """A reader sees a writer's bytes at once, before the writer closes (local semantics)."""
    f = mount.mountpoint / "f"
    with open(f, "wb", buffering=0) as w, open(f, "rb", buffering=0) as r:
        w.write(b"abc")
        assert r.read() == b"abc"
        w.write(os.urandom(2 * 1024 * 1024))
        assert os.fstat(r.fileno()).st_size == 2 * 1024 * 1024 + 3


def test_write_only_handle_keeps_cached_readers_coherent(small_mount: Mount) -> None:
    """Write-only handles bypass the page cache (direct I/O); a reader whose pages are cached
    must still see what they overwrite, in place and past a chunk boundary."""
    f = small_mount.mountpoint / "f"
    old = os.urandom(3 * 4096 + 100)
    f.write_bytes(old)
    with open(f, "rb", buffering=0) as r:
        assert r.read() == old  # now in the page cache
        new = os.urandom(5000)
        fd = os.open(f, os.O_WRONLY)
        try:
            assert os.pwrite(fd, new, 2048) == len(new)
        finally:
            os.close(fd)
        assert os.pread(r.fileno(), len(old), 0) == old[:2048] + new + old[2048 + len(new) :]
    with open(f, "rb") as r2:
        assert r2.read() == old[:2048] + new + old[2048 + len(new) :]


def test_readdir_lists_dot_and_dotdot(mount: Mount) -> None:
    """``ls -ai`` shows ``.`` and ``..`` with the directory's and its parent's inodes."""
    sub = mount.mountpoint / "sub"
    (sub / "inner").mkdir(parents=True)
    (sub / "f").write_text("x")
    out = sh(["ls", "-ai", str(sub)])
    inodes = {name: int(ino) for ino, name in (ln.split() for ln in out.stdout.splitlines())}
    assert set(inodes) == {".", "..", "inner", "f"}
    assert inodes["."] == sub.stat().st_ino
    assert inodes[".."] == mount.mountpoint.stat().st_ino
    assert inodes["inner"] == (sub / "inner").stat().st_ino


def test_sizes_up_to_the_kernels_limit_are_sparse_and_past_it_efbig(mount: Mount) -> None:
    """A file's metadata grows with its data, not its size: a petabyte truncate or a write at a
    petabyte's offset stores what was written and nothing for the holes. A write reaching past
    2**63 - 1 (the kernel's limit for FUSE files) fails (the kernel says EINVAL) and changes
    nothing."""
    f = mount.mountpoint / "f"
    f.write_bytes(b"kept")
    os.truncate(f, 999_999_999_999_999)
    assert f.stat().st_size == 999_999_999_999_999 and f.stat().st_blocks * 512 <= MIB
    with open(f, "r+b", buffering=0) as fh:
        fh.seek(999_999_999_999_999)
        assert fh.write(b"x") == 1
        fh.seek((1 << 63) - 1)
        assert _errno_of(fh.write, b"x") in (errno.EFBIG, errno.EINVAL)
    assert f.stat().st_size == 1_000_000_000_000_000 and f.stat().st_blocks * 512 <= 2 * MIB
    with open(f, "rb") as fh:
        assert fh.read(4) == b"kept" and fh.read(8) == bytes(8)
        fh.seek(999_999_999_999_990)
        assert fh.read() == bytes(9) + b"x"
    os.truncate(f, 10 * GIB)
    assert f.stat().st_size == 10 * GIB
    with open(f, "rb") as fh:
        assert fh.read(12) == b"kept" + bytes(8)


def test_namespace_errors(mount: Mount) -> None:
    """The usual errnos: EEXIST, ENOTEMPTY, ENOTDIR, EISDIR, ENAMETOOLONG, ENOENT."""
    m = mount.mountpoint
    (m / "d" / "sub").mkdir(parents=True)
    (m / "f").write_text("f")
    assert _errno_of(os.open, m / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert _errno_of(os.mkdir, m / "d") == errno.EEXIST
    assert _errno_of(os.rmdir, m / "d") == errno.ENOTEMPTY
    assert _errno_of(os.rmdir, m / "f") == errno.ENOTDIR
    assert _errno_of(os.unlink, m / "d") == errno.EISDIR
    assert _errno_of(os.open, m / "d", os.O_WRONLY) == errno.EISDIR
    assert _errno_of(os.mkdir, m / "f" / "x") == errno.ENOTDIR
    assert _errno_of(os.open, m / ("n" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    assert _errno_of(os.stat, m / "missing") == errno.ENOENT
    (m / ("n" * 255)).write_text("longest name")
    assert (m / ("n" * 255)).read_text() == "longest name"
    long = m / ("n" * 256)  # every call that takes a name says so, as statfs's namemax does
    for call, args in [(os.stat, (long,)), (os.unlink, (long,)), (os.rmdir, (long,)),
                       (os.rename, (long, m / "x")), (os.rename, (m / "f", long)),
                       (os.link, (m / "f", long)), (os.link, (long, m / "y")),
                       (os.chmod, (long, 0o600)), (os.chown, (long, 0, 0)),
                       (os.mkdir, (long,)), (os.symlink, ("f", long))]:
        assert _errno_of(call, *args) == errno.ENAMETOOLONG, call.__name__
    os.mkfifo(m / "fifo")
    assert stat.S_ISFIFO(os.lstat(m / "fifo").st_mode)


def test_large_directory_listing_and_rm_rf(mount: Mount) -> None:
    """Listing a directory of 1100 entries is complete; rm -rf removes it all."""
    d = mount.mountpoint / "many"
    d.mkdir()
    names = {f"file-{i:05d}-{'x' * (i % 40)}" for i in range(1100)}
    for name in names:
        (d / name).write_bytes(b"")
    assert set(os.listdir(d)) == names
    listing = sh(["ls", "-la", d]).stdout.splitlines()
    assert sum(1 for line in listing if line.startswith("-rw-r--r-- 1 ")) == 1100
    assert int(sh(["sh", "-c", f"find {d} -type f | wc -l"]).stdout) == 1100
    sh(["rm", "-rf", d])
    assert not d.exists()
    assert os.listdir(mount.mountpoint) == []


def test_shared_mmap_writes_persist(mount: Mount) -> None:
    """Stores through a shared writable mmap reach the file and survive a remount."""
    f = mount.mountpoint / "mm"
    data = bytearray(os.urandom(3 * 1024 * 1024))
    f.write_bytes(data)
    edits = {1000: b"0123456789", 2 * 1024 * 1024 - 5: b"ABCDEFGHIJ"}  # one straddles chunks
    with open(f, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mm:
        for off, text in edits.items():
            mm[off : off + len(text)] = text
            data[off : off + len(text)] = text
        mm.flush()
    assert f.read_bytes() == bytes(data)
    mount.stop()
    mount.start()
    assert f.read_bytes() == bytes(data)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_io_matches_local_file(tmp_path: Path, seed: int) -> None:
    """A random mix of pwrite/truncate/ftruncate/pread on two descriptors, with 4 KiB chunks,
    gives the same bytes as the same operations on a local file, also after a remount."""
    rng = random.Random(seed)
    m = Mount(tmp_path / "mnt", tmp_path / "state", options=["chunk_size=4096"]).start()
    local = tmp_path / "local"
    remote = m.mountpoint / "f"
    try:
        fds = {}
        for path in (local, remote):
            a = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            b = os.open(path, os.O_RDWR)
            fds[path] = (a, b)
        for step in range(400):
            op = rng.choices(["write", "trunc", "ftrunc", "read"], [10, 1, 1, 4])[0]
            size = os.fstat(fds[local][0]).st_size
            off = rng.randrange(0, size + 20_000)
            length = rng.choice([1, 100, 4095, 4096, 4097, 8192, 65536, 200_000])
            which = rng.randrange(2)
            payload = rng.randbytes(length)
            results = []
            for path in (local, remote):
                fd = fds[path][which]
                if op == "write":
                    results.append(os.pwrite(fd, payload, off))
                elif op == "trunc":
                    os.truncate(path, off)
                elif op == "ftrunc":
                    os.ftruncate(fd, off)
                else:
                    results.append(os.pread(fd, length, off))
                results.append(os.fstat(fd).st_size)
            assert results[: len(results) // 2] == results[len(results) // 2 :], (step, op)
        for path in (local, remote):
            for fd in fds[path]:
                os.close(fd)
        expected = local.read_bytes()
        assert remote.read_bytes() == expected
        assert m.stop() == 0
        m.start()
        assert remote.read_bytes() == expected
    finally:
        m.close()


def test_parallel_writers_and_readers(small_mount: Mount) -> None:
    """Several threads writing and re-reading their own files at once lose and mix nothing."""
    expected: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(8):
                data = os.urandom((k * 7919 + i * 104_729) % 1_500_000)
                path = small_mount.mountpoint / f"w{k}-{i}"
                with open(path, "wb") as fh:
                    for j in range(0, len(data), 100_000):
                        fh.write(data[j : j + 100_000])
                expected[path.name] = data
                assert path.read_bytes() == data, path.name
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert small_mount.stop() == 0
    small_mount.start()
    for name, data in expected.items():
        assert (small_mount.mountpoint / name).read_bytes() == data, name


def test_cp_sparse_file_stays_sparse(small_mount: Mount, tmp_path: Path) -> None:
    """cp --sparse=always of a sparse image into the mount keeps the holes and the bytes."""
    src = tmp_path / "image"
    size = 200 * 1024 * 1024
    with open(src, "wb") as fh:
        fh.write(b"boot" * 1000)
        fh.seek(size // 2)
        fh.write(os.urandom(100_000))
        fh.truncate(size)
    dst = small_mount.mountpoint / "image"
    sh(["cp", "--sparse=always", src, dst])
    assert dst.stat().st_size == size
    assert dst.stat().st_blocks * 512 < 2 * 1024 * 1024
    sh(["cmp", src, dst])


def _tree_state(root: Path) -> dict[str, tuple]:
    """Names, kinds, contents, link targets and hard-link groups under ``root``."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_nlink)
            else:
                first = inodes.setdefault(st.st_ino, rel)
                out[rel] = ("file", path.read_bytes(), st.st_nlink, first)
    return out


@pytest.mark.parametrize("seed", [7, 8])
def test_random_namespace_ops_match_local(mount: Mount, tmp_path: Path, seed: int) -> None:
    """Random mkdir/create/link/symlink/rename/unlink/rmdir give the same tree (and the same
    errnos) as on a local filesystem, also after a remount."""
    rng = random.Random(seed)
    local = tmp_path / "local"
    local.mkdir()
    roots = (local, mount.mountpoint)
    names = ["a", "b", "c", "d/e", "d/f", "d/g/h", "g", "d/g", "d"]

    def apply(root: Path, op: str, x: str, y: str, payload: bytes) -> object:
        px, py = root / x, root / y
        try:
            if op == "mkdir":
                px.mkdir()
            elif op == "write":
                px.write_bytes(payload)
            elif op == "link":
                os.link(px, py)
            elif op == "symlink":
                os.symlink(y, px)
            elif op == "rename":
                os.rename(px, py)
            elif op == "unlink":
                px.unlink()
            elif op == "rmdir":
                px.rmdir()
        except OSError as exc:
            return exc.errno
        return None

    ops = ["mkdir", "write", "link", "symlink", "rename", "unlink", "rmdir"]
    succeeded: set[str] = set()
    for step in range(300):
        op = rng.choice(ops)
        x, y = rng.choice(names), rng.choice(names)
        payload = rng.randbytes(rng.choice([0, 10, 5000]))
        results = [apply(root, op, x, y, payload) for root in roots]
        assert results[0] == results[1], (step, op, x, y)
        if results[0] is None:
            succeeded.add(op)
        if step % 50 == 49:
            assert _tree_state(mount.mountpoint) == _tree_state(local), step
    assert succeeded == set(ops)  # every kind of operation was exercised
    expected = _tree_state(local)
    assert _tree_state(mount.mountpoint) == expected
    assert mount.stop() == 0
    mount.start()
    assert _tree_state(mount.mountpoint) == expected
