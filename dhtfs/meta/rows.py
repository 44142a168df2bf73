"""Reading the namespace's tables (``dhtfs.meta.schema``): ``NamespaceRows`` answers every
query (names, children, object rows, xattrs, the extents of a file's chunks) through caches
that the writes of ``dhtfs.meta.undo`` keep true.

Object rows: ``ObjectRows`` is a read cache and a write-back buffer in front of the ``objects``
table. A file create writes its new object row and touches its parent's; the flush that follows
rewrites the new row with the file's content. Written through, that is three SQLite writes per
small file, and a hundred files created in one directory touch the parent a hundred times.
Buffered, a group commit writes each changed row once.

Invariants (``ObjectRows``):
- ``get(obj)`` is the row as every write so far left it: the buffered row if there is one,
  else the table's;
- every buffered (dirty) row is also cached, and the cache is never emptied with dirty rows in
  it (``flush`` first), so a cache miss may read the table;
- ``flush()`` writes every dirty row (``INSERT OR REPLACE`` of whole rows, one batch) inside
  the caller's open transaction; whatever reads ``objects`` with SQL flushes first;
- ``discard()`` forgets everything buffered (after a rollback, which the caller redoes).

Facts about links and extents: ``LinkFacts`` caches answers about names (a name is free, a
directory is live, how many subdirectories, how many links an object has) and about extents
(how many chunks of an object hold data) that every write to ``links`` and ``extents`` keeps
true (see its docstring): ``stat`` is answered from memory once an object was seen.
"""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dhtfs.meta.extents import Piece, pack_pieces, unpack_pieces
from dhtfs.meta.ops import ROOT_OBJ
from dhtfs.meta.schema import OBJECT_COLUMNS, ObjectRow, meta_value, set_meta_value

CACHE_ENTRIES = 65536


class ObjectRows:
    """``obj → ObjectRow`` over one connection's ``objects`` table (see the module doc)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._cache: dict[bytes, ObjectRow] = {}
        self._dirty: dict[bytes, ObjectRow] = {}
        self._select_sql = f"SELECT {','.join(OBJECT_COLUMNS)} FROM objects WHERE obj=?"
        self._replace_sql = (
            f"INSERT OR REPLACE INTO objects({','.join(OBJECT_COLUMNS)}) "
            f"VALUES ({','.join('?' * len(OBJECT_COLUMNS))})"
        )

    def get(self, obj: bytes) -> ObjectRow | None:
        row = self._cache.get(obj)
        if row is None:
            found = self.db.execute(self._select_sql, (obj,)).fetchone()
            if found is None:
                return None
            row = ObjectRow(*found)
            self._remember(obj, row)
        return row

    def exists(self, obj: bytes) -> bool:
        if obj in self._cache:
            return True
        return self.db.execute("SELECT 1 FROM objects WHERE obj=?", (obj,)).fetchone() is not None

    def put(self, row: ObjectRow) -> None:
        """Set ``row`` (a whole row, new or replacing); written to the table by ``flush``."""
        self._remember(row.obj, row)
        self._dirty[row.obj] = row

    def forget(self, obj: bytes) -> None:
        """Drop the cached row of ``obj`` after the caller changed the table row directly
        (which it may only do once ``flush`` has run)."""
        assert obj not in self._dirty, "flush before writing objects directly"
        self._cache.pop(obj, None)

    def flush(self) -> None:
        if self._dirty:
            self.db.executemany(self._replace_sql, [row.values() for row in self._dirty.values()])
            self._dirty.clear()

    def discard(self) -> None:
        self._cache.clear()
        self._dirty.clear()

    def _remember(self, obj: bytes, row: ObjectRow) -> None:
        if len(self._cache) >= CACHE_ENTRIES and obj not in self._cache:
            self.flush()
            self._cache.clear()
        self._cache[obj] = row


FACTS_ENTRIES = 65536


@dataclass(slots=True)
class LinkFacts:
    """What the namespace knows about ``links`` and ``extents`` without asking SQLite; every
    write to ``links`` that could make a fact false tells it (``link_added``,
    ``file_link_removed`` or ``forget``), and every write to ``extents`` tells it
    (``extents_changed``), so a fact is never stale. Undoing an op (``restore``) and rolling a
    transaction back forget every fact.

    - ``live_dirs``: directories that have their name (or are the root); adding a link never
      takes a name away;
    - ``subdirs``: directory → number of subdirectories; adding a directory's link changes it;
    - ``free_names``: ``(parent, name)`` pairs that no link holds; adding any link may take one
      (the kernel's lookup of a name, then the create's own checks, ask three times);
    - ``names``: ``(parent, name)`` → ``(link, obj)`` of the link that holds it; adding a
      link there (``link_added``) or removing it (``file_link_removed``) changes it, and
      moving or renaming any link forgets every fact;
    - ``links``: object → number of its links (st_nlink of a file); adding or removing one of
      its links changes it;
    - ``data_chunks``: object → number of its chunks that hold data (an ``extents`` row each:
      st_blocks); any write of one of its ``extents`` rows may change it.
    """

    live_dirs: set[bytes] = field(default_factory=set)
    subdirs: dict[bytes, int] = field(default_factory=dict)
    free_names: set[tuple[bytes, bytes]] = field(default_factory=set)
    names: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = field(default_factory=dict)
    links: dict[bytes, int] = field(default_factory=dict)
    data_chunks: dict[bytes, int] = field(default_factory=dict)

    def remember_free(self, parent: bytes, name: bytes) -> None:
        _bounded(self.free_names)
        self.free_names.add((parent, name))

    def remember_live(self, obj: bytes) -> None:
        _bounded(self.live_dirs)
        self.live_dirs.add(obj)

    def remember_subdirs(self, obj: bytes, count: int) -> None:
        _bounded(self.subdirs)
        self.subdirs[obj] = count

    def remember_name(self, place: tuple[bytes, bytes], hit: tuple[bytes, bytes]) -> None:
        _bounded(self.names)
        self.names[place] = hit

    def remember_links(self, obj: bytes, count: int) -> None:
        _bounded(self.links)
        self.links[obj] = count

    def remember_data_chunks(self, obj: bytes, count: int) -> None:
        _bounded(self.data_chunks)
        self.data_chunks[obj] = count

    def link_added(self, kind: int, obj: bytes, place: tuple[bytes, bytes]) -> None:
        """A link to ``obj`` (of kind ``kind``) was inserted at ``place``."""
        self.free_names.clear()
        self.names.pop(place, None)
        self.links.pop(obj, None)
        if kind == stat.S_IFDIR:
            self.subdirs.clear()

    def file_link_removed(self, obj: bytes, place: tuple[bytes, bytes]) -> None:
        """A link to the non-directory ``obj`` at ``place`` was deleted: it frees that name
        and changes no directory, so only that name and ``obj``'s link count are made
        false."""
        self.names.pop(place, None)
        self.links.pop(obj, None)

    def extents_changed(self, obj: bytes) -> None:
        """An ``extents`` row of ``obj`` was written or deleted."""
        self.data_chunks.pop(obj, None)

    def forget(self) -> None:
        """A link moved, was renamed or went away, or the tables were rolled back or
        restored: forget every fact."""
        self.live_dirs.clear()
        self.subdirs.clear()
        self.free_names.clear()
        self.names.clear()
        self.links.clear()
        self.data_chunks.clear()


def _bounded(facts: set[Any] | dict[Any, Any]) -> None:
    """Keep a fact collection at most ``FACTS_ENTRIES`` long (emptied when full: a fact is
    an answer cached, so forgetting it only costs a query)."""
    if len(facts) >= FACTS_ENTRIES:
        facts.clear()


# -- extents --------------------------------------------------------------------------------


def chunk_pieces(db: sqlite3.Connection, obj: bytes, index: int) -> list[Piece]:
    row = db.execute("SELECT pieces FROM extents WHERE obj=? AND idx=?", (obj, index)).fetchone()
    return unpack_pieces(row[0]) if row else []


def extent_rows(
    db: sqlite3.Connection, obj: bytes, first: int = 0
) -> Iterator[tuple[int, list[Piece]]]:
    """``(index, pieces)`` of every chunk of ``obj`` with data, from ``first`` on, in order."""
    for index, blob in db.execute(
        "SELECT idx, pieces FROM extents WHERE obj=? AND idx>=? ORDER BY idx", (obj, first)
    ).fetchall():
        yield index, unpack_pieces(blob)


def chunks_with_data(db: sqlite3.Connection, obj: bytes) -> int:
    return db.execute("SELECT count(*) FROM extents WHERE obj=?", (obj,)).fetchone()[0]


def linked_blocks(db: sqlite3.Connection) -> Iterator[bytes]:
    """Every block a named object's version uses (repeats possible)."""
    for (blob,) in db.execute("SELECT pieces FROM extents WHERE obj IN (SELECT obj FROM links)"):
        for piece in unpack_pieces(blob):
            yield piece[2]


def blocks_of_object(db: sqlite3.Connection, obj: bytes) -> Iterator[bytes]:
    for _, pieces in extent_rows(db, obj):
        for piece in pieces:
            yield piece[2]


class NamespaceRows:
    """The namespace's tables read through caches: objects (``ObjectRows``), facts about
    links (``LinkFacts``) and which objects have xattrs. Read-only but for ``ensure_root`` and
    ``meta_set``: every write to the tree goes through one op's
    ``dhtfs.meta.undo.UndoableWrites`` (``dhtfs.meta.changes``). Not thread-safe: use from
    one thread (the trio one)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # Object rows (the hottest query), cached, and written back at commit.
        self._rows = ObjectRows(db)
        self._facts = LinkFacts()
        # Objects that have (or had, this session) an xattr: the others need no query, which
        # matters because the kernel asks for security.capability before every write.
        self._xattr_objs: set[bytes] = {r[0] for r in db.execute("SELECT DISTINCT obj FROM xattrs")}

    def get_object(self, obj: bytes) -> ObjectRow | None:
        return self._rows.get(obj)

    def object_count(self) -> int:
        self._rows.flush()
        return self.db.execute("SELECT count(*) FROM objects").fetchone()[0]

    def lookup(self, parent: bytes, name: bytes) -> tuple[bytes, bytes] | None:
        """``(link, obj)`` of ``name`` in directory ``parent`` (from memory once known:
        ``LinkFacts.names`` and ``free_names``)."""
        place = (parent, name)
        facts = self._facts
        if place in facts.free_names:
            return None
        hit = facts.names.get(place)
        if hit is not None:
            return hit
        row = self.db.execute(
            "SELECT link, obj FROM links WHERE parent=? AND name=?", place
        ).fetchone()
        if row is None:
            facts.remember_free(parent, name)
            return None
        hit = (row[0], row[1])
        facts.remember_name(place, hit)
        return hit

    def children(self, parent: bytes, after: int = 0, limit: int = 1000) -> list[tuple]:
        """``(id, name, obj)`` of entries in ``parent`` with ``id > after``, in id order."""
        return self.db.execute(
            "SELECT id, name, obj FROM links WHERE parent=? AND id>? ORDER BY id LIMIT ?",
            (parent, after, limit),
        ).fetchall()

    def children_with_objects(
        self, parent: bytes, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, bytes, ObjectRow]]:
        """Like ``children`` but with each entry's object row, in one query, which also
        counts each non-directory's links and chunks with data (``link_count`` and
        ``chunks_with_data`` then answer from memory: a listing's stats ask SQLite nothing)."""
        cols = ",".join(f"o.{c}" for c in OBJECT_COLUMNS)
        self._rows.flush()
        rows = self.db.execute(
            f"SELECT l.id, l.name, {cols}, "
            f"CASE WHEN l.kind={stat.S_IFDIR} THEN -1 ELSE "
            "(SELECT count(*) FROM links c WHERE c.obj=l.obj) END, "
            f"CASE WHEN l.kind={stat.S_IFREG} THEN "
            "(SELECT count(*) FROM extents e WHERE e.obj=l.obj) ELSE -1 END "
            "FROM links l JOIN objects o ON o.obj=l.obj "
            "WHERE l.parent=? AND l.id>? ORDER BY l.id LIMIT ?",
            (parent, after, limit),
        ).fetchall()
        out = []
        facts = self._facts
        for r in rows:
            row = ObjectRow(*r[2:-2])
            if r[-2] >= 0:
                facts.remember_links(row.obj, r[-2])
            if r[-1] >= 0:
                facts.remember_data_chunks(row.obj, r[-1])
            out.append((r[0], r[1], row))
        return out

    def link_place(self, link: bytes) -> tuple[bytes, bytes] | None:
        """``(parent, name)`` of ``link``, or None if it does not exist."""
        row = self.db.execute("SELECT parent, name FROM links WHERE link=?", (link,)).fetchone()
        return (row[0], row[1]) if row else None

    def parent_of(self, obj: bytes) -> bytes | None:
        row = self.db.execute("SELECT parent FROM links WHERE obj=? LIMIT 1", (obj,)).fetchone()
        return row[0] if row else None

    def link_count(self, obj: bytes) -> int:
        """How many links name ``obj`` (from memory once known: ``LinkFacts.links``)."""
        count = self._facts.links.get(obj)
        if count is None:
            count = self.db.execute(
                "SELECT count(*) FROM links WHERE obj=?", (obj,)
            ).fetchone()[0]
            self._facts.remember_links(obj, count)
        return count

    def subdir_count(self, obj: bytes) -> int:
        count = self._facts.subdirs.get(obj)
        if count is None:
            # The literal kind lets SQLite use the partial index links_subdirs.
            count = self.db.execute(
                f"SELECT count(*) FROM links WHERE parent=? AND kind={stat.S_IFDIR}", (obj,)
            ).fetchone()[0]
            self._facts.remember_subdirs(obj, count)
        return count

    def has_xattrs(self, obj: bytes) -> bool:
        """False if ``obj`` certainly has no xattr (True may be stale: removals are not
        tracked)."""
        return obj in self._xattr_objs

    def xattr(self, obj: bytes, name: bytes) -> bytes | None:
        if obj not in self._xattr_objs:
            return None
        row = self.db.execute(
            "SELECT value FROM xattrs WHERE obj=? AND name=?", (obj, name)
        ).fetchone()
        return row[0] if row else None

    def xattr_names(self, obj: bytes) -> list[bytes]:
        if obj not in self._xattr_objs:
            return []
        return [r[0] for r in self.db.execute("SELECT name FROM xattrs WHERE obj=?", (obj,))]

    def linked_blocks(self) -> Iterator[bytes]:
        """The blocks of every object that still has a name (repeats possible)."""
        return linked_blocks(self.db)

    def chunk_pieces(self, obj: bytes, index: int) -> list[Piece]:
        """The pieces of chunk ``index`` of ``obj`` (none: a hole)."""
        return chunk_pieces(self.db, obj, index)

    def extents(self, obj: bytes, first: int = 0) -> Iterator[tuple[int, list[Piece]]]:
        """``(index, pieces)`` of each chunk of ``obj`` that holds data, in order."""
        return extent_rows(self.db, obj, first)

    def blocks_of(self, obj: bytes) -> Iterator[bytes]:
        """The blocks of ``obj``'s current version (repeats possible)."""
        return blocks_of_object(self.db, obj)

    def chunks_with_data(self, obj: bytes) -> int:
        """How many chunks of ``obj`` hold data (from memory once known:
        ``LinkFacts.data_chunks``)."""
        count = self._facts.data_chunks.get(obj)
        if count is None:
            count = chunks_with_data(self.db, obj)
            self._facts.remember_data_chunks(obj, count)
        return count

    def tree(self) -> dict[bytes, Any]:
        """The visible tree as nested dicts (for tests and fsck): name → attrs or subtree."""
        return self._subtree(ROOT_OBJ)

    def _subtree(self, parent: bytes) -> dict[bytes, Any]:
        out: dict[bytes, Any] = {}
        for _id, name, obj in self.db.execute(
            "SELECT id, name, obj FROM links WHERE parent=? ORDER BY name", (parent,)
        ).fetchall():
            row = self.get_object(obj)
            if row is None:
                continue
            if row.is_dir:
                out[name] = self._subtree(obj)
            else:
                content = hashlib.sha256(
                    b"".join(pack_pieces(p) for _, p in self.extents(obj))
                ).hexdigest()
                out[name] = (row.kind, row.mode, row.size, content, row.target, obj)
        return out

    def meta_get(self, key: str) -> bytes | None:
        return meta_value(self.db, key)

    def meta_set(self, key: str, value: bytes) -> None:
        set_meta_value(self.db, key, value)

    def is_live_dir(self, obj: bytes) -> bool:
        """True if ``obj`` is a directory that still has its name (or is the root)."""
        if obj in self._facts.live_dirs:
            return True
        row = self.get_object(obj)
        if row is None or not row.is_dir:
            return False
        if obj == ROOT_OBJ or self.parent_of(obj) is not None:
            self._facts.remember_live(obj)
            return True
        return False

    def has_children(self, obj: bytes) -> bool:
        return (
            self.db.execute("SELECT 1 FROM links WHERE parent=? LIMIT 1", (obj,)).fetchone()
            is not None
        )

    def is_ancestor(self, ancestor: bytes, obj: bytes) -> bool:
        """True if ``ancestor`` is ``obj`` or above it (directories have one parent)."""
        seen = 0
        while True:
            if obj == ancestor:
                return True
            if obj == ROOT_OBJ:
                return False
            parent = self.parent_of(obj)
            seen += 1
            if parent is None or seen > 100_000:
                return False
            obj = parent

    def ensure_root(self) -> None:
        """Give a new database its root directory (the one object no op makes)."""
        if self.get_object(ROOT_OBJ) is None:
            self.db.execute(
                "INSERT INTO objects(obj, kind, mode, uid, gid, atime, mtime, ctime) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (ROOT_OBJ, stat.S_IFDIR, 0o755, 0, 0, 0, 0, 0),
            )

    def free_name(self, parent: bytes, name: bytes) -> bytes:
        """``name``, or if ``parent`` has it, the first free ``name~2``, ``name~3``, …"""
        candidate, n = name, 1
        while self.lookup(parent, candidate) is not None:
            n += 1
            candidate = name + f"~{n}".encode()
        return candidate
