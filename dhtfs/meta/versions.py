"""File versions in the namespace: the ``extents`` table and the rules that change it.

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
  (``Namespace._keep_conflict_copy``), then the change is laid over it: where two writers
  touched different bytes both survive; where they overlap the later op wins.
  A content change from before extents carries ``chunks`` (the whole list of 32-byte chunk
  IDs, all-zero for a hole) instead of ``cut``/``put``: it replaces the whole content.
- ``{"c": "compact", "obj", "base", "put"}``: the same bytes in fewer blocks (written by
  ``dhtfs.fs.compaction``). Applied only if ``base`` is still the current version, and it
  keeps that version's ID, so a writer that based its change on that version does not
  conflict with it. On any other version it is skipped: the same rule on every node.
"""

from __future__ import annotations

import sqlite3
import stat
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgpack

from dhtfs.meta.extents import Piece, clip, overlay, overlay_all, pack_pieces, split, unpack_pieces

if TYPE_CHECKING:
    from dhtfs.meta.namespace import Namespace
    from dhtfs.meta.ops import Change, Op
    from dhtfs.meta.undo import _Tx

CHUNK_ID_BYTES = 32
HOLE = bytes(CHUNK_ID_BYTES)
MAX_FILE_SIZE = (1 << 63) - 1
"""The largest size a file may have (the kernel's own limit for FUSE files, 2**63 - 1)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS extents (
    obj BLOB NOT NULL,
    idx INTEGER NOT NULL,
    pieces BLOB NOT NULL,
    PRIMARY KEY (obj, idx)
) WITHOUT ROWID;
"""


# -- queries --------------------------------------------------------------------------------


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


# -- apply ----------------------------------------------------------------------------------


def apply_content(ns: Namespace, tx: _Tx, op: Op, c: Change) -> None:
    obj = c["obj"]
    current = ns.get_object(obj)
    if current is None:
        return
    base = c.get("base")
    if base is not None and tuple(base) != (current.content_ts, current.content_node):
        ns._keep_conflict_copy(tx, op, current)
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
    put = _legacy_extents(c["chunks"], c["chunk_size"], size) if legacy else c.get("put") or ()
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


def apply_compact(ns: Namespace, tx: _Tx, op: Op, c: Change) -> None:
    current = ns.get_object(c["obj"])
    if current is None or tuple(c["base"]) != (current.content_ts, current.content_node):
        return
    _put(ns.db, tx, c["obj"], current.chunk_size, current.size, c["put"])


def _has_rows(db: sqlite3.Connection, obj: bytes) -> bool:
    return db.execute("SELECT 1 FROM extents WHERE obj=? LIMIT 1", (obj,)).fetchone() is not None


def _cut(db: sqlite3.Connection, tx: _Tx, obj: bytes, chunk_size: int, limit: int) -> None:
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
    tx: _Tx,
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


def _legacy_extents(chunks: bytes, chunk_size: int, size: int) -> list[list[Any]]:
    """A pre-extents chunk list as extents: chunk ``i`` covers its span (the block may be
    shorter: the rest reads as zeros)."""
    out = []
    for i in range(0, len(chunks), CHUNK_ID_BYTES):
        block = chunks[i : i + CHUNK_ID_BYTES]
        offset = (i // CHUNK_ID_BYTES) * chunk_size
        span = min(chunk_size, size - offset)
        if block != HOLE and span > 0:
            out.append([offset, span, block, 0])
    return out


def legacy_rows(chunks: bytes, chunk_size: int, size: int) -> list[list[Any]]:
    """``[idx, pieces blob]`` rows of a pre-extents chunk list."""
    rows: dict[int, list[Piece]] = defaultdict(list)
    for offset, length, block, block_offset in _legacy_extents(chunks, chunk_size, size):
        for index, piece in split(offset, length, block, block_offset, chunk_size):
            rows[index] = overlay(rows[index], piece)
    return [[index, pack_pieces(p)] for index, p in sorted(rows.items())]


# -- migration ------------------------------------------------------------------------------


def migrate(db: sqlite3.Connection) -> int:
    """Move content from the pre-extents ``chunks`` column into ``extents`` rows; returns how
    many objects moved. Run once per state directory (``Namespace`` records it in ``meta``):
    every undo image it finds is taken to be from before extents.

    The op log's undo records of the same era hold object images with ``chunks``: each such
    image of a regular file gets an ``extents_all`` entry (the rows its chunk list means, all
    of them, none for an empty list) and its ``chunks`` is emptied, so undoing an old op
    restores the content it found, in today's form.
    """
    from dhtfs.meta.schema import OBJECT_COLUMNS

    moved = 0
    for obj, chunks, chunk_size, size in db.execute(
        "SELECT obj, chunks, chunk_size, size FROM objects WHERE length(chunks)>0"
    ).fetchall():
        db.execute("DELETE FROM extents WHERE obj=?", (obj,))
        db.executemany(
            "INSERT INTO extents(obj, idx, pieces) VALUES (?,?,?)",
            [(obj, i, p) for i, p in legacy_rows(chunks, chunk_size, size)],
        )
        db.execute("UPDATE objects SET chunks=x'' WHERE obj=?", (obj,))
        moved += 1
    col = {name: i for i, name in enumerate(OBJECT_COLUMNS)}
    updates = []
    for ts, node, undo_blob in db.execute("SELECT ts, node, undo FROM oplog").fetchall():
        undo = msgpack.unpackb(undo_blob, raw=False)
        out, changed = [], False
        for entry in undo:
            table, key, image = entry
            if table == "objects" and image is not None and (
                image[col["kind"]] == stat.S_IFREG or image[col["chunks"]]
            ):
                rows = legacy_rows(
                    image[col["chunks"]], image[col["chunk_size"]], image[col["size"]]
                )
                image = list(image)
                image[col["chunks"]] = b""
                out.append([table, key, image])
                out.append(["extents_all", key, rows])
                changed = True
            else:
                out.append(entry)
        if changed:
            updates.append((msgpack.packb(out, use_bin_type=True), ts, node))
    db.executemany("UPDATE oplog SET undo=? WHERE ts=? AND node=?", updates)
    return moved
