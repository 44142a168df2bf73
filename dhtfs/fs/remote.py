"""What a mount does when ops from other nodes arrive: kernel cache invalidation and open
files brought up to date.

The kernel caches entries (names → inodes, and missing names), attributes and file pages for
up to their timeouts; a remote change must be visible at once, so each applied remote op
queues ``invalidate_entry`` for every name it touched (before and after) and
``invalidate_inode`` for every object it changed (with the pages, for content).

Invariants:
- invalidations never run inline: the kernel may hold locks that a pending request waits
  for, and that request waits for this trio loop. They go through a bounded queue to one task,
  which makes each call in a worker thread while the loop goes on serving requests; when the
  queue is full the rest are dropped (caches then expire within their timeouts,
  ``dhtfs.fs.attributes.ATTR_TIMEOUT``);
- the ops a late op redid are in the batch too (``dhtfs.meta.replica``): what they do may
  have changed;
- only what the kernel can hold is invalidated: inodes it was given (``InodeMap``), every
  number of an object included (a directory moved behind the kernel's back gets a new one,
  and the old one lives on in what pins it);
- this invalidation alone cannot keep ESTALE away: the kernel's old dentry of a moved
  directory outlives it while pinned, so ``InodeMap.dir_ino`` never gives the kernel that
  directory's inode at another place, except to this mount's own walk to the new place
  (``follow``, queued after the batch's invalidations), which moves the old entry there when
  the VFS can (a cwd in it keeps a path, the directory its number);
- an open file with no local changes in flight takes the new version (and a new mtime) at
  once; one with local changes keeps them, and its next flush makes a conflict copy
  (concurrent writers).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from pathlib import Path

import pyfuse3
import trio

from dhtfs.fs.files import FileContents
from dhtfs.fs.inodes import InodeMap
from dhtfs.meta.namespace import Namespace
from dhtfs.meta.ops import ROOT_OBJ, Op
from dhtfs.meta.replica import LinkPlaces

log = logging.getLogger(__name__)

QUEUE = 65536
MAX_DEPTH = 4096  # a path longer than this is not followed

Invalidation = tuple[int, bytes | None, bool]
"""``(inode, name, attr_only)``: an entry of directory ``inode`` when ``name`` is set, else
the inode itself (with its pages unless ``attr_only``). A bare object ID on the queue: a
directory to follow to its new place."""


class RemoteChanges:
    """The ``NamespaceLog.on_remote`` hook of a mount, and the task that invalidates."""

    def __init__(
        self, ns: Namespace, inodes: InodeMap, contents: FileContents,
        mountpoint: Path | None = None,
    ) -> None:
        self.ns = ns
        self.inodes = inodes
        self.contents = contents
        self._send, self._recv = trio.open_memory_channel[Invalidation | bytes](QUEUE)
        self.dropped = 0
        self.done = 0
        self.mountpoint = mountpoint  # where ``follow`` walks (None: directories not followed)
        self.follow = True  # a test switch (the control socket's ``faults``)
        self._resumed = trio.Event()  # a test switch: invalidations held while not set
        self._resumed.set()
        self.followed = 0
        self._busy = 0

    def hold(self, on: bool) -> None:
        """Hold the queued invalidations back (tests of what the kernel does with entries
        that are stale for a while: the control socket's ``faults {"invalidate": false}``)."""
        if on and self._resumed.is_set():
            self._resumed = trio.Event()
        elif not on:
            self._resumed.set()

    @property
    def pending(self) -> int:
        """Queued invalidations and follows not done yet."""
        return self._send.statistics().current_buffer_used + self._busy

    def __call__(self, ops: list[Op], before: LinkPlaces) -> None:
        wanted: dict[tuple[int, bytes | None], bool] = {}

        def entry(place: tuple[bytes, bytes] | None) -> None:
            if place is not None:
                for ino in self.inodes.kernel_inos(place[0]):
                    wanted[(ino, place[1])] = True

        def inode(obj: bytes, attr_only: bool) -> None:
            for ino in self.inodes.kernel_inos(obj):
                wanted[(ino, None)] = wanted.get((ino, None), True) and attr_only

        moved: list[bytes] = []
        for op in ops:
            for change in op.changes:
                kind = change["c"]
                if "link" in change:
                    was, now = before.get(change["link"]), self.ns.link_place(change["link"])
                    entry(was)
                    entry(now)
                    if was is not None and now is not None and was != now:
                        moved.append(change["link"])
                if "obj" in change:
                    inode(change["obj"], attr_only=kind != "content")
                    if kind in ("content", "attr"):  # an open file reports its own mtime
                        self._refresh_open_file(change["obj"])
        items: list[Invalidation | bytes] = [(i, n, a) for (i, n), a in wanted.items()]
        if self.follow:
            items += self._to_follow(moved)
        for item in items:
            try:
                self._send.send_nowait(item)
            except trio.WouldBlock:
                self.dropped += 1

    def _to_follow(self, links: list[bytes]) -> list[bytes]:
        """The directories among the objects of moved ``links`` that the kernel holds."""
        out: list[bytes] = []
        for link in dict.fromkeys(links):
            place = self.ns.link_place(link)
            hit = self.ns.lookup(*place) if place is not None else None
            row = self.ns.get_object(hit[1]) if hit is not None else None
            if row is not None and row.is_dir and self._held(row.obj):
                out.append(row.obj)
        return out

    def _held(self, obj: bytes) -> bool:
        return self.inodes.cached_ino(obj) in self.inodes.lookups

    def _path_of(self, obj: bytes) -> bytes | None:
        """The path of directory ``obj`` under the mountpoint, now (None: not named)."""
        if self.mountpoint is None:
            return None
        names: list[bytes] = []
        while obj != ROOT_OBJ:
            row = self.ns.db.execute(
                "SELECT parent, name FROM links WHERE obj=? LIMIT 1", (obj,)
            ).fetchone()
            if row is None or len(names) >= MAX_DEPTH or b"/" in row[1] or row[1] in (b".", b".."):
                return None
            names.append(row[1])
            obj = row[0]
        return os.path.join(os.fsencode(self.mountpoint), *reversed(names))

    async def _follow(self, obj: bytes) -> None:
        """Walk to directory ``obj``'s new place with the follower's lookups (see
        ``InodeMap``), so that the kernel moves its old entry there rather than keep it aside."""
        if not self._held(obj):
            return
        path = self._path_of(obj)
        if path is None:
            return
        inodes = self.inodes

        def walk() -> bool:
            inodes.follower = threading.get_native_id()
            try:
                os.lstat(path)
                return True
            except OSError as exc:
                log.debug("following a moved directory to %r failed: %s", path, exc)
                return False
            finally:
                inodes.follower = None

        ok = False
        try:
            ok = await trio.to_thread.run_sync(walk, abandon_on_cancel=True)
        finally:
            inodes.followed(ok)
        self.followed += ok

    def everything_changed(self) -> None:
        """The whole tree was replaced (a snapshot installed while mounted): invalidate every
        entry the kernel may hold for a number it holds (``InodeMap.held_places``) and every
        inode it holds, pages too, and refresh open files. (Missing names the kernel
        remembers expire within ``NEGATIVE_TIMEOUT``.)"""
        items: list[Invalidation] = [(p, n, False) for p, n in self.inodes.held_places()]
        items += [(ino, None, False) for ino in self.inodes.lookups]
        for item in items:
            try:
                self._send.send_nowait(item)
            except trio.WouldBlock:
                self.dropped += 1
        for obj in list(self.contents.open_files):
            self._refresh_open_file(obj)

    def changed_here(self, obj: bytes) -> None:
        """``obj`` changed here behind the kernel's back (a dropped change: the file is back
        to its last committed version): invalidate its attributes and pages."""
        for ino in self.inodes.kernel_inos(obj):
            try:
                self._send.send_nowait((ino, None, False))
            except trio.WouldBlock:
                self.dropped += 1

    def _refresh_open_file(self, obj: bytes) -> None:
        of = self.contents.open_files.get(obj)
        row = self.ns.get_object(obj)
        if of is None or row is None or not stat.S_ISREG(row.kind):
            return
        if of.changing or of.new:
            return  # local changes in flight: their flush conflicts, keeping both versions
        of.size = row.size
        of.chunk_size = row.chunk_size or of.chunk_size
        of.base = (row.content_ts, row.content_node)
        of.mtime = row.mtime

    async def run(self) -> None:
        """Make the queued invalidations and follows, one at a time, each in a worker
        thread."""
        async for item in self._recv:
            await self._resumed.wait()
            self._busy = 1
            try:
                await self._do(item)
            finally:
                self._busy = 0

    async def _do(self, item: Invalidation | bytes) -> None:
        if isinstance(item, bytes):
            await self._follow(item)
            return
        ino, name, attr_only = item
        try:
            if name is not None:
                await trio.to_thread.run_sync(pyfuse3.invalidate_entry, ino, name)
            else:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, attr_only)
            self.done += 1
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF):
                log.debug("invalidating inode %d %r failed: %s", ino, name, exc)
