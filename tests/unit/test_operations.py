"""Tier 3: ``Operations`` driven directly (no kernel), then an invariant check of the metadata."""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from dhtfs.runtime.localfs import LocalFilesystem

ROOT = pyfuse3.ROOT_INODE
CTX = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)
CS = 4096
SIZE_FIELDS = SimpleNamespace(  # setattr's "which fields": the size only
    update_size=True,
    update_mode=False,
    update_uid=False,
    update_gid=False,
    update_atime=False,
    update_mtime=False,
)


def check_invariants(lfs: LocalFilesystem) -> None:
    """Every link points at an existing object; directories have exactly one link; names
    are unique per directory; every block a named file lists is stored and readable."""
    db = lfs.namespace.db
    lfs.namespace.write_back()
    assert not db.execute(
        "SELECT 1 FROM links WHERE obj NOT IN (SELECT obj FROM objects)"
    ).fetchall()
    assert not db.execute(
        "SELECT obj FROM links WHERE kind=? GROUP BY obj HAVING count(*)>1", (stat.S_IFDIR,)
    ).fetchall()
    assert not db.execute("SELECT 1 FROM links GROUP BY parent, name HAVING count(*)>1").fetchall()
    for block in set(lfs.namespace.linked_blocks()):
        lfs.store.get(block)


async def create(lfs: LocalFilesystem, parent: int, name: bytes) -> tuple[int, int]:
    info, attrs = await lfs.operations.create(parent, name, 0o644, os.O_RDWR, CTX)
    return info.fh, attrs.st_ino


async def test_write_read_across_chunks_holes_and_truncate(fs: LocalFilesystem) -> None:
    ops = fs.operations
    fh, ino = await create(fs, ROOT, b"f")
    model = bytearray()

    async def write(off: int, data: bytes) -> None:
        assert await ops.write(fh, off, data) == len(data)
        if len(model) < off:
            model.extend(bytes(off - len(model)))
        model[off : off + len(data)] = data

    await write(0, os.urandom(CS * 2 + 100))
    await write(CS - 10, b"X" * 30)  # straddles a boundary
    await write(CS * 10, b"tail")  # leaves a hole of whole chunks
    assert await ops.read(fh, 0, len(model) + 50) == bytes(model)
    await ops.flush(fh)
    attrs = await ops.getattr(ino)
    assert attrs.st_size == len(model)
    obj = fs.inodes.obj_of(ino)
    assert [i for i, _ in fs.namespace.extents(obj)] == [0, 1, 2, 10]  # a hole stores nothing
    fields = SIZE_FIELDS
    await ops.setattr(ino, SimpleNamespace(st_size=CS + 5), fields, fh, CTX)
    del model[CS + 5 :]
    await ops.setattr(ino, SimpleNamespace(st_size=CS * 3), fields, fh, CTX)
    model.extend(bytes(CS * 3 - len(model)))
    assert await ops.read(fh, 0, CS * 4) == bytes(model)  # truncated bytes come back as zeros
    await ops.release(fh)
    check_invariants(fs)


async def test_names_rename_link_unlink_rmdir(fs: LocalFilesystem) -> None:
    ops = fs.operations
    d = await ops.mkdir(ROOT, b"d", 0o755, CTX)
    fh, ino = await create(fs, d.st_ino, b"a")
    await ops.write(fh, 0, b"hello")
    await ops.release(fh)
    await ops.link(ino, ROOT, b"hard", CTX)
    assert (await ops.getattr(ino)).st_nlink == 2
    await ops.rename(d.st_ino, b"a", ROOT, b"b", 0, CTX)
    missing = await ops.lookup(d.st_ino, b"a", CTX)  # a negative entry the kernel may cache
    assert missing.st_ino == 0 and missing.entry_timeout > 0
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.rename(ROOT, b"d", d.st_ino, b"inside", 0, CTX)
    assert e.value.errno == errno.EINVAL
    await ops.rename(ROOT, b"b", ROOT, b"hard", 0, CTX)  # same object: nothing happens
    assert (await ops.getattr(ino)).st_nlink == 2
    sub = await ops.mkdir(d.st_ino, b"sub", 0o755, CTX)
    assert (await ops.getattr(d.st_ino)).st_nlink == 3
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.rmdir(ROOT, b"d", CTX)
    assert e.value.errno == errno.ENOTEMPTY
    await ops.rmdir(d.st_ino, b"sub", CTX)
    await ops.unlink(ROOT, b"b", CTX)
    assert (await ops.getattr(ino)).st_nlink == 1
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.create(ROOT, b"hard", 0o644, os.O_RDWR | os.O_EXCL, CTX)
    assert e.value.errno == errno.EEXIST
    # Without O_EXCL the kernel only calls create for a name it holds as missing: another
    # node made it since, and ESTALE makes the VFS look it up again and open it.
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.create(ROOT, b"hard", 0o644, os.O_RDWR, CTX)
    assert e.value.errno == errno.ESTALE
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.mkdir(ROOT, b"x" * 256, 0o755, CTX)
    assert e.value.errno == errno.ENAMETOOLONG
    await ops.forget([(sub.st_ino, 1)])
    check_invariants(fs)


async def test_readdir_offsets_are_stable_under_concurrent_change(fs: LocalFilesystem) -> None:
    ops = fs.operations
    for i in range(20):
        fh, _ = await create(fs, ROOT, f"f{i:02}".encode())
        await ops.release(fh)
    seen: list[bytes] = []
    real_reply = pyfuse3.readdir_reply

    def reply(token, name, attrs, next_id):
        if len(token) >= 5:
            return False
        token.append((name, next_id))
        return True

    pyfuse3.readdir_reply = reply
    try:
        token: list = []
        await ops.readdir(ROOT, 0, token)
        seen += [n for n, _ in token]
        await ops.unlink(ROOT, b"f00", CTX)  # removed before the next batch
        await ops.rename(ROOT, b"f10", ROOT, b"renamed", 0, CTX)
        offset = token[-1][1]
        while True:
            token = []
            await ops.readdir(ROOT, offset, token)
            if not token:
                break
            seen += [n for n, _ in token]
            offset = token[-1][1]
    finally:
        pyfuse3.readdir_reply = real_reply
    assert seen[:2] == [b".", b".."]
    assert len(seen) == len(set(seen)) == 22  # no entry twice, none skipped
    assert b"renamed" in seen


async def test_xattrs_and_virtual_names(fs: LocalFilesystem) -> None:
    ops = fs.operations
    fh, ino = await create(fs, ROOT, b"x")
    await ops.write(fh, 0, b"data")
    await ops.release(fh)
    await ops.setxattr(ino, b"user.k", b"v", CTX)
    assert await ops.getxattr(ino, b"user.k", CTX) == b"v"
    assert b"user.k" in await ops.listxattr(ino, CTX)
    assert await ops.listxattr(ino, CTX) == [b"user.k"]  # virtual names are not listed
    assert await ops.getxattr(ino, b"user.dhtfs.chunk_size", CTX) == str(CS).encode()
    for name in (b"user.dhtfs.chunks", b"system.posix_acl_access"):
        with pytest.raises(pyfuse3.FUSEError):
            await ops.setxattr(ino, name, b"1", CTX)
    await ops.removexattr(ino, b"user.k", CTX)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getxattr(ino, b"user.k", CTX)
    assert e.value.errno == errno.ENODATA


async def test_unexpected_errors_become_eio_not_crashes(fs: LocalFilesystem) -> None:
    ops = fs.operations
    fh, ino = await create(fs, ROOT, b"c")
    await ops.write(fh, 0, os.urandom(CS))
    await ops.release(fh)
    cid = next(fs.namespace.linked_blocks())
    path = fs.store.path_of(cid)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    fs.contents.cache = type(fs.contents.cache)(0)  # no cached plaintext
    info = await ops.open(ino, os.O_RDONLY, CTX)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.read(info.fh, 0, 10)
    assert e.value.errno == errno.EIO
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getattr(999_999)
    assert e.value.errno == errno.ENOENT


async def test_inode_numbers_are_never_reused(fs: LocalFilesystem) -> None:
    ops = fs.operations
    seen = set()
    for _ in range(5):
        fh, ino = await create(fs, ROOT, b"same")
        await ops.release(fh)
        assert ino not in seen
        seen.add(ino)
        await ops.unlink(ROOT, b"same", CTX)
        await ops.forget([(ino, 1)])


async def test_a_snapshot_install_invalidates_every_entry_the_kernel_was_given(
    fs: LocalFilesystem,
) -> None:
    """Entries live ``ENTRY_TIMEOUT`` (10 s) in the kernel: when the whole tree is replaced,
    every name the kernel was given for a number it still holds is queued for invalidation
    (lookup, create, link, mkdir and readdirplus replies), with every inode it holds."""
    from dhtfs.fs.remote import RemoteChanges

    ops = fs.operations
    _fh, f = await create(fs, ROOT, b"f")
    d = (await ops.mkdir(ROOT, b"d", 0o755, CTX)).st_ino
    await ops.link(f, d, b"g", CTX)
    assert (await ops.lookup(ROOT, b"f", CTX)).st_ino == f
    _fh2, h = await create(fs, d, b"h")
    ops.inodes.forget(h, 1)  # the kernel forgot h: its name need not be invalidated
    remote = RemoteChanges(fs.namespace, fs.inodes, ops.contents)
    remote.everything_changed()
    queued = set()
    while True:
        try:
            queued.add(remote._recv.receive_nowait())
        except trio.WouldBlock:
            break
    assert queued == {
        (ROOT, b"f", False), (d, b"g", False), (ROOT, b"d", False),
        (f, None, False), (d, None, False),
    }
