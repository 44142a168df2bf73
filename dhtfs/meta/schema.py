"""The namespace's storage layout: the SQLite schema, the ``objects`` row type, opening a
database, and the upgrades older state directories need (numbering and chain links of ops from
before the swarm, content from before extents). The rows are read in ``dhtfs.meta.rows`` and
changed only by applying ops (``dhtfs.meta.namespace``).

Tables (one SQLite file, WAL mode):

- ``objects``: one row per file/dir/symlink/special object, keyed by a 16-byte global ID.
  Content is ``size`` + ``chunk_size`` and the ``extents`` rows of the object (see
  ``dhtfs.meta.versions``); ``content_ts``/``content_node`` name the op that wrote the current
  content (its version). ``chunks`` is the content of state directories from before extents,
  moved into ``extents`` once at start (``upgrade``); it stays empty.
- ``links``: names. ``(parent, name) → obj``, keyed by a global link ID; a directory has exactly
  one link, a file may have several (hard links). ``id`` (SQLite rowid) is a stable readdir
  offset: a rename updates the row in place. ``lts``/``lnode`` is the op that last named it.
- ``xattrs``: ``(obj, name) → value``.
- ``extents``: ``(obj, chunk index) → pieces``: where the bytes of each chunk of a file are, as
  ranges of blocks (``dhtfs.meta.extents``); a chunk without data has no row.
- ``oplog``: every op ever applied, ordered by ``(ts, node)``, with its undo record, its
  place ``seq`` in its origin's sequence (1, 2, … with no gaps: the replicated log of
  ``dhtfs.oplog.replicator``, whose version vector is ``vector``) and, for ops of other origins,
  their signature ``sig``.
- ``certs``: certificates of the origins whose ops are here (relayed with their ops).
- ``folded``: per origin, the last op folded away (``dhtfs.meta.history``).
- ``meta``: this node's ID and other scalars.

Invariants:
- ``connect`` leaves a database with every table and column this version uses, whatever
  version created it (columns are added, never dropped: older data stays readable);
- ``ObjectRow`` values are in ``OBJECT_COLUMNS`` order, the ``objects`` table's.
"""

from __future__ import annotations

import operator
import sqlite3
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from dhtfs.meta.extents import Piece, overlay, pack_pieces, split
from dhtfs.meta.ops import Op, decode_op
from dhtfs.oplog.entries import chain_link, chain_start

EXTENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS extents (
    obj BLOB NOT NULL,
    idx INTEGER NOT NULL,
    pieces BLOB NOT NULL,
    PRIMARY KEY (obj, idx)
) WITHOUT ROWID;
"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS objects (
    obj BLOB PRIMARY KEY,
    kind INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0,
    target BLOB,
    atime INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    chunk_size INTEGER NOT NULL DEFAULT 0,
    chunks BLOB NOT NULL DEFAULT x'',
    content_ts INTEGER NOT NULL DEFAULT 0,
    content_node BLOB NOT NULL DEFAULT x''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    link BLOB NOT NULL UNIQUE,
    parent BLOB NOT NULL,
    name BLOB NOT NULL,
    obj BLOB NOT NULL,
    kind INTEGER NOT NULL,
    lts INTEGER NOT NULL,
    lnode BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS links_by_name ON links(parent, name);
CREATE INDEX IF NOT EXISTS links_by_parent ON links(parent, id);
DROP INDEX IF EXISTS links_by_kind;
CREATE INDEX IF NOT EXISTS links_subdirs ON links(parent) WHERE kind=16384;
CREATE INDEX IF NOT EXISTS links_by_obj ON links(obj);
CREATE TABLE IF NOT EXISTS xattrs (
    obj BLOB NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (obj, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS oplog (
    ts INTEGER NOT NULL,
    node BLOB NOT NULL,
    body BLOB NOT NULL,
    undo BLOB NOT NULL,
    seq INTEGER,
    sig BLOB,
    link BLOB,
    PRIMARY KEY (ts, node)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS certs (origin BLOB PRIMARY KEY, der BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS folded (
    origin BLOB PRIMARY KEY, seq INTEGER NOT NULL, link BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (node BLOB PRIMARY KEY) WITHOUT ROWID;
"""
    + EXTENTS_SCHEMA
)

OBJECT_COLUMNS = (
    "obj",
    "kind",
    "mode",
    "uid",
    "gid",
    "rdev",
    "target",
    "atime",
    "mtime",
    "ctime",
    "size",
    "chunk_size",
    "chunks",
    "content_ts",
    "content_node",
)
# Columns an insert may leave out (the schema's defaults), to build a cached row from an insert.
OBJECT_DEFAULTS: dict[str, Any] = {
    "rdev": 0,
    "target": None,
    "size": 0,
    "chunk_size": 0,
    "chunks": b"",
    "content_ts": 0,
    "content_node": b"",
}
LINK_COLUMNS = ("id", "link", "parent", "name", "obj", "kind", "lts", "lnode")
LINK_KIND_INDEX = LINK_COLUMNS.index("kind")
LINK_OBJ_INDEX = LINK_COLUMNS.index("obj")
LINK_PARENT_INDEX = LINK_COLUMNS.index("parent")
LINK_NAME_INDEX = LINK_COLUMNS.index("name")
_object_values = operator.attrgetter(*OBJECT_COLUMNS)


@dataclass(slots=True, frozen=True)
class ObjectRow:
    """An ``objects`` row. ``kind`` is the S_IFMT bits; ``mode`` the permission bits.

    Frozen: rows are shared through the namespace's row cache.
    """

    obj: bytes
    kind: int
    mode: int
    uid: int
    gid: int
    rdev: int
    target: bytes | None
    atime: int
    mtime: int
    ctime: int
    size: int
    chunk_size: int
    chunks: bytes
    content_ts: int
    content_node: bytes

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    def values(self) -> tuple[Any, ...]:
        """The row's values in ``OBJECT_COLUMNS`` order (the table's)."""
        return _object_values(self)

    def updated(self, fields: dict[str, Any]) -> ObjectRow:
        """This row with ``fields`` (column → value) changed."""
        return ObjectRow(*[fields[c] if c in fields else getattr(self, c) for c in OBJECT_COLUMNS])


# -- state directories from older versions --------------------------------------------------

BLOCK_ID_BYTES = 32
HOLE = bytes(BLOCK_ID_BYTES)


def decode_journal_record(record: bytes) -> tuple[Op, int | None, bytes | None]:
    """``(op, seq, sig)`` of a journal record: ``[seq, sig, body]``, or (written before the
    swarm) the bare op encoding, whose seq is the next of its origin."""
    fields = msgpack.unpackb(record, raw=False)
    if len(fields) == 3:
        seq, sig, body = fields
        return decode_op(body), seq, sig
    return decode_op(record), None, None


def number_legacy_ops(db: sqlite3.Connection) -> None:
    """Give ops from before the swarm (no ``seq``) their places, per origin in op order."""
    if db.execute("SELECT 1 FROM oplog WHERE seq IS NULL LIMIT 1").fetchone() is None:
        return
    rows = db.execute("SELECT ts, node FROM oplog WHERE seq IS NULL ORDER BY ts, node").fetchall()
    counts: dict[bytes, int] = dict(
        db.execute("SELECT node, max(seq) FROM oplog WHERE seq IS NOT NULL GROUP BY node")
    )
    updates = []
    for ts, node in rows:
        counts[node] = counts.get(node, 0) + 1
        updates.append((counts[node], ts, node))
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("UPDATE oplog SET seq=? WHERE ts=? AND node=?", updates)


def link_ops(db: sqlite3.Connection, origin: bytes | None = None) -> int:
    """Fill in the chain links (``dhtfs.oplog.entries.chain_link``) of ops that have none
    (from before links were kept), or, for ``origin``, recompute all of its (after its ops
    were re-stamped); returns how many."""
    if origin is None:
        origins = [r[0] for r in db.execute("SELECT DISTINCT node FROM oplog WHERE link IS NULL")]
    else:
        origins = [origin]
    updates = []
    for node in origins:
        row = db.execute("SELECT seq, link FROM folded WHERE origin=?", (node,)).fetchone()
        link = row[1] if row and row[1] else chain_start(node)
        rows = db.execute(
            "SELECT ts, seq, body, link FROM oplog WHERE node=? ORDER BY seq", (node,)
        ).fetchall()
        for ts, seq, body, old in rows:
            link = chain_link(link, seq, body) if old is None or origin is not None else old
            if old != link:
                updates.append((link, ts, node))
    if updates:
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("UPDATE oplog SET link=? WHERE ts=? AND node=?", updates)
    return len(updates)


def legacy_extents(chunks: bytes, chunk_size: int, size: int) -> list[list[Any]]:
    """A pre-extents chunk list (one 32-byte block ID per chunk, all-zero for a hole) as
    extents: the block of chunk ``i`` covers the chunk's span (the block may be shorter: the
    rest reads as zeros)."""
    out = []
    for i in range(0, len(chunks), BLOCK_ID_BYTES):
        block = chunks[i : i + BLOCK_ID_BYTES]
        offset = (i // BLOCK_ID_BYTES) * chunk_size
        span = min(chunk_size, size - offset)
        if block != HOLE and span > 0:
            out.append([offset, span, block, 0])
    return out


def legacy_rows(chunks: bytes, chunk_size: int, size: int) -> list[list[Any]]:
    """``[idx, pieces blob]`` rows of a pre-extents chunk list."""
    rows: dict[int, list[Piece]] = defaultdict(list)
    for offset, length, block, block_offset in legacy_extents(chunks, chunk_size, size):
        for index, piece in split(offset, length, block, block_offset, chunk_size):
            rows[index] = overlay(rows[index], piece)
    return [[index, pack_pieces(p)] for index, p in sorted(rows.items())]


def migrate_extents(db: sqlite3.Connection) -> int:
    """Move content from the pre-extents ``chunks`` column into ``extents`` rows; returns how
    many objects moved. Run once per state directory (``upgrade`` records it in ``meta``):
    every undo image it finds is taken to be from before extents.

    The op log's undo records of the same era hold object images with ``chunks``: each such
    image of a regular file gets an ``extents_all`` entry (the rows its chunk list means, all
    of them, none for an empty list) and its ``chunks`` is emptied, so undoing an old op
    restores the content it found, in today's form.
    """
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


def upgrade(db: sqlite3.Connection) -> None:
    """Once per state directory (each step records that it ran in ``meta``): number and link
    the ops from before the swarm, then move content from before extents into ``extents``."""
    if meta_value(db, "log_numbered") is None:
        number_legacy_ops(db)
        link_ops(db)
        set_meta_value(db, "log_numbered", b"1")
    if meta_value(db, "extents") is None:
        db.execute("BEGIN IMMEDIATE")
        migrate_extents(db)
        set_meta_value(db, "extents", b"1")
        db.execute("COMMIT")


def meta_value(db: sqlite3.Connection, key: str) -> bytes | None:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else None


def set_meta_value(db: sqlite3.Connection, key: str, value: bytes) -> None:
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, value))


def conflict_name(name: bytes, node: bytes, ts: int) -> bytes:
    return name + f".conflict-{node.hex()[:8]}-{ts}".encode()


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (and create) the namespace database with the pragmas dhtfs relies on."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA journal_size_limit=1048576")  # a checkpointed WAL shrinks to 1 MiB
    db.execute("PRAGMA cache_size=-16384")  # 16 MiB: a group commit's dirty pages stay in memory
    db.execute("PRAGMA foreign_keys=OFF")
    db.executescript(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(oplog)")}
    if "seq" not in columns:  # a state directory from before the swarm: number its ops
        db.execute("ALTER TABLE oplog ADD COLUMN seq INTEGER")
        db.execute("ALTER TABLE oplog ADD COLUMN sig BLOB")
    if "link" not in columns:
        db.execute("ALTER TABLE oplog ADD COLUMN link BLOB")
    if "link" not in {row[1] for row in db.execute("PRAGMA table_info(folded)")}:
        db.execute("ALTER TABLE folded ADD COLUMN link BLOB")
    db.execute("CREATE INDEX IF NOT EXISTS oplog_by_origin ON oplog(node, seq)")
    return db
