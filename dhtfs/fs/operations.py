"""The pyfuse3 handlers: map inodes to objects and handles to open files, call Tree and
FileContents, reply with what ``dhtfs.fs.attributes`` builds.

Handlers hold no logic of their own. Every handler runs inside ``errno_mapped``
(``dhtfs.fs.errnos``): any exception other than FUSEError would kill the mount. Attributes
and statfs come from ``dhtfs.fs.attributes``, the ``user.dhtfs.*`` xattrs from
``dhtfs.fs.xattrs``, fsync's wait for replicas from ``FileContents.make_durable``.

The kernel enforces permissions (``default_permissions``); entry and attribute timeouts are
long because remote changes invalidate what the kernel cached (``dhtfs.fs.attributes``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3

from dhtfs.base.errors import NamespaceError
from dhtfs.fs.attributes import NEGATIVE_TIMEOUT, direct_io, entry_attributes, statfs_of
from dhtfs.fs.buffers import OpenFile
from dhtfs.fs.compaction import Compactor
from dhtfs.fs.errnos import errno_mapped
from dhtfs.fs.files import FileContents
from dhtfs.fs.inodes import InodeMap
from dhtfs.fs.xattrs import VIRTUAL_PREFIX, check_settable, file_extents, virtual_value
from dhtfs.meta.extents import Piece
from dhtfs.meta.schema import ObjectRow
from dhtfs.meta.tree import Tree
from dhtfs.net.control import CONTROL_SOCKET_NAME

log = logging.getLogger(__name__)

DOT_OFFSET, DOTDOT_OFFSET = 1, 2  # readdir offsets of "." and ".."; links follow


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
        self.observe = observe
        self.locate = locate
        self.replicate = replicate
        self.swarm_short_of_space = swarm_short_of_space
        self.after_init = after_init
        # Told each object whose attributes changed behind the kernel's back (a dropped
        # change); the mount wires ``RemoteChanges.changed_here`` (None: nobody is told).
        self.invalidate: Callable[[bytes], None] | None = None
        self.contents = contents(commit=self._commit_content, on_dropped=self._dropped)
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
        if ino is None:
            if row.is_dir:
                ino = self.inodes.ino_of(row.obj, new=new)
            else:  # the same number on every node (``InodeMap.file_ino``)
                ino = self.inodes.file_ino(row.obj)
        of = self.contents.open_files.get(row.obj)
        return entry_attributes(row, ino, of, self.tree.ns, new=new)

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
        depends on it, and on ``follow``: ``InodeMap.dir_ino``; a file's is recorded:
        ``InodeMap.entered``)."""
        row = self.tree.require(obj)
        ino = None
        if place is not None and row.is_dir:
            ino = self.inodes.dir_ino(obj, place[0], place[1], new=new, follow=follow)
        attrs = self._attrs(row, ino, new=new)
        self.inodes.remember(attrs.st_ino)
        if place is not None and not row.is_dir:
            self.inodes.entered(attrs.st_ino, place)
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

    def _dropped(self, obj: bytes) -> None:
        """A change of ``obj`` was dropped (disk full): the next open must not keep the
        kernel's pages of it, and the kernel's size and mtime of it are stale."""
        self._kernel_version.pop(obj, None)
        if self.invalidate is not None:
            self.invalidate(obj)

    def _commit_content(self, of: OpenFile) -> tuple[int, bytes]:
        op = self.tree.set_content(
            of.obj, of.size, of.chunk_size, of.cut, self.contents.change(of), of.base, of.mtime
        )
        self._kernel_version[of.obj] = op.op_id
        if self.on_content is not None and of.new:
            self.on_content(of.obj, of.new)
        return op.op_id

    # -- lookups and attributes ----------------------------------------------------------------

    @errno_mapped
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None):
        parent = self._obj(parent_inode)
        if name == b".":
            return self._entry(parent)
        if name == b"..":
            return self._entry(self.tree.ns.parent_of(parent) or parent)
        hit = self.tree.find_entry(parent, name)
        if hit is None:  # a negative entry, which the kernel caches for NEGATIVE_TIMEOUT
            missing = pyfuse3.EntryAttributes()
            missing.st_ino = 0
            missing.entry_timeout = NEGATIVE_TIMEOUT
            return missing
        follow = self.inodes.follower is not None and getattr(ctx, "pid", None) in (
            self.inodes.follower,
            os.getpid(),
        )
        return self._entry(hit[1], place=(parent_inode, name), follow=follow)

    @errno_mapped
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @errno_mapped
    async def getattr(self, inode: int, ctx: Any = None):
        return self._attrs(self.tree.require(self._obj(inode)), inode)

    @errno_mapped
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

    @errno_mapped
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

    @errno_mapped
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx):
        parent = self._obj(parent_inode)
        gid, mode = self._new_group(parent, mode, ctx)
        obj = self.tree.create(parent, name, stat.S_IFMT(mode), mode, ctx.uid, gid, rdev=rdev)
        return self._entry(obj, new=True, place=(parent_inode, name))

    @errno_mapped
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx):
        parent = self._obj(parent_inode)
        gid, mode = self._new_group(parent, stat.S_IFDIR | mode, ctx)
        obj = self.tree.create(parent, name, stat.S_IFDIR, mode, ctx.uid, gid)
        return self._entry(obj, new=True, place=(parent_inode, name))

    @errno_mapped
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx):
        parent = self._obj(parent_inode)
        gid, _mode = self._new_group(parent, stat.S_IFLNK | 0o777, ctx)
        obj = self.tree.create(parent, name, stat.S_IFLNK, 0o777, ctx.uid, gid, target=target)
        return self._entry(obj, new=True, place=(parent_inode, name))

    @errno_mapped
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
        direct = direct_io(flags, row, has_xattrs=False)
        info = pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=direct)
        return info, self._entry(obj, new=True, place=(parent_inode, name))

    @errno_mapped
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx):
        obj = self._obj(inode)
        self.tree.link(obj, self._obj(new_parent_inode), new_name)
        return self._entry(obj, place=(new_parent_inode, new_name))

    @errno_mapped
    async def unlink(self, parent_inode: int, name: bytes, ctx) -> None:
        self.tree.remove(self._obj(parent_inode), name, directory=False)

    @errno_mapped
    async def rmdir(self, parent_inode: int, name: bytes, ctx) -> None:
        self.tree.remove(self._obj(parent_inode), name, directory=True)
        self.inodes.removed((parent_inode, name))

    @errno_mapped
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

    @errno_mapped
    async def open(self, inode: int, flags: int, ctx):
        row = self.tree.require(self._obj(inode))
        if row.is_dir:
            raise NamespaceError(errno.EISDIR)
        of = self.contents.load(row)
        if flags & os.O_TRUNC and of.size:
            await self.contents.truncate(of, 0)
        keep = self._kernel_version.get(row.obj) == (row.content_ts, row.content_node)
        self._kernel_version[row.obj] = (row.content_ts, row.content_node)
        direct = direct_io(flags, row, self.tree.ns.has_xattrs(row.obj))
        return pyfuse3.FileInfo(fh=self._new_fh(of), keep_cache=keep, direct_io=direct)

    @errno_mapped
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.contents.read(self._file(fh), off, size)

    @errno_mapped
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.contents.write(self._file(fh), off, buf)

    @errno_mapped
    async def flush(self, fh: int) -> None:
        await self.contents.flush(self._file(fh))

    @errno_mapped
    async def fsync(self, fh: int, datasync: bool) -> None:
        of = self._file(fh)
        await self.contents.flush(of)
        await self.durable([of])

    async def durable(self, files: list[OpenFile]) -> None:
        """Make the named files' blocks (those stored since their last fsync) and all applied
        metadata survive power loss here, then (a swarm mount) wait for those blocks to be on
        their R nodes: EIO if ``replicate`` says some could not get there in time, ENOSPC if
        they could not because the nodes they go to are full (``FileContents.make_durable``)."""
        await self.contents.make_durable(
            files, self.tree.ns, self.replicate, self.swarm_short_of_space
        )

    @errno_mapped
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

    @errno_mapped
    async def opendir(self, inode: int, ctx):
        self.tree.require_dir(self._obj(inode))
        return inode

    @errno_mapped
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
                if ino is None:
                    self.inodes.entered(attrs.st_ino, (fh, name))
                after = row_id

    @errno_mapped
    async def releasedir(self, fh: int) -> None:
        return None

    @errno_mapped
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.durable([])

    @errno_mapped
    async def statfs(self, ctx):
        """The state directory's disk as df shows it on the mount (``statfs_of``)."""
        return statfs_of(self.contents.space, self.tree.ns.object_count())

    # -- extended attributes -------------------------------------------------------------------

    @errno_mapped
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx) -> None:
        check_settable(name, value)
        self.tree.set_xattr(self._obj(inode), name, value)

    @errno_mapped
    async def removexattr(self, inode: int, name: bytes, ctx) -> None:
        check_settable(name)
        self.tree.set_xattr(self._obj(inode), name, None)

    @errno_mapped
    async def getxattr(self, inode: int, name: bytes, ctx) -> bytes:
        if name.startswith(b"system."):
            raise NamespaceError(errno.ENODATA)  # never stored (ls asks for ACLs on every entry)
        obj = self._obj(inode)
        value = None
        if name.startswith(VIRTUAL_PREFIX):
            row = self.tree.require(obj)
            of = self.contents.open_files.get(obj)
            value = await virtual_value(
                name,
                row,
                lambda: file_extents(row, of, self.tree.ns, self.contents.pieces),
                control_socket=os.path.join(self.state_dir, CONTROL_SOCKET_NAME),
                locate=self.locate,
            )
        if value is None:
            value = self.tree.ns.xattr(obj, name)
        if value is None:
            raise NamespaceError(errno.ENODATA)
        return value

    @errno_mapped
    async def listxattr(self, inode: int, ctx) -> list[bytes]:
        # The virtual user.dhtfs.* names are readable by name but not listed: xattr-copying
        # tools (cp -a, rsync -X, tar --xattrs) would otherwise try to set them on copies.
        obj = self._obj(inode)
        self.tree.require(obj)
        return self.tree.ns.xattr_names(obj)
