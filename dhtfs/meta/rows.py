"""Object rows: a read cache and a write-back buffer in front of the ``objects`` table.

A file create writes its new object row and touches its parent's; the flush that follows
rewrites the new row with the file's content. Written through, that is three SQLite writes per
small file, and a hundred files created in one directory touch the parent a hundred times.
Buffered, a group commit writes each changed row once.

Invariants:
- ``get(obj)`` is the row as every write so far left it: the buffered row if there is one,
  else the table's;
- every buffered (dirty) row is also cached, and the cache is never emptied with dirty rows in
  it (``flush`` first), so a cache miss may read the table;
- ``flush()`` writes every dirty row (``INSERT OR REPLACE`` of whole rows, one batch) inside
  the caller's open transaction; whatever reads ``objects`` with SQL flushes first;
- ``discard()`` forgets everything buffered (after a rollback, which the caller redoes).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dhtfs.meta.schema import ObjectRow

CACHE_ENTRIES = 65536


class ObjectRows:
    """``obj → ObjectRow`` over one connection's ``objects`` table (see the module doc)."""

    def __init__(
        self, db: sqlite3.Connection, row_type: type[ObjectRow], columns: tuple[str, ...]
    ) -> None:
        """``row_type(*values)`` builds a row from the table's ``columns``; ``row.values()``
        gives them back in that order."""
        self.db = db
        self._row_type = row_type
        self._cache: dict[bytes, ObjectRow] = {}
        self._dirty: dict[bytes, ObjectRow] = {}
        self._select_sql = f"SELECT {','.join(columns)} FROM objects WHERE obj=?"
        self._replace_sql = (
            f"INSERT OR REPLACE INTO objects({','.join(columns)}) "
            f"VALUES ({','.join('?' * len(columns))})"
        )

    def get(self, obj: bytes) -> ObjectRow | None:
        row = self._cache.get(obj)
        if row is None:
            found = self.db.execute(self._select_sql, (obj,)).fetchone()
            if found is None:
                return None
            row = self._row_type(*found)
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
