"""The pyfuse3 handlers: map inodes to objects, call Tree/FileContents, map errors to errnos.

Handlers hold no logic of their own. Every handler runs inside ``_errno_mapped``: any
exception other than FUSEError would kill the mount, so NamespaceError and OSError become their
errno and anything unexpected becomes EIO with the traceback logged.

The kernel enforces permissions (``default_permissions``); entry and attribute timeouts are
short because other nodes change the tree too.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from dhtfs.base.durable import fsync_file
from dhtfs.base.errors import DhtfsError, NamespaceError
from dhtfs.fs.compaction import Compactor
from dhtfs.fs.files import FileContents, OpenFile
from dhtfs.fs.inodes import InodeMap
from dhtfs.fs.xattrs import VIRTUAL_PREFIX, check_settable, virtual_value
from dhtfs.meta.extents import Piece
from dhtfs.meta.namespace import Namespace, ObjectRow
from dhtfs.meta.tree import Tree
from dhtfs.net.control import CONTROL_SOCKET_NAME

log = logging.getLogger(__name__)

ENTRY_TIMEOUT = 1.0
ATTR_TIMEOUT = 1.0
DOT_OFFSET, DOTDOT_OFFSET = 1, 2  # readdir offsets of "." and ".."; links follow
BLKSIZE = 128 * 1024
SQLITE_FULL = 13  # sqlite3.Error.sqlite_errorcode of "database or disk is full"

F = TypeVar("F", bound=Callable[..., Any])


# Handlers that persist the namespace (Namespace.persist: the op journal) before they reply,
# so that what the kernel was told survives a crash of this process. The others change
# nothing, or (create) are always followed by a flush/release of their handle, which
# persists; the service's commit task commits everything shortly after in any case.
PERSISTING_HANDLERS = frozenset(
    {
        "mknod",
        "mkdir",
        "symlink",
        "link",
        "unlink",
        "rmdir",
        "rename",
        "setattr",
        "setxattr",
        "removexattr",
        "flush",
        "fsync",
        "fsyncdir",
        "release",
    }
)


# Handlers that change the tree: refused with ENOSPC before they apply anything when the op
# journal can no longer keep room to record them (the disk is full; see journal.has_room).
ROOM_CHECKED_HANDLERS = frozenset(
    {"mknod", "mkdir", "symlink", "link", "rename", "setattr", "setxattr", "removexattr",
     "create"}
)


def _errno_mapped(fn: F) -> F:
    """Map every exception of a handler to an errno; persist as PERSISTING_HANDLERS says."""
    deferred = fn.__name__ not in PERSISTING_HANDLERS
    name = fn.__name__
    room_checked = name in ROOM_CHECKED_HANDLERS

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any, **kwargs: Any) -> Any:
        observe = self.observe  # metrics: every request timed, by kind and outcome
        t0 = time.perf_counter() if observe is not None else 0.0
        ok = False
        try:
            journal = self.tree.ns.journal
            if room_checked and journal is not None and not journal.has_room():
                raise pyfuse3.FUSEError(errno.ENOSPC)
            result = await fn(self, *args, **kwargs)
            ok = True
            return result
        except pyfuse3.FUSEError:
            raise
        except NamespaceError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.warning("%s failed: %s", name, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except DhtfsError as exc:
            log.error("%s failed: %s", name, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except sqlite3.Error as exc:
            log.error("%s failed: %s", name, exc)
            raise pyfuse3.FUSEError(_storage_errno(exc)) from None
        except Exception:
            log.exception("%s failed unexpectedly; returning EIO", name)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if not deferred and self.tree.ns.pending:
                _persist(self.tree.ns)  # also after a failure: earlier ops were acknowledged
            if observe is not None:
                observe(name, ok, time.perf_counter() - t0)

    return wrapper  # type: ignore[return-value]


def _persist(ns: Namespace) -> None:
    try:
        ns.persist()
    except (OSError, sqlite3.Error) as exc:
        log.error("persisting metadata failed: %s (is the state directory's disk full?)", exc)
        raise pyfuse3.FUSEError(_storage_errno(exc)) from None


def _storage_errno(exc: OSError | sqlite3.Error) -> int:
    """ENOSPC for a full disk (an OSError's, or SQLite's SQLITE_FULL), else EIO."""
    if isinstance(exc, OSError):
        return errno.ENOSPC if exc.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO
    return errno.ENOSPC if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL else errno.EIO


def _direct_io(flags: int, row: ObjectRow, has_xattrs: bool) -> bool:
    """Whether a handle bypasses the page cache (FOPEN_DIRECT_IO): write-only handles of
    files with no set-ID bits and no xattrs.

    A write-only handle cannot read or mmap, so caching its writes gains nothing, and the
    direct path saves a copy into the page cache and the security.capability getxattr the
    kernel sends before every cached write. That getxattr is how the kernel clears set-ID
    bits and file capabilities on an unprivileged write (file_remove_privs); on the direct
    path it leaves that to the server through a write flag pyfuse3 does not pass on, hence
    files with set-ID bits or xattrs keep the cached path. The kernel drops cached pages of
    a directly written range, so readers on other handles stay coherent.
    """
    return (
        flags & os.O_ACCMODE == os.O_WRONLY
        and not row.mode & (stat.S_ISUID | stat.S_ISGID)
        and not has_xattrs
    )


class Operations(pyfuse3.Operations):
    """FUSE request handlers over one Tree and one FileContents."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: Tree,
        inodes: InodeMap,
        state_dir: str,
        contents: Callable[..., FileContents],
        *,
        compact: bool = False,
        observe: Callable[[str, bool, float], None] | None = None,
        locate: Callable[[list[bytes]], Awaitable[dict[bytes, list[list[Any]]]]] | None = None,
        replicate: Callable[[list[bytes]], Awaitable[list[bytes]]] | None = None,
        swarm_short_of_space: Callable[[], bool] = lambda: False,
        after_init: Callable[[], None] | None = None,
    ):
        """``contents(commit=..., on_dropped=...)`` builds the FileContents these handlers
        serve, given the way they commit a file's change (``_commit_content``) and forget the
        kernel's pages of a dropped change; with ``compact``, a ``Compactor`` is told of each
        content change committed here (its ``run`` is the caller's to start).
        ``observe`` (metrics, ``dhtfs.runtime.metrics``) is told of every request (handler
        name, success, seconds). A swarm mount's: ``locate`` looks up providers (block →
        [[node hex, "host:port", rtt ms | None]]); ``replicate`` waits for blocks to reach
        their replicas and returns the ones that did not; ``swarm_short_of_space()`` says
        whether the peers a block should go to are too often full for its copies (then an
        fsync that could not replicate fails with ENOSPC, not EIO). ``after_init`` is called
        when FUSE_INIT is handled."""
        super().__init__()
        self.tree = tree
        self.inodes = inodes
        self.state_dir = state_dir
        self._handles: dict[int, OpenFile] = {}
        self._next_fh = 1
        self._kernel_version: dict[bytes, tuple[int, bytes]] = {}
        self._data_chunks: dict[tuple[bytes, int, bytes], int] = {}
        self.observe = observe
        self.locate = locate
        self.replicate = replicate
        self.swarm_short_of_space = swarm_short_of_space
        self.after_init = after_init
        # A dropped change (disk full): the next open must not keep the kernel's pages of it.
        self.contents = contents(
            commit=self._commit_content,
            on_dropped=lambda obj: self._kernel_version.pop(obj, None),
        )
        self.compactor = Compactor(tree, self.contents) if compact else None
        # Told (obj, {chunk index: pieces laid}) after each content change committed here.
        self.on_content: Callable[[bytes, dict[int, list[Piece]]], None] | None = (
            self.compactor.changed if self.compactor is not None else None
        )

    def init(self) -> None:
        """FUSE_INIT (pyfuse3 forbids raising here)."""
        if self.after_init is not None:
            try:
                self.after_init()
            except Exception:
                log.exception("post-init hook failed")

    # -- helpers -------------------------------------------------------------------------------

    def _obj(self, ino: int) -> bytes:
        obj = self.inodes.obj_of(ino)
        if obj is None:
            raise NamespaceError(errno.ENOENT)
        return obj

    def _attrs(
        self, row: ObjectRow, ino: int | None = None, *, new: bool = False
    ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino if ino is not None else self.inodes.ino_of(row.obj, new=new)
        a.generation = 0
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = row.kind | row.mode
        a.st_uid = row.uid
        a.st_gid = row.gid
        a.st_rdev = row.rdev
        a.st_atime_ns = row.atime
        a.st_ctime_ns = row.ctime
        a.st_blksize = BLKSIZE
        of = self.contents.open_files.get(row.obj)
        if row.is_dir:  # a just-created object has one name and no subdirectories
            a.st_nlink = 2 if new else 2 + self.tree.ns.subdir_count(row.obj)
            a.st_size = 4096
            a.st_blocks = 8
            a.st_mtime_ns = row.mtime
        else:
            a.st_nlink = 1 if new else self.tree.ns.link_count(row.obj)
            if of is not None:
                size, mtime, cs = of.size, of.mtime, of.chunk_size
                stored = self._chunks_with_data(row) + len(of.new) + len(of.buffers)
            elif row.kind == stat.S_IFLNK:
                size, mtime, cs, stored = len(row.target or b""), row.mtime, 0, 0
            else:
                size, mtime, cs = row.size, row.mtime, row.chunk_size
                stored = self._chunks_with_data(row) if size else 0
            a.st_size = size
            a.st_mtime_ns = mtime
            a.st_blocks = (min(size, stored * cs) + 511) // 512 if cs else (size + 511) // 512
        return a

    def _chunks_with_data(self, row: ObjectRow) -> int:
        """How many chunks of ``row``'s version hold data (cached per version: a count over
        the file's extents rows)."""
        version = (row.obj, row.content_ts, row.content_node)
        count = self._data_chunks.get(version)
        if count is None:
            if len(self._data_chunks) >= 4096:
                self._data_chunks.clear()
            count = self._data_chunks[version] = self.tree.ns.chunks_with_data(row.obj)
        return count

    def _entry(
        self,
        obj: bytes,
        *,
        new: bool = False,
        place: tuple[int, bytes] | None = None,
        follow: bool = False,
    ) -> pyfuse3.EntryAttributes:
        """Attributes for an entry reply (counts a kernel lookup); ``new``: just created;
        ``place``: the entry replied, ``(parent inode, name)`` (a directory's number
        depends on it, and on ``follow``: ``InodeMap.dir_ino``)."""
        row = self.tree.require(obj)
        ino = None
        if place is not None and row.is_dir:
            ino = self.inodes.dir_ino(obj, place[0], place[1], new=new, follow=follow)
        attrs = self._attrs(row, ino, new=new)
        self.inodes.remember(attrs.st_ino)
        return attrs

    def _new_fh(self, of: OpenFile) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = of
        of.handles += 1
        return fh

    def _file(self, fh: int) -> OpenFile:
        of = self._handles.get(fh)
        if of is None:
            raise NamespaceError(errno.EBADF)
        return of

    def _commit_content(self, of: OpenFile) -> tuple[int, bytes]:
        op = self.tree.set_content(
            of.obj, of.size, of.chunk_size, of.cut, self.contents.change(of), of.base, of.mtime
        )
        self._kernel_version[of.obj] = op.op_id
        if self.on_content is not None and of.new:
            self.on_content(of.obj, of.new)
        return op.op_id

    # -- lookups and attributes ----------------------------------------------------------------

    @_errno_mapped
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None):
        parent = self._obj(parent_inode)
        if name == b".":
            return self._entry(parent)
        if name == b"..":
            return self._entry(self.tree.ns.parent_of(parent) or parent)
        hit = self.tree.find_entry(parent, name)
        if hit is None:  # a negative entry, which the kernel caches for ENTRY_TIMEOUT
            missing = pyfuse3.EntryAttributes()
            missing.st_ino = 0
            missing.entry_timeout = ENTRY_TIMEOUT
            return missing
        follow = self.inodes.follower is not None and getattr(ctx, "pid", None) in (
            self.inodes.follower,
            os.getpid(),
        )
        return self._entry(hit[1], place=(parent_inode, name), follow=follow)

    @_errno_mapped
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @_errno_mapped
    async def getattr(self, inode: int, ctx: Any = None):
        return self._attrs(self.tree.require(self._obj(inode)), inode)

    @_errno_mapped
    async def setattr(self, inode: int, attr, fields, fh, ctx):
        obj = self._obj(inode)
        row = self.tree.require(obj)
        now = time.time_ns()
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns
        if fields.update_size:
            if row.is_dir:
                raise NamespaceError(errno.EISDIR)
            of = self.contents.load(row)
            try:
                await self.contents.truncate(of, attr.st_size)  # EFBIG changes nothing
                if "mtime" in changes:
                    of.mtime = changes["mtime"]
                await self.contents.flush(of)
            finally:
                self.contents.release(of)
        if changes:
            changes["ctime"] = now
            if "mtime" in changes and obj in self.contents.open_files:
                self.contents.open_files[obj].mtime = changes["mtime"]
            self.tree.set_attrs(obj, changes)
        return self._attrs(self.tree.require(obj), inode)

    @_errno_mapped
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        row = self.tree.require(self._obj(inode))
        if row.kind != stat.S_IFLNK:
            raise NamespaceError(errno.EINVAL)
        return row.target or b""

    # -- creating and removing names -----------------------------------------------------------

    def _new_group(self, parent: bytes, mode: int, ctx: Any) -> tuple[int, int]:
        """(gid, mode) of a new entry: a set-group-ID directory passes on its group, and to
        subdirectories the bit itself (Linux/BSD semantics; the kernel leaves this to us)."""
        row = self.tree.require(parent)
        if not row.mode & stat.S_ISGID:
            return ctx.gid, mode
        return row.gid, mode | stat.S_ISGID if stat.S_ISDIR(mode) else mode

    @_errno_mapped
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx):
        parent = self._obj(parent_inode)
        gid, mode = self._new_group(parent, mode, ctx)
        obj = self.tree.create(parent, name, stat.S_IFMT(mode), mode, ctx.uid, gid, rdev=rdev)
        return self._entry(obj, new=True)

    @_errno_mapped
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx):
        parent = self._obj(parent_inode)
        gid, mode = self._new_group(parent, stat.S_IFDIR | mode, ctx)
        obj = self.tree.create(parent, name, stat.S_IFDIR, mode, ctx.uid, gid)
        return self._entry(obj, new=True, place=(parent_inode, name))

    @_errno_mapped
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx):
        parent = self._obj(parent_inode)
        gid, _mode = self._new_group(parent, stat.S_IFLNK | 0o777, ctx)
        obj = self.tree.create(parent, name, stat.S_IFLNK, 0o777, ctx.uid, gid, target=target)
        return self._entry(obj, new=True)

    @_errno_mapped
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx):
        parent = self._obj(parent_inode)
        gid, mode = self._new_group(parent, stat.S_IFREG | mode, ctx)
        try:
            obj = self.tree.create(parent, name, stat.S_IFREG, mode, ctx.uid, gid)
        except NamespaceError as exc:
            if exc.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            # The kernel's entry said "no such name", but another node created it since
            # (its invalidation not in yet). open(O_CREAT) without O_EXCL must open that
            # file, never say EEXIST: ESTALE makes the VFS walk again with a fresh lookup
            # (do_filp_open's LOOKUP_REVAL retry), which finds the file and opens it with
            # the usual permission checks and O_TRUNC.
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        row = self.tree.require(obj)
        of = self.contents.load(row)
        fh = self._new_fh(of)
        self._kernel_version[obj] = of.base
        direct = _direct_io(flags, row, has_xattrs=False)
        info = pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=direct)
        return info, self._entry(obj, new=True)

    @_errno_mapped
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx):
        obj = self._obj(inode)
        self.tree.link(obj, self._obj(new_parent_inode), new_name)
        return self._entry(obj)

    @_errno_mapped
    async def unlink(self, parent_inode: int, name: bytes, ctx) -> None:
        self.tree.remove(self._obj(parent_inode), name, directory=False)

    @_errno_mapped
    async def rmdir(self, parent_inode: int, name: bytes, ctx) -> None:
        self.tree.remove(self._obj(parent_inode), name, directory=True)
        self.inodes.removed((parent_inode, name))

    @_errno_mapped
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        parent_old = self._obj(parent_inode_old)
        hit = self.tree.ns.lookup(parent_old, name_old)  # what the kernel's entry should be
        self.tree.rename(parent_old, name_old, self._obj(parent_inode_new), name_new, flags)
        self.inodes.renamed(
            (parent_inode_old, name_old),
            (parent_inode_new, name_new),
            hit[1] if hit is not None else None,
            exchange=bool(flags & pyfuse3.RENAME_EXCHANGE),
        )

    # -- file contents -------------------------------------------------------------------------

    @_errno_mapped
    async def open(self, inode: int, flags: int, ctx):
        row = self.tree.require(self._obj(inode))
        if row.is_dir:
            raise NamespaceError(errno.EISDIR)
        of = self.contents.load(row)
        if flags & os.O_TRUNC and of.size:
            await self.contents.truncate(of, 0)
        keep = self._kernel_version.get(row.obj) == (row.content_ts, row.content_node)
        self._kernel_version[row.obj] = (row.content_ts, row.content_node)
        direct = _direct_io(flags, row, self.tree.ns.has_xattrs(row.obj))
        return pyfuse3.FileInfo(fh=self._new_fh(of), keep_cache=keep, direct_io=direct)

    @_errno_mapped
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.contents.read(self._file(fh), off, size)

    @_errno_mapped
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.contents.write(self._file(fh), off, buf)

    @_errno_mapped
    async def flush(self, fh: int) -> None:
        await self.contents.flush(self._file(fh))

    @_errno_mapped
    async def fsync(self, fh: int, datasync: bool) -> None:
        of = self._file(fh)
        await self.contents.flush(of)
        await self.durable([of])

    async def durable(self, files: list[OpenFile]) -> None:
        """Make the named files' blocks (those stored since their last fsync) and all applied
        metadata survive power loss here, then (a swarm mount) wait for those blocks to be on
        their R nodes: EIO if ``replicate`` says some could not get there in time, ENOSPC if
        they could not because the nodes they go to are full."""
        self.tree.ns.commit()
        taken = {of.obj: await self.contents.take_unsynced(of.obj) for of in files}
        ids = [i for blocks in taken.values() for i in blocks]
        wal = os.path.join(self.state_dir, "namespace.db-wal")

        def sync() -> None:
            self.contents.store.sync(ids)
            fsync_file(wal)

        try:
            await trio.to_thread.run_sync(sync)
            missing = await self.replicate(ids) if self.replicate is not None and ids else []
        except BaseException:
            for obj, blocks in taken.items():
                self.contents.put_back_unsynced(obj, blocks)
            raise
        if missing:
            for obj, blocks in taken.items():
                self.contents.put_back_unsynced(obj, blocks)
            if self.swarm_short_of_space():
                log.error("fsync: %d of %d blocks cannot get their copies: the nodes they go "
                          "to are out of space (see their dhtfs status); the data is safe "
                          "here and keeps replicating", len(missing), len(ids))
                raise NamespaceError(errno.ENOSPC, "the swarm's replicas are out of space")
            log.error(
                "fsync: %d of %d blocks did not reach their replicas in time (is the swarm "
                "reachable? see replication_deadline); the data is safe here and keeps "
                "replicating", len(missing), len(ids)
            )
            raise NamespaceError(errno.EIO, "replication deadline passed")

    @_errno_mapped
    async def release(self, fh: int) -> None:
        of = self._handles.pop(fh, None)
        if of is None:
            return
        of.handles -= 1
        try:
            await self.contents.flush(of)
        finally:
            self.contents.release(of)

    # -- directories ---------------------------------------------------------------------------

    @_errno_mapped
    async def opendir(self, inode: int, ctx):
        self.tree.require_dir(self._obj(inode))
        return inode

    @_errno_mapped
    async def readdir(self, fh: int, start_id: int, token) -> None:
        """``.`` (offset 1), ``..`` (offset 2), then the links in rowid order at offset
        rowid + 2: offsets stay valid whatever is added, renamed or removed meanwhile."""
        parent = self._obj(fh)
        if start_id < DOT_OFFSET:
            attrs = self._attrs(self.tree.require(parent), fh)
            if not pyfuse3.readdir_reply(token, b".", attrs, DOT_OFFSET):
                return
        if start_id < DOTDOT_OFFSET:
            up = self.tree.ns.parent_of(parent) or parent
            # readdirplus counts no kernel lookup for "." and "..": nothing to remember.
            attrs = self._attrs(self.tree.require(up))
            if not pyfuse3.readdir_reply(token, b"..", attrs, DOTDOT_OFFSET):
                return
        after = max(start_id - DOTDOT_OFFSET, 0)
        while True:
            batch = self.tree.ns.children_with_objects(parent, after, 256)
            if not batch:
                return
            for row_id, name, row in batch:
                ino = self.inodes.dir_ino(row.obj, fh, name) if row.is_dir else None
                attrs = self._attrs(row, ino)
                if not pyfuse3.readdir_reply(token, name, attrs, row_id + DOTDOT_OFFSET):
                    return
                self.inodes.remember(attrs.st_ino)
                after = row_id

    @_errno_mapped
    async def releasedir(self, fh: int) -> None:
        return None

    @_errno_mapped
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.durable([])

    @_errno_mapped
    async def statfs(self, ctx):
        """The state directory's disk (df on the mount): free less what writes acknowledged
        and not yet stored hold (``space.reserved``); available also less the margin kept
        for metadata, i.e. about what writes may still take."""
        space = self.contents.space
        st = space.measure()
        frsize = st.f_frsize or 4096
        held = -(-space.reserved // frsize)
        s = pyfuse3.StatvfsData()
        s.f_bsize = st.f_bsize
        s.f_frsize = st.f_frsize
        s.f_blocks = st.f_blocks
        s.f_bfree = max(0, st.f_bfree - held)
        s.f_bavail = max(0, st.f_bavail - held - space.margin // frsize)
        count = self.tree.ns.object_count()
        s.f_files = count + st.f_ffree
        s.f_ffree = st.f_ffree
        s.f_favail = st.f_favail
        s.f_namemax = 255
        return s

    # -- extended attributes -------------------------------------------------------------------

    @_errno_mapped
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx) -> None:
        check_settable(name, value)
        self.tree.set_xattr(self._obj(inode), name, value)

    @_errno_mapped
    async def removexattr(self, inode: int, name: bytes, ctx) -> None:
        check_settable(name)
        self.tree.set_xattr(self._obj(inode), name, None)

    @_errno_mapped
    async def getxattr(self, inode: int, name: bytes, ctx) -> bytes:
        if name.startswith(b"system."):
            raise NamespaceError(errno.ENODATA)  # never stored (ls asks for ACLs on every entry)
        obj = self._obj(inode)
        if not name.startswith(VIRTUAL_PREFIX):
            value = self.tree.ns.xattr(obj, name)
            if value is None:
                raise NamespaceError(errno.ENODATA)
            return value
        row = self.tree.require(obj)
        of = self.contents.open_files.get(obj)
        if name == b"user.dhtfs.control":  # where ``dhtfs sync`` finds this mount
            return os.path.join(self.state_dir, CONTROL_SOCKET_NAME).encode()
        if name in (b"user.dhtfs.replicas", b"user.dhtfs.providers") and self.locate:
            blocks = list(dict.fromkeys(e[2] for e in self._extents(row, of)))
            found = await self.locate(blocks)
            if name == b"user.dhtfs.replicas":
                doc: list[Any] = [[b.hex(), len(found.get(b, []))] for b in blocks]
            else:
                doc = [[b.hex(), found.get(b, [])] for b in blocks]
            return json.dumps(doc).encode()
        value = virtual_value(name, row, lambda: self._extents(row, of))
        if value is None:
            value = self.tree.ns.xattr(obj, name)
        if value is None:
            raise NamespaceError(errno.ENODATA)
        return value

    def _extents(self, row: ObjectRow, of: OpenFile | None) -> list[list[Any]]:
        """``[offset, length, block, block_offset]`` of every extent of the file, in order
        (an open file's as its readers see it, uncommitted blocks included)."""
        if of is None:
            cs = row.chunk_size
            return [
                [i * cs + pos, n, block, boff]
                for i, pieces in self.tree.ns.extents(row.obj)
                for pos, n, block, boff in pieces
            ]
        indexes = sorted({i for i, _ in self.tree.ns.extents(row.obj)} | set(of.new))
        cs = of.chunk_size
        return [
            [i * cs + pos, n, block, boff]
            for i in indexes
            for pos, n, block, boff in self.contents.pieces(of, i)
        ]

    @_errno_mapped
    async def listxattr(self, inode: int, ctx) -> list[bytes]:
        # The virtual user.dhtfs.* names are readable by name but not listed: xattr-copying
        # tools (cp -a, rsync -X, tar --xattrs) would otherwise try to set them on copies.
        obj = self._obj(inode)
        self.tree.require(obj)
        return self.tree.ns.xattr_names(obj)
