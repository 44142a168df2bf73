"""Local inode numbers for global object IDs, and the kernel's lookup counts.

Invariants:
- inode numbers are assigned by SQLite AUTOINCREMENT in a local (never replicated) table, so a
  number is never reused, even across remounts, and an object keeps its number for good;
  the next number is counted here too, so a transaction that SQLite rolled back (a COMMIT
  on a full disk fails with SQLITE_FULL and rolls back) cannot make this process hand out a
  number twice: the kernel may hold it. (Such rows are lost from the table; an object whose
  row was lost gets a new number after the kernel has forgotten the old one.)
- inode 1 is the root object;
- ``lookups[ino]`` is how many references the kernel holds (each entry returned by lookup,
  create, mkdir, … or readdirplus adds one; ``forget`` takes them away); an inode the kernel
  has forgotten may be dropped from the in-memory maps, never from the table.
"""

from __future__ import annotations

import sqlite3

import pyfuse3

from dhtfs.fs.ops import ROOT_OBJ

SCHEMA = """
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    obj BLOB NOT NULL UNIQUE
);
"""


class InodeMap:
    """Bidirectional ``ino ↔ obj`` map with lookup counting."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(SCHEMA)
        if db.execute("SELECT 1 FROM inodes WHERE ino=?", (pyfuse3.ROOT_INODE,)).fetchone() is None:
            db.execute("INSERT INTO inodes(ino, obj) VALUES (?, ?)", (pyfuse3.ROOT_INODE, ROOT_OBJ))
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name='inodes'").fetchone()
        top = db.execute("SELECT max(ino) FROM inodes").fetchone()[0] or pyfuse3.ROOT_INODE
        self._next = max(top, seq[0] if seq else 0) + 1
        self._obj_by_ino: dict[int, bytes] = {pyfuse3.ROOT_INODE: ROOT_OBJ}
        self._ino_by_obj: dict[bytes, int] = {ROOT_OBJ: pyfuse3.ROOT_INODE}
        self.lookups: dict[int, int] = {}

    def ino_of(self, obj: bytes, *, new: bool = False) -> int:
        """The inode number of ``obj``, allocated on first use. ``new``: the object was just
        created here, so it cannot have a number yet (saves a query)."""
        ino = self._ino_by_obj.get(obj)
        if ino is None:
            row = (
                None
                if new
                else self.db.execute("SELECT ino FROM inodes WHERE obj=?", (obj,)).fetchone()
            )
            if row is None:
                ino = self._next
                self.db.execute("INSERT INTO inodes(ino, obj) VALUES (?, ?)", (ino, obj))
                self._next += 1
            else:
                ino = row[0]
            assert ino is not None
            self._ino_by_obj[obj] = ino
            self._obj_by_ino[ino] = obj
        return ino

    def cached_ino(self, obj: bytes) -> int | None:
        """The inode number of ``obj`` if the kernel may hold it (in memory), else None;
        never allocates one."""
        return self._ino_by_obj.get(obj)

    def obj_of(self, ino: int) -> bytes | None:
        obj = self._obj_by_ino.get(ino)
        if obj is None:
            row = self.db.execute("SELECT obj FROM inodes WHERE ino=?", (ino,)).fetchone()
            if row is None:
                return None
            obj = row[0]
            self._obj_by_ino[ino] = obj
            self._ino_by_obj[obj] = ino
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
        if ino != pyfuse3.ROOT_INODE:
            obj = self._obj_by_ino.pop(ino, None)
            if obj is not None:
                self._ino_by_obj.pop(obj, None)
        return True

    def known_objects(self) -> set[bytes]:
        """Objects the kernel still references."""
        return {self._obj_by_ino[i] for i in self.lookups if i in self._obj_by_ino}
