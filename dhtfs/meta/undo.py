"""Writing one op's changes, undoably: ``UndoableWrites`` records the before-image of every row
it changes (``undo``), and ``restore`` puts such images back (``dhtfs.meta.changes`` applies an
op's changes with it, ``dhtfs.meta.namespace`` undoes and redoes ops with both). Both keep the
caches of ``dhtfs.meta.rows`` true.

Invariants:
- every write to ``objects`` goes through ``UndoableWrites`` (into the write-back buffer
  ``ObjectRows``) or ``restore``; every write to ``links`` tells ``LinkFacts`` what it may
  have made false;
- an undo record holds at most one before-image per row (the first), so restoring it in
  reverse order gives back exactly the state before the op.
"""

from __future__ import annotations

import sqlite3
import stat
from typing import Any

from dhtfs.meta.extents import Piece, pack_pieces
from dhtfs.meta.ops import Op
from dhtfs.meta.rows import LinkFacts, ObjectRows
from dhtfs.meta.schema import (
    LINK_KIND_INDEX,
    LINK_NAME_INDEX,
    LINK_OBJ_INDEX,
    LINK_PARENT_INDEX,
    OBJECT_DEFAULTS,
    ObjectRow,
)


class UndoableWrites:
    """Mutations of one op, each preceded by a before-image for undo.

    Every write to ``objects`` goes through here (into the write-back buffer ``rows``) or
    through ``restore`` (after a flush); every write to ``links`` tells ``facts`` (see
    ``LinkFacts``) what it may have made false.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        rows: ObjectRows,
        facts: LinkFacts,
    ) -> None:
        self.db = db
        self.rows = rows
        self.facts = facts
        self.undo: list[list[Any]] = []
        self._seen: dict[tuple[str, Any], list[Any] | None] = {}  # → before-image

    def _capture(self, table: str, key: tuple[Any, ...]) -> list[Any] | None:
        """Record the before-image of a row (once per op); returns it (None: no such row)."""
        if (table, key) in self._seen:
            return self._seen[(table, key)]
        if table == "objects":
            found = self.rows.get(key[0])
            row = None if found is None else found.values()
        elif table == "links":
            row = self.db.execute("SELECT * FROM links WHERE link=?", key).fetchone()
        elif table == "extents":
            row = self.db.execute("SELECT * FROM extents WHERE obj=? AND idx=?", key).fetchone()
        else:
            row = self.db.execute("SELECT * FROM xattrs WHERE obj=? AND name=?", key).fetchone()
        image = list(row) if row else None
        self._seen[(table, key)] = image
        self.undo.append([table, list(key), image])
        return image

    def _record_new(self, table: str, key: tuple[Any, ...]) -> None:
        """Undo image of a row this op created: it did not exist before."""
        if (table, key) not in self._seen:
            self._seen[(table, key)] = None
            self.undo.append([table, list(key), None])

    def insert_object(self, values: dict[str, Any]) -> None:
        """Create (or wholly replace) a row; columns left out take the schema's defaults."""
        key = (values["obj"],)
        if ("objects", key) not in self._seen and not self.rows.exists(key[0]):
            self._record_new("objects", key)  # a fresh ID (the common case): no before-image
        else:
            self._capture("objects", key)
        self.rows.put(ObjectRow(**{**OBJECT_DEFAULTS, **values}))

    def update_object(self, obj: bytes, fields: dict[str, Any]) -> None:
        """Change ``fields`` of the existing row of ``obj``."""
        self._capture("objects", (obj,))
        current = self.rows.get(obj)
        assert current is not None, "update_object of a missing object"
        self.rows.put(current.updated(fields))

    def put_link(
        self, link: bytes, parent: bytes, name: bytes, obj: bytes, kind: int, op: Op
    ) -> None:
        """Create or move a link; ``kind`` (the object's S_IFMT) is kept for subdir counts.

        The caller has made room at ``(parent, name)``, so an insert can only clash on ``link``.
        """
        self.facts.link_added(kind, obj, (parent, name))
        if ("links", (link,)) not in self._seen:
            try:  # a new link (the common case) needs no before-image
                self.db.execute(
                    "INSERT INTO links(link, parent, name, obj, kind, lts, lnode) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (link, parent, name, obj, kind, op.ts, op.node),
                )
                self._record_new("links", (link,))
                return
            except sqlite3.IntegrityError:
                pass
        self._capture("links", (link,))
        self.facts.forget()
        cur = self.db.execute(
            "UPDATE links SET parent=?, name=?, obj=?, kind=?, lts=?, lnode=? WHERE link=?",
            (parent, name, obj, kind, op.ts, op.node, link),
        )
        if cur.rowcount == 0:
            self.db.execute(
                "INSERT INTO links(link, parent, name, obj, kind, lts, lnode) "
                "VALUES (?,?,?,?,?,?,?)",
                (link, parent, name, obj, kind, op.ts, op.node),
            )

    def rename_link(self, link: bytes, name: bytes) -> None:
        self._capture("links", (link,))
        self.facts.forget()
        self.db.execute("UPDATE links SET name=? WHERE link=?", (name, link))

    def delete_link(self, link: bytes) -> None:
        before = self._capture("links", (link,))
        if before is None or before[LINK_KIND_INDEX] == stat.S_IFDIR:
            self.facts.forget()
        else:  # a file's link going away frees a name and changes no directory
            self.facts.file_link_removed(
                before[LINK_OBJ_INDEX], (before[LINK_PARENT_INDEX], before[LINK_NAME_INDEX])
            )
        self.db.execute("DELETE FROM links WHERE link=?", (link,))

    def put_extent(
        self, obj: bytes, index: int, pieces: list[Piece], *, new_row: bool = False
    ) -> None:
        """Set chunk ``index`` of ``obj`` to ``pieces`` (none: the row goes). ``new_row``:
        the caller knows there is no such row (no before-image is read)."""
        self.facts.extents_changed(obj)
        if new_row:
            self._record_new("extents", (obj, index))
        else:
            self._capture("extents", (obj, index))
        if pieces:
            self.db.execute(
                "INSERT OR REPLACE INTO extents(obj, idx, pieces) VALUES (?,?,?)",
                (obj, index, pack_pieces(pieces)),
            )
        else:
            self.db.execute("DELETE FROM extents WHERE obj=? AND idx=?", (obj, index))

    def copy_extents(self, source: bytes, copy: bytes) -> None:
        """Give the new object ``copy`` the extents of ``source``."""
        self.facts.extents_changed(copy)
        if ("extents_all", (copy,)) not in self._seen:
            self._seen[("extents_all", (copy,))] = None
            self.undo.append(["extents_all", [copy], []])
        self.db.execute(
            "INSERT OR REPLACE INTO extents(obj, idx, pieces) "
            "SELECT ?, idx, pieces FROM extents WHERE obj=?",
            (copy, source),
        )

    def set_xattr(self, obj: bytes, name: bytes, value: bytes | None) -> None:
        self._capture("xattrs", (obj, name))
        if value is None:
            self.db.execute("DELETE FROM xattrs WHERE obj=? AND name=?", (obj, name))
        else:
            self.db.execute(
                "INSERT OR REPLACE INTO xattrs(obj, name, value) VALUES (?,?,?)",
                (obj, name, value),
            )


def restore(db: sqlite3.Connection, tx: UndoableWrites, undo: list[list[Any]]) -> None:
    """Put back the before-images of one op (written straight to the tables) with the
    caches of ``tx``."""
    rows = tx.rows
    tx.facts.forget()
    rows.flush()
    for table, key, row in reversed(undo):
        if table == "objects":
            rows.forget(key[0])
            db.execute("DELETE FROM objects WHERE obj=?", key)
        elif table == "links":
            db.execute("DELETE FROM links WHERE link=?", key)
        elif table == "extents":
            db.execute("DELETE FROM extents WHERE obj=? AND idx=?", key)
        elif table == "extents_all":  # every row of one object: ``row`` is [[idx, pieces]...]
            db.execute("DELETE FROM extents WHERE obj=?", key)
            db.executemany(
                "INSERT INTO extents(obj, idx, pieces) VALUES (?,?,?)",
                [(key[0], idx, pieces) for idx, pieces in row],
            )
            continue
        else:
            db.execute("DELETE FROM xattrs WHERE obj=? AND name=?", key)
        if row is not None:
            db.execute(f"INSERT INTO {table} VALUES ({','.join('?' * len(row))})", tuple(row))
