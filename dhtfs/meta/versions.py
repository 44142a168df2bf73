"""File versions in the namespace: the rules that change the ``extents`` table (its layout is
in ``dhtfs.meta.schema``, its queries in ``dhtfs.meta.rows``).

``extents(obj, idx, pieces)`` holds, per file and chunk index with data, the chunk's piece list
(``dhtfs.meta.extents``); a chunk without data has no row, so a sparse petabyte costs nothing.
The object row keeps ``size``, ``chunk_size`` and the version's ID ``(content_ts,
content_node)``: the op that last changed the content.

Two changes write versions; both are O(what they change):

- ``{"c": "content", "obj", "size", "chunk_size", "base", "mtime", "ctime", "cut", "put"}``:
  ``cut`` (or None) drops every byte at or past it (a truncate below the old size), ``put`` is
  a list of ``[offset, length, block, block_offset]`` extents laid over the result in order,
  then everything at or past ``size`` is dropped too. If ``base`` is not the current version
  (a concurrent writer), the current content is first kept beside the file as a conflict copy
  (``keep_conflict_copy``), then the change is laid over it: where two writers touched
  different bytes both survive; where they overlap the later op wins.
  A content change from before extents carries ``chunks`` (the 32-byte ID of the block
  holding each chunk, in order, all-zero for a hole) instead of ``cut``/``put``: it replaces
  the whole content.
- ``{"c": "compact", "obj", "base", "put"}``: the same bytes in fewer blocks (written by
  ``dhtfs.fs.compaction``). Applied only if ``base`` is still the current version, and it
  keeps that version's ID, so a writer that based its change on that version does not
  conflict with it. On any other version it is skipped: the same rule on every node.
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

from dhtfs.meta.extents import Piece, clip, overlay_all, split
from dhtfs.meta.ops import Change, Op
from dhtfs.meta.rows import NamespaceRows, chunk_pieces
from dhtfs.meta.schema import OBJECT_COLUMNS, ObjectRow, conflict_name, legacy_extents
from dhtfs.meta.undo import UndoableWrites

MAX_FILE_SIZE = (1 << 63) - 1
"""The largest size a file may have (the kernel's own limit for FUSE files, 2**63 - 1)."""


def apply_content(ns: NamespaceRows, tx: UndoableWrites, op: Op, c: Change) -> None:
    obj = c["obj"]
    current = ns.get_object(obj)
    if current is None:
        return
    base = c.get("base")
    if base is not None and tuple(base) != (current.content_ts, current.content_node):
        keep_conflict_copy(ns, tx, op, current)
    size = min(max(0, int(c["size"])), MAX_FILE_SIZE)
    legacy = "chunks" in c  # from before extents: the whole chunk list replaces everything
    cut = 0 if legacy else c.get("cut")
    limit = size if cut is None else min(int(cut), size)
    if limit < current.size:
        _cut(ns.db, tx, obj, current.chunk_size or c["chunk_size"], limit)
    # No byte lies past a file's size, so a file cut (or grown) from nothing has no rows.
    has_rows = limit > 0 and current.size > 0 and _has_rows(ns.db, obj)
    # Rows are indexed by the file's chunk size: it changes only when no row is left.
    chunk_size = current.chunk_size if has_rows and current.chunk_size else c["chunk_size"]
    put = legacy_extents(c["chunks"], c["chunk_size"], size) if legacy else c.get("put") or ()
    _put(ns.db, tx, obj, chunk_size, size, put, empty=not has_rows)
    tx.update_object(
        obj,
        {
            "size": size,
            "chunk_size": chunk_size,
            "chunks": b"",
            "mtime": c["mtime"],
            "ctime": c["ctime"],
            "content_ts": op.ts,
            "content_node": op.node,
        },
    )


def keep_conflict_copy(ns: NamespaceRows, tx: UndoableWrites, op: Op, loser: ObjectRow) -> None:
    """Keep ``loser`` (the content a concurrent writer did not see) beside its file as
    ``NAME.conflict-<node>-<ts>``, a new object named after the op that wrote that content."""
    link = ns.db.execute(
        "SELECT parent, name FROM links WHERE obj=? ORDER BY link LIMIT 1", (loser.obj,)
    ).fetchone()
    if link is None:
        return
    seed = b"conflict" + op.ts.to_bytes(8, "big") + op.node + loser.obj
    copy_id = hashlib.sha256(seed).digest()[:16]
    values = dict(zip(OBJECT_COLUMNS, loser.values(), strict=True))
    values["obj"] = copy_id
    tx.insert_object(values)
    tx.copy_extents(loser.obj, copy_id)
    name = ns.free_name(link[0], conflict_name(link[1], loser.content_node, loser.content_ts))
    tx.put_link(
        hashlib.sha256(seed + b"link").digest()[:16], link[0], name, copy_id, loser.kind, op
    )


def apply_compact(ns: NamespaceRows, tx: UndoableWrites, op: Op, c: Change) -> None:
    current = ns.get_object(c["obj"])
    if current is None or tuple(c["base"]) != (current.content_ts, current.content_node):
        return
    _put(ns.db, tx, c["obj"], current.chunk_size, current.size, c["put"])


def _has_rows(db: sqlite3.Connection, obj: bytes) -> bool:
    return db.execute("SELECT 1 FROM extents WHERE obj=? LIMIT 1", (obj,)).fetchone() is not None


def _cut(
    db: sqlite3.Connection, tx: UndoableWrites, obj: bytes, chunk_size: int, limit: int
) -> None:
    """Drop every byte of ``obj`` at or past ``limit`` (undo records each row it changes)."""
    first, rest = divmod(limit, chunk_size)
    if rest:
        pieces = chunk_pieces(db, obj, first)
        if pieces:
            tx.put_extent(obj, first, clip(pieces, rest))
        first += 1
    for (index,) in db.execute(
        "SELECT idx FROM extents WHERE obj=? AND idx>=?", (obj, first)
    ).fetchall():
        tx.put_extent(obj, index, [])


def _put(
    db: sqlite3.Connection,
    tx: UndoableWrites,
    obj: bytes,
    chunk_size: int,
    size: int,
    extents: Any,
    *,
    empty: bool = False,
) -> None:
    """Lay ``[offset, length, block, block_offset]`` extents over ``obj``, in order, each
    clipped to ``size``; every touched chunk row is read and written once (``empty``: the
    file has no rows, so none is read)."""
    touched: dict[int, list[Piece]] = {}
    for offset, length, block, block_offset in extents:
        length = min(length, size - offset)
        if length <= 0 or offset < 0:
            continue
        for index, piece in split(offset, length, block, block_offset, chunk_size):
            touched.setdefault(index, []).append(piece)
    for index, new in touched.items():
        if empty:
            tx.put_extent(obj, index, overlay_all([], new), new_row=True)
        else:
            tx.put_extent(obj, index, overlay_all(chunk_pieces(db, obj, index), new))
