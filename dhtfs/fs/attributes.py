"""What the kernel is told of objects and of the filesystem: entry attributes (stat), the
direct-I/O choice of a handle, and statfs.

Invariants: an open file's size, mtime and st_blocks are its live ones (its ``OpenFile``:
bytes written and not yet committed included); every other value is the object row's, set
by ops only, so every node that holds the same ops reports the same attributes (a file's
inode number included: ``dhtfs.fs.inodes.stable_number``); ``statfs`` never shows as free
what writes were promised (``space.reserved``) or the margin kept for metadata.

Timeouts: the kernel keeps an entry or attributes for ``ENTRY_TIMEOUT`` / ``ATTR_TIMEOUT``
without asking. Other nodes change the tree too, but every remote op applied here queues the
invalidation of each name and object it changed (``dhtfs.fs.remote``), those of the ops it
redid included, and this mount's own changes go through the kernel, which updates or drops
what it cached; a snapshot of the whole tree installed while mounted invalidates every
entry and inode the kernel holds (``RemoteChanges.everything_changed``). So the timeouts
bound only what no invalidation reaches: missing names that appear as a side effect
(conflict copies, names after a snapshot install) and invalidations dropped when their queue
is full, and one race: a remote change to an object whose lookup reply is on its way to the
kernel while the invalidation is sent finds no inode to invalidate, and the reply then
installs attributes from before the change (seen with 60 s: a new file stayed empty on
another node for the whole minute). 10 s: a ``stat`` or a path walk repeated within seconds
(a build, ``git status``, an editor's polling) costs no request, and what no invalidation
reached is put right within seconds. A missing name is remembered only
``NEGATIVE_TIMEOUT``: a conflict copy's name, which no op names, shows up within a second.
"""

from __future__ import annotations

import os
import stat

import pyfuse3

from dhtfs.fs.buffers import OpenFile
from dhtfs.meta.namespace import Namespace
from dhtfs.meta.schema import ObjectRow
from dhtfs.store.space import DiskSpace

ENTRY_TIMEOUT = 10.0
ATTR_TIMEOUT = 10.0
NEGATIVE_TIMEOUT = 1.0
BLKSIZE = 128 * 1024


def entry_attributes(
    row: ObjectRow,
    ino: int,
    of: OpenFile | None,
    ns: Namespace,
    *,
    new: bool = False,
) -> pyfuse3.EntryAttributes:
    """The attributes of ``row`` as inode ``ino``; ``of``: its open file, if any; ``new``:
    just created (one name, no subdirectories: nothing to count). The counts (links,
    subdirectories, chunks with data) come from the namespace's memory (``LinkFacts``) once
    known: a ``stat`` asks SQLite nothing."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = ino
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
    if row.is_dir:  # a just-created object has one name and no subdirectories
        a.st_nlink = 2 if new else 2 + ns.subdir_count(row.obj)
        a.st_size = 4096
        a.st_blocks = 8
        a.st_mtime_ns = row.mtime
    else:
        a.st_nlink = 1 if new else ns.link_count(row.obj)
        if of is not None:
            size, mtime, cs = of.size, of.mtime, of.chunk_size
            stored = ns.chunks_with_data(row.obj) + len(of.new) + len(of.buffers)
        elif row.kind == stat.S_IFLNK:
            size, mtime, cs, stored = len(row.target or b""), row.mtime, 0, 0
        else:
            size, mtime, cs = row.size, row.mtime, row.chunk_size
            stored = ns.chunks_with_data(row.obj) if size else 0
        a.st_size = size
        a.st_mtime_ns = mtime
        a.st_blocks = (min(size, stored * cs) + 511) // 512 if cs else (size + 511) // 512
    return a


def direct_io(flags: int, row: ObjectRow, has_xattrs: bool) -> bool:
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


def statfs_of(space: DiskSpace, object_count: int) -> pyfuse3.StatvfsData:
    """The state directory's disk (df on the mount): free less what writes acknowledged
    and not yet stored hold (``space.reserved``); available also less the margin kept
    for metadata, i.e. about what writes may still take."""
    st = space.measure()
    frsize = st.f_frsize or 4096
    held = -(-space.reserved // frsize)
    s = pyfuse3.StatvfsData()
    s.f_bsize = st.f_bsize
    s.f_frsize = st.f_frsize
    s.f_blocks = st.f_blocks
    s.f_bfree = max(0, st.f_bfree - held)
    s.f_bavail = max(0, st.f_bavail - held - space.margin // frsize)
    s.f_files = object_count + st.f_ffree
    s.f_ffree = st.f_ffree
    s.f_favail = st.f_favail
    s.f_namemax = 255
    return s
