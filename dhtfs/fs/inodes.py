"""Inode numbers for global object IDs, the kernel's lookup counts, and where the kernel was
told each directory is.

Files (every object but directories) have a number derived from their object ID
(``stable_number``: 62 bits of a hash, at or above ``STABLE_BASE``, apart from the allocated
numbers below it), the same on every node and across restarts, so that a tool that compares
``st_ino`` with what it recorded elsewhere (git's index, written on another node) sees the
same file. Two objects whose numbers collide cannot both be held by the kernel: the second
gets an allocated number (``collisions`` counts them) for as long as the kernel holds it.
A collision between objects the kernel does not hold at once is not detected; it is harmless
to the kernel (a number names one object at a time) and only shows two files with one
``st_ino`` (about n² / 2**63 for n files: 1e-7 for a million). Directories keep allocated
numbers, stored in the ``inodes`` table, for the reasons that follow.

Why directories get a new number when they moved behind the kernel's back: the kernel keeps
one dentry per directory inode. When another node moves (or removes) a directory, this
kernel's old dentry for it is invalidated, but it lives on, unhashed, for as long as anything
pins it (an open file or directory in it, a cwd, a pinned child). Were a lookup then to give
the kernel the same inode under the new name, the VFS would have to move that old dentry
there (``d_splice_alias``): it answers ELOOP if the old dentry is an ancestor of the new
place, and ESTALE if it cannot take the locks the move needs, which it never can while
looking up a rename's own source or target (it holds the rename lock itself). So a directory
inode is only ever handed to the kernel at the one place the kernel believes it is; at any
other place the object gets a fresh number, and the old number keeps naming the same object
for whatever still holds it.

That costs the old entry its place (a cwd in it no longer has a path) and the directory its
``st_ino``, so after a remote move the mount first tries to *follow* it: it looks the new
path up itself (``dhtfs.fs.remote``), from a thread whose lookups may hand the kernel the
old number at the new place (``follower``). That lookup holds no rename lock, so the VFS
can usually move the old entry there; the new place counts only once the walk succeeded,
and an inode whose move failed is never handed out again.

Invariants:
- a file's number is ``stable_number(obj)`` unless, when it was handed out, the kernel held
  (or this map remembered) that number for another object: then it is an allocated one;
  nothing about files is written to the ``inodes`` table but such an allocation;
- numbers are allocated above every number ever allocated in this state directory (the
  ``inodes`` table is AUTOINCREMENT and each allocation is explicit, so a number is never
  reused, even when the transaction that stored it rolled back: a COMMIT on a full disk fails
  with SQLITE_FULL and rolls back, and the kernel may hold the number); the table maps each
  object to its newest number; inode 1 is the root object;
- ``lookups[ino]`` is how many references the kernel holds (each entry returned by lookup,
  create, mkdir, … or readdirplus adds one; ``forget`` takes them away); a number the kernel
  has forgotten may be dropped from the in-memory maps (and a superseded one is then gone);
- every place ``(parent ino, name)`` at which the kernel was given a file number it still
  holds is recorded (``file_places``; a superset: the kernel's own renames and unlinks are
  not taken out), so that when the whole tree is replaced (a snapshot installed) every name
  the kernel may hold can be invalidated (``held_places``);
- a directory number the kernel holds was handed out at exactly one ``(parent ino, name)``
  (``placed``), moved only by the kernel's own renames; ``None`` once the kernel itself
  removed it (it marks that inode dead): such a number is never handed out again.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pyfuse3

from dhtfs.meta.ops import ROOT_OBJ

SCHEMA = """
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    obj BLOB NOT NULL UNIQUE
);
"""

STABLE_BASE = 1 << 62
"""Files' numbers are in ``[STABLE_BASE, 2 * STABLE_BASE)``; allocated ones stay below (a
table's INTEGER PRIMARY KEY is a signed 64-bit value: 2**62 of them will never be used up)."""


def stable_number(obj: bytes) -> int:
    """The inode number of file ``obj`` on every node (62 bits of its BLAKE2b hash)."""
    digest = int.from_bytes(hashlib.blake2b(obj, digest_size=8).digest(), "big")
    return STABLE_BASE | (digest & (STABLE_BASE - 1))


Place = tuple[int, bytes]
"""``(parent inode, name)``: an entry as the kernel knows it."""


class InodeMap:
    """Bidirectional ``ino ↔ obj`` map with lookup counting and directory places."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(SCHEMA)
        if db.execute("SELECT 1 FROM inodes WHERE ino=?", (pyfuse3.ROOT_INODE,)).fetchone() is None:
            db.execute("INSERT INTO inodes(ino, obj) VALUES (?, ?)", (pyfuse3.ROOT_INODE, ROOT_OBJ))
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name='inodes'").fetchone()
        top = db.execute(
            "SELECT coalesce(max(ino), 0) FROM inodes WHERE ino<?", (STABLE_BASE,)
        ).fetchone()[0]
        self._high: int = max(top, seq[0] if seq else 0)
        self._obj_by_ino: dict[int, bytes] = {pyfuse3.ROOT_INODE: ROOT_OBJ}
        self._ino_by_obj: dict[bytes, int] = {ROOT_OBJ: pyfuse3.ROOT_INODE}
        self._superseded: dict[bytes, set[int]] = {}  # obj → older numbers the kernel holds
        self.lookups: dict[int, int] = {}
        self.placed: dict[int, Place | None] = {}  # directory number → where the kernel has it
        self._at: dict[Place, int] = {}  # the reverse of ``placed``
        self.file_places: dict[int, set[Place]] = {}  # file number → where it was given
        self.renumbered = 0
        self.collisions = 0  # files that could not have their stable number
        # The thread id whose lookups follow a remote move, and the places they handed out
        # (they count once the follower's walk succeeded: ``followed``).
        self.follower: int | None = None
        self._tentative: dict[int, Place | None] = {}  # None: moved again meanwhile

    def _allocate(self, obj: bytes) -> int:
        """A never-used number for ``obj``, stored as its newest."""
        self._high += 1
        ino = self._high
        self.db.execute("INSERT OR REPLACE INTO inodes(ino, obj) VALUES (?, ?)", (ino, obj))
        self._ino_by_obj[obj] = ino
        self._obj_by_ino[ino] = obj
        return ino

    def ino_of(self, obj: bytes, *, new: bool = False) -> int:
        """The inode number of directory ``obj`` (files: ``file_ino``), allocated on first
        use. ``new``: the object was just created here, so it cannot have a number yet (saves
        a query)."""
        ino = self._ino_by_obj.get(obj)
        if ino is None:
            row = (
                None
                if new
                else self.db.execute("SELECT ino FROM inodes WHERE obj=?", (obj,)).fetchone()
            )
            if row is None:
                return self._allocate(obj)
            ino = row[0]
            self._ino_by_obj[obj] = ino
            self._obj_by_ino[ino] = obj
        return ino

    def file_ino(self, obj: bytes) -> int:
        """The inode number of the non-directory ``obj``: ``stable_number(obj)``, unless
        another object holds that number here (then an allocated one). Asks SQLite nothing
        but in that rare case."""
        ino = self._ino_by_obj.get(obj)
        if ino is not None:
            return ino
        ino = stable_number(obj)
        if self._obj_by_ino.get(ino, obj) != obj:
            self.collisions += 1
            return self._allocate(obj)
        self._ino_by_obj[obj] = ino
        self._obj_by_ino[ino] = obj
        return ino

    def dir_ino(
        self, obj: bytes, parent: int, name: bytes, *, new: bool = False, follow: bool = False
    ) -> int:
        """The number to give the kernel for directory ``obj`` as entry ``name`` of directory
        inode ``parent`` (a lookup, mkdir or readdirplus reply); that place is recorded.

        If the kernel holds the object's number at another place (the directory moved or was
        removed behind its back), the object gets a fresh number, unless ``follow`` (the
        follower's lookup: the number is kept, its place pending; see the module docstring).
        """
        ino = self.ino_of(obj, new=new)
        place = (parent, name)
        held = ino in self.lookups and ino != pyfuse3.ROOT_INODE
        if held and self.placed.get(ino, place) != place:
            if follow and self.placed.get(ino) is not None:
                self._tentative[ino] = place
                return ino
            self._superseded.setdefault(obj, set()).add(ino)
            ino = self._allocate(obj)
            self.renumbered += 1
        self._place(ino, place)
        return ino

    def entered(self, ino: int, place: Place) -> None:
        """The kernel was given file number ``ino`` as entry ``place`` (with a reference:
        call after ``remember``)."""
        places = self.file_places.get(ino)
        if places is None:
            self.file_places[ino] = {place}
        else:
            places.add(place)

    def held_places(self) -> list[Place]:
        """Every entry the kernel may hold for a number it holds (a superset)."""
        out = [p for p in self.placed.values() if p is not None]
        for places in self.file_places.values():
            out.extend(places)
        return out

    def _place(self, ino: int, place: Place | None) -> None:
        before = self.placed.get(ino)
        if before is not None and self._at.get(before) == ino:
            del self._at[before]
        self.placed[ino] = place
        if place is not None:
            self._at[place] = ino

    def followed(self, ok: bool) -> None:
        """The follower's walk ended: its pending places hold (``ok``), or which inodes the
        kernel moved is not known, so none of them is handed out again."""
        for ino, place in self._tentative.items():
            if ino in self.lookups:
                self._place(ino, place if ok else None)
        self._tentative.clear()

    def renamed(self, old: Place, new: Place, obj: bytes | None, exchange: bool) -> None:
        """The kernel's own rename of entry ``old`` to ``new`` succeeded (``obj``: the object
        that was at ``old`` here). It moved its dentries: a directory number at ``old`` is
        now at ``new``; one at ``new`` is at ``old`` (``exchange``) or dead (replaced)."""
        self._unsettle(old, new)
        src = self._at.pop(old, None)
        dst = self._at.pop(new, None)
        if src is not None:
            if self._obj_by_ino.get(src) == obj:
                self.placed[src] = new
                self._at[new] = src
            else:  # the kernel's entry was stale: which inode it moved is not known
                self.placed[src] = None
        if dst is not None:
            if exchange:
                self.placed[dst] = old
                self._at[old] = dst
            else:
                self.placed[dst] = None

    def removed(self, place: Place) -> None:
        """The kernel's own rmdir of ``place`` succeeded: it marked that inode dead."""
        self._unsettle(place)
        ino = self._at.pop(place, None)
        if ino is not None:
            self.placed[ino] = None

    def _unsettle(self, *places: Place) -> None:
        """The kernel changed ``places`` while a follow is pending: an inode handed out there
        may have moved again, so it will not count as being there."""
        for ino, place in self._tentative.items():
            if place in places:
                self._tentative[ino] = None

    def cached_ino(self, obj: bytes) -> int | None:
        """The newest inode number of ``obj`` if the kernel may hold it (in memory), else
        None; never allocates one."""
        return self._ino_by_obj.get(obj)

    def kernel_inos(self, obj: bytes) -> list[int]:
        """Every number of ``obj`` the kernel may hold (the newest first); allocates none."""
        ino = self._ino_by_obj.get(obj)
        older = self._superseded.get(obj, ())
        return ([ino] if ino is not None else []) + [i for i in older if i != ino]

    def obj_of(self, ino: int) -> bytes | None:
        obj = self._obj_by_ino.get(ino)
        if obj is None:
            row = self.db.execute("SELECT obj FROM inodes WHERE ino=?", (ino,)).fetchone()
            if row is None:
                return None
            obj = row[0]
            self._obj_by_ino[ino] = obj
            self._ino_by_obj.setdefault(obj, ino)
        return obj

    def remember(self, ino: int, count: int = 1) -> None:
        self.lookups[ino] = self.lookups.get(ino, 0) + count

    def forget(self, ino: int, count: int) -> bool:
        """Drop ``count`` references; True when the kernel holds none any more."""
        left = self.lookups.get(ino, 0) - count
        if left > 0:
            self.lookups[ino] = left
            return False
        self.lookups.pop(ino, None)
        self._tentative.pop(ino, None)
        self.file_places.pop(ino, None)
        place = self.placed.pop(ino, None)
        if place is not None and self._at.get(place) == ino:
            del self._at[place]
        if ino != pyfuse3.ROOT_INODE:
            obj = self._obj_by_ino.pop(ino, None)
            if obj is not None:
                if self._ino_by_obj.get(obj) == ino:
                    del self._ino_by_obj[obj]
                older = self._superseded.get(obj)
                if older is not None:
                    older.discard(ino)
                    if not older:
                        del self._superseded[obj]
        return True

    def known_objects(self) -> set[bytes]:
        """Objects the kernel still references."""
        return {self._obj_by_ino[i] for i in self.lookups if i in self._obj_by_ino}
