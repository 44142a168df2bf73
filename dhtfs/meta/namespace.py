"""The namespace: SQLite tables holding the tree, and the one deterministic apply function.
The schema and row type are in ``dhtfs.meta.schema``, the undoable writes of one op in
``dhtfs.meta.undo``, file versions in ``dhtfs.meta.versions``.

Tables (one SQLite file, WAL mode):

- ``objects``: one row per file/dir/symlink/special object, keyed by a 16-byte global ID.
  Content is ``size`` + ``chunk_size`` and the ``extents`` rows of the object (see
  ``dhtfs.meta.versions``); ``content_ts``/``content_node`` name the op that wrote the current
  content (its version). ``chunks`` is the content of state directories from before extents,
  moved into ``extents`` once at start; it stays empty.
- ``links``: names. ``(parent, name) → obj``, keyed by a global link ID; a directory has exactly
  one link, a file may have several (hard links). ``id`` (SQLite rowid) is a stable readdir
  offset: a rename updates the row in place. ``lts``/``lnode`` is the op that last named it.
- ``xattrs``: ``(obj, name) → value``.
- ``extents``: ``(obj, chunk index) → pieces``: where a file's bytes are (``dhtfs.meta.extents``).
- ``oplog``: every op ever applied, ordered by ``(ts, node)``, with its undo record, its
  place ``seq`` in its origin's sequence (1, 2, … with no gaps: the replicated log of
  ``dhtfs.oplog.replicator``, whose version vector is ``vector``) and, for ops of other origins,
  their signature ``sig``.
- ``certs``: certificates of the origins whose ops are here (relayed with their ops).
- ``meta``: this node's ID and other scalars.

Transactions (group commit): ``apply`` runs each op in one open SQLite transaction. An op
that fails rolls the transaction back, and the ops applied in it before are applied again
(apply is deterministic), so a failing op leaves no trace and the ops before it stay; cheaper
than a savepoint per op, and failures are rare. The ``oplog`` rows of a transaction are
inserted in one batch when it commits, or before anything reads ``oplog``. Two ways to make
applied ops survive a crash of this process:

- ``persist()``: append them to the op journal (``journal.py``), one small write; what the
  filesystem does before replying to a handler that changed the tree;
- ``commit()``: COMMIT the transaction (WAL, ``synchronous=NORMAL``), then empty the journal;
  a background task does this shortly after the transaction opened, ``fsync`` at once (and
  fsyncs the WAL, for power loss).

At start ``replay_journal()`` re-applies what the journal holds (ops already committed are
recognised and skipped), so a crash between a persist and the next commit loses nothing.

Apply rules (Kleppmann et al., "A highly-available move operation for replicated trees"):
ops are applied in ``(ts, node)`` order. An op older than the newest applied one is inserted
by undoing every newer op (restoring before-images), applying it, and redoing them. Hence the
state is a function of the *set* of ops, whatever order they arrived in. Each change is total:
if it cannot apply it is skipped, the same way on every node:

- a link or move into a missing parent, or one that would make a directory cycle: skipped;
- a name clash: the later op takes the name; the entry it displaces is renamed
  ``NAME.conflict-<node>-<ts>`` after the op that had named it;
- a content write whose base is not the current content (concurrent writers): the current
  content is kept beside the file as ``NAME.conflict-<node>-<ts>``, then the write is laid
  over it (``dhtfs.meta.versions``); a compaction of a version that is no longer current:
  skipped;
- unlinking a directory that still has children: skipped (the children are not lost);
- linking an object that has no name left (and was not made by the same op): skipped.
"""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from dhtfs.meta import versions
from dhtfs.meta.extents import Piece, pack_pieces
from dhtfs.meta.journal import OpJournal
from dhtfs.meta.rows import ObjectRows
from dhtfs.meta.ops import ROOT_OBJ, Change, Op, decode_op, encode_op, pack
from dhtfs.meta.schema import (
    OBJECT_COLUMNS,
    ObjectRow,
    conflict_name,
    connect,  # noqa: F401 (opening a namespace database: callers import it from here)
    decode_journal_record,
    link_ops,
    number_legacy_ops,
)
from dhtfs.meta.undo import LinkFacts, _restore, _Tx
from dhtfs.oplog.entries import chain_link, chain_start


class Namespace:
    """The tree in SQLite plus ``apply``. Not thread-safe: use from one thread (the trio one)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # Object rows (the hottest query), cached, and written back at commit.
        self._rows = ObjectRows(db, ObjectRow, OBJECT_COLUMNS)
        self._facts = LinkFacts()
        # Objects that have (or had, this session) an xattr: the others need no query, which
        # matters because the kernel asks for security.capability before every write.
        self._xattr_objs: set[bytes] = {r[0] for r in db.execute("SELECT DISTINCT obj FROM xattrs")}
        self.on_begin: Callable[[], None] | None = None  # told when a transaction opens
        self.journal: OpJournal | None = None  # see persist()
        # ops applied in the open transaction, in order, with their seq, sig and link
        self._tx_ops: list[tuple[Op, int, bytes | None, bytes]] = []
        self._oplog_rows: list[tuple[Any, ...]] = []  # their unwritten rows
        self._keep_journal = False  # ops applied here may be missing from the tables
        self._ensure_root()
        if self.meta_get("log_numbered") is None:  # once per state directory
            number_legacy_ops(db)
            link_ops(db)
            self.meta_set("log_numbered", b"1")
        if self.meta_get("extents") is None:  # once per state directory
            db.execute("BEGIN IMMEDIATE")
            versions.migrate(db)
            self.meta_set("extents", b"1")
            db.execute("COMMIT")
        self.vector: dict[bytes, int] = {}
        self.heads: dict[bytes, bytes] = {}  # origin → chain link of its last op here
        self.fold_ts = 0
        self._newest: tuple[int, bytes] = (0, b"")
        self.load_log_state()
        self._tx_newest = self._newest  # _newest when the open transaction began

    def reset_caches(self) -> None:
        """Forget every cached answer and re-read the log state: after the tables were
        rewritten underneath (``dhtfs.meta.history``: migration, snapshot install). Commits."""
        self.commit()
        self._rows.discard()
        self._facts.forget()
        self._xattr_objs = {r[0] for r in self.db.execute("SELECT DISTINCT obj FROM xattrs")}
        self._ensure_root()
        self.load_log_state()
        self._tx_newest = self._newest

    def load_log_state(self) -> None:
        """(Re)read what the tables say of the log: ``vector`` (origin → highest seq applied,
        every lower one too, folded or not), ``fold_ts`` (every op at or before it is folded:
        see ``dhtfs.meta.history``) and the newest op."""
        db = self.db
        self.vector, self.heads = {}, {}
        for origin, seq, link in db.execute("SELECT origin, seq, link FROM folded"):
            self.vector[origin] = seq
            if link is not None:
                self.heads[origin] = link
        for node, seq, link in db.execute(
            "SELECT node, seq, link FROM oplog WHERE (node, seq) IN "
            "(SELECT node, max(seq) FROM oplog GROUP BY node)"
        ):
            if seq > self.vector.get(node, 0):
                self.vector[node] = seq
                self.heads[node] = link
        value = self.meta_get("fold_ts")
        self.fold_ts = int(value) if value is not None else 0
        newest = db.execute("SELECT ts, node FROM oplog ORDER BY ts DESC, node DESC LIMIT 1")
        row = newest.fetchone()
        self._newest = (row[0], row[1]) if row else (self.fold_ts, b"")

    # -- transactions --------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """True while applied ops wait for ``commit()``."""
        return self.db.in_transaction

    def commit(self) -> None:
        """End the open transaction: applied ops now survive a crash of this process."""
        if self.db.in_transaction:
            self.write_back()
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                # A full disk (SQLITE_FULL) rolls the transaction back: apply its ops again
                # (the journal still holds them), so the tables match what was applied. If
                # even that fails, the journal is kept until the next start replays it.
                if not self.db.in_transaction:
                    try:
                        self._redo_transaction()
                    except Exception:
                        self._keep_journal = True
                        raise
                raise
        self._tx_ops = []
        if self.journal is not None and not self._keep_journal:
            self.journal.reset()

    def persist(self) -> None:
        """Make every applied op survive a crash of this process: journal them (one write),
        or, without a journal, commit."""
        if self.journal is None:
            self.commit()
        elif self.db.in_transaction:
            self.journal.write()

    def replay_journal(self) -> int:
        """Apply the journal's ops that the database lacks, commit, empty it; → how many."""
        if self.journal is None:
            return 0
        replayed = 0
        for record in self.journal.records():
            op, seq, sig = decode_journal_record(record)
            if seq is not None and seq <= self.vector.get(op.node, 0):
                continue  # committed before the crash
            replayed += self.apply(op, seq=seq, sig=sig)
        self.commit()
        return replayed

    def _begin(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self._tx_ops = []
            self._tx_newest = self._newest
            if self.on_begin is not None:
                self.on_begin()

    def write_back(self) -> None:
        """Write buffered ``objects`` and ``oplog`` rows to the tables (in the open
        transaction; no commit). For whatever reads those tables with SQL."""
        self._rows.flush()
        self._write_oplog()

    def _write_oplog(self) -> None:
        """Insert the open transaction's pending ``oplog`` rows (one batch)."""
        if self._oplog_rows:
            self.db.executemany(
                "INSERT INTO oplog(ts, node, body, undo, seq, sig, link) VALUES (?,?,?,?,?,?,?)",
                self._oplog_rows,
            )
            self._oplog_rows.clear()

    def _redo_transaction(self) -> None:
        """After a failed op: roll the transaction back and apply its earlier ops again."""
        self._rows.discard()
        self._facts.forget()
        self._oplog_rows.clear()
        ops, self._newest = self._tx_ops, self._tx_newest
        self._tx_ops = []
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        for op, seq, sig, link in ops:
            self._begin()
            self._apply_in_order(op, encode_op(op), seq, sig, link)
            self._newest = max(self._newest, op.op_id)
            self._tx_ops.append((op, seq, sig, link))

    # -- apply ---------------------------------------------------------------------------------

    def apply(self, op: Op, *, seq: int | None = None, sig: bytes | None = None) -> bool:
        """Apply ``op`` in its place in the total order; False if it was already applied.

        ``seq``: its place in its origin's log, which must extend ``vector`` by one (default:
        the next, as for an op made here); ``sig``: its origin's signature (None for ours).
        The op joins the open transaction (see the module docstring). If it fails, it leaves
        no trace (the transaction is redone without it) and the exception propagates.
        """
        expected = self.vector.get(op.node, 0) + 1
        if op.ts <= self.fold_ts:
            raise ValueError(f"op at {op.ts} is older than the folded history ({self.fold_ts})")
        if seq is None:
            seq = expected
        elif seq != expected:
            raise ValueError(f"op {op.node.hex()[:12]}#{seq} does not extend the log at {expected}")
        self._begin()
        try:
            body = encode_op(op)
            link = chain_link(self.heads.get(op.node) or chain_start(op.node), seq, body)
            applied = self._apply_in_order(op, body, seq, sig, link)
        except BaseException:
            self._redo_transaction()
            raise
        if op.op_id > self._newest:
            self._newest = op.op_id
        if applied:
            self.vector[op.node] = seq
            self.heads[op.node] = link
            self._tx_ops.append((op, seq, sig, link))
            if self.journal is not None:
                self.journal.add(pack([seq, sig, body]))
        return applied

    def _apply_in_order(
        self, op: Op, body: bytes, seq: int, sig: bytes | None, link: bytes
    ) -> bool:
        db = self.db
        if op.op_id > self._newest:
            # The common case (every local op): nothing to deduplicate, undo or redo.
            self._apply_one(op, body, (seq, sig, link))
            return True
        self.write_back()
        if db.execute("SELECT 1 FROM oplog WHERE ts=? AND node=?", (op.ts, op.node)).fetchone():
            return False
        # A range scan on the primary key; ops at the same ts but a lower node drop out.
        later = [
            row
            for row in db.execute(
                "SELECT ts, node, body, undo, seq, sig, link FROM oplog WHERE ts>=? "
                "ORDER BY ts DESC, node DESC",
                (op.ts,),
            )
            if (row[0], row[1]) > (op.ts, op.node)
        ]
        for row in later:
            _restore(db, self._tx(), msgpack.unpackb(row[3], raw=False))
        self._apply_one(op, body, (seq, sig, link))
        for row in reversed(later):
            db.execute("DELETE FROM oplog WHERE ts=? AND node=?", (row[0], row[1]))
            self._apply_one(decode_op(row[2]), row[2], row[4:])
        return True

    def _tx(self) -> _Tx:
        return _Tx(self.db, self._rows, self._facts)

    def _apply_one(self, op: Op, body: bytes, place: tuple[Any, ...]) -> None:
        """Apply ``op`` (whose encoding is ``body``; ``place``: its seq, sig and link in its
        origin's log) on top of the current state."""
        tx = self._tx()
        for change in op.changes:
            _CHANGE_APPLIERS[change["c"]](self, tx, op, change)
        self._oplog_rows.append((op.ts, op.node, body, pack(tx.undo), *place))

    def _mkobj(self, tx: _Tx, op: Op, c: Change) -> None:
        t = c["time"]
        tx.insert_object(
            {
                "obj": c["obj"],
                "kind": c["kind"],
                "mode": c["mode"],
                "uid": c["uid"],
                "gid": c["gid"],
                "rdev": c.get("rdev", 0),
                "target": c.get("target"),
                "atime": t,
                "mtime": t,
                "ctime": t,
                "content_ts": op.ts,
                "content_node": op.node,
            }
        )

    def _link(self, tx: _Tx, op: Op, c: Change) -> None:
        obj = self.get_object(c["obj"])
        if obj is None or not self.is_live_dir(c["parent"]):
            return
        if (
            obj.is_dir
            and self.db.execute(
                "SELECT 1 FROM links WHERE obj=? AND link<>?", (c["obj"], c["link"])
            ).fetchone()
        ):
            return  # a directory has one name
        if (
            not any(ch["c"] == "mkobj" and ch["obj"] == c["obj"] for ch in op.changes)
            and self.link_count(c["obj"]) == 0
        ):
            # An object that lost its last name stays unnamed (as linkat(2) of an unlinked
            # file fails): folding may collect it on any node, so reviving it could differ.
            return
        self._make_room(tx, c["parent"], c["name"], c["link"])
        tx.put_link(c["link"], c["parent"], c["name"], c["obj"], obj.kind, op)

    def _move(self, tx: _Tx, op: Op, c: Change) -> None:
        row = self.db.execute("SELECT obj, kind FROM links WHERE link=?", (c["link"],)).fetchone()
        if row is None or not self.is_live_dir(c["parent"]):
            return
        if row[1] == stat.S_IFDIR and self._is_ancestor(row[0], c["parent"]):
            return  # would make a cycle
        replace = c.get("replace")
        if replace is not None:
            hit = self.db.execute(
                "SELECT obj FROM links WHERE link=? AND parent=? AND name=?",
                (replace, c["parent"], c["name"]),
            ).fetchone()
            if hit is not None and not self._has_children(hit[0]):
                tx.delete_link(replace)
        self._make_room(tx, c["parent"], c["name"], c["link"])
        tx.put_link(c["link"], c["parent"], c["name"], row[0], row[1], op)

    def _unlink(self, tx: _Tx, op: Op, c: Change) -> None:
        row = self.db.execute("SELECT obj FROM links WHERE link=?", (c["link"],)).fetchone()
        if row is None or self._has_children(row[0]):
            return
        tx.delete_link(c["link"])

    def _attr(self, tx: _Tx, op: Op, c: Change) -> None:
        fields = {k: v for k, v in c["fields"].items() if k in _SETTABLE_ATTRS}
        if fields and self.get_object(c["obj"]) is not None:
            tx.update_object(c["obj"], fields)

    def _content(self, tx: _Tx, op: Op, c: Change) -> None:
        versions.apply_content(self, tx, op, c)

    def _compact(self, tx: _Tx, op: Op, c: Change) -> None:
        versions.apply_compact(self, tx, op, c)

    def _xattr(self, tx: _Tx, op: Op, c: Change) -> None:
        if self.get_object(c["obj"]) is not None:
            self._xattr_objs.add(c["obj"])
            tx.set_xattr(c["obj"], c["name"], c["value"])

    # -- conflict handling ---------------------------------------------------------------------

    def _make_room(self, tx: _Tx, parent: bytes, name: bytes, link: bytes) -> None:
        """If another link holds ``(parent, name)``, rename it after the op that named it."""
        if (parent, name) in self._facts.free_names:
            return
        row = self.db.execute(
            "SELECT link, lts, lnode FROM links WHERE parent=? AND name=? AND link<>?",
            (parent, name, link),
        ).fetchone()
        if row is not None:
            tx.rename_link(row[0], self._free_name(parent, conflict_name(name, row[2], row[1])))

    def _free_name(self, parent: bytes, name: bytes) -> bytes:
        candidate, n = name, 1
        while self.lookup(parent, candidate) is not None:
            n += 1
            candidate = name + f"~{n}".encode()
        return candidate

    def _keep_conflict_copy(self, tx: _Tx, op: Op, loser: ObjectRow) -> None:
        link = self.db.execute(
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
        name = self._free_name(
            link[0], conflict_name(link[1], loser.content_node, loser.content_ts)
        )
        tx.put_link(
            hashlib.sha256(seed + b"link").digest()[:16], link[0], name, copy_id, loser.kind, op
        )

    # -- queries -------------------------------------------------------------------------------

    def get_object(self, obj: bytes) -> ObjectRow | None:
        return self._rows.get(obj)

    def object_count(self) -> int:
        self._rows.flush()
        return self.db.execute("SELECT count(*) FROM objects").fetchone()[0]

    def lookup(self, parent: bytes, name: bytes) -> tuple[bytes, bytes] | None:
        """``(link, obj)`` of ``name`` in directory ``parent``."""
        if (parent, name) in self._facts.free_names:
            return None
        row = self.db.execute(
            "SELECT link, obj FROM links WHERE parent=? AND name=?", (parent, name)
        ).fetchone()
        if row is None:
            self._facts.remember_free(parent, name)
            return None
        return (row[0], row[1])

    def children(self, parent: bytes, after: int = 0, limit: int = 1000) -> list[tuple]:
        """``(id, name, obj)`` of entries in ``parent`` with ``id > after``, in id order."""
        return self.db.execute(
            "SELECT id, name, obj FROM links WHERE parent=? AND id>? ORDER BY id LIMIT ?",
            (parent, after, limit),
        ).fetchall()

    def children_with_objects(
        self, parent: bytes, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, bytes, ObjectRow]]:
        """Like ``children`` but with each entry's object row, in one query."""
        cols = ",".join(f"o.{c}" for c in OBJECT_COLUMNS)
        self._rows.flush()
        rows = self.db.execute(
            f"SELECT l.id, l.name, {cols} FROM links l JOIN objects o ON o.obj=l.obj "
            "WHERE l.parent=? AND l.id>? ORDER BY l.id LIMIT ?",
            (parent, after, limit),
        ).fetchall()
        return [(r[0], r[1], ObjectRow(*r[2:])) for r in rows]

    def link_place(self, link: bytes) -> tuple[bytes, bytes] | None:
        """``(parent, name)`` of ``link``, or None if it does not exist."""
        row = self.db.execute("SELECT parent, name FROM links WHERE link=?", (link,)).fetchone()
        return (row[0], row[1]) if row else None

    def parent_of(self, obj: bytes) -> bytes | None:
        row = self.db.execute("SELECT parent FROM links WHERE obj=? LIMIT 1", (obj,)).fetchone()
        return row[0] if row else None

    def link_count(self, obj: bytes) -> int:
        return self.db.execute("SELECT count(*) FROM links WHERE obj=?", (obj,)).fetchone()[0]

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

    def last_ts(self) -> int:
        self._write_oplog()
        newest = self.db.execute("SELECT coalesce(max(ts), 0) FROM oplog").fetchone()[0]
        return max(newest, self.fold_ts)

    def linked_blocks(self) -> Iterator[bytes]:
        """The blocks of every object that still has a name (repeats possible)."""
        return versions.linked_blocks(self.db)

    def chunk_pieces(self, obj: bytes, index: int) -> list[Piece]:
        """The pieces of chunk ``index`` of ``obj`` (none: a hole)."""
        return versions.chunk_pieces(self.db, obj, index)

    def extents(self, obj: bytes, first: int = 0) -> Iterator[tuple[int, list[Piece]]]:
        """``(index, pieces)`` of each chunk of ``obj`` that holds data, in order."""
        return versions.extent_rows(self.db, obj, first)

    def blocks_of(self, obj: bytes) -> Iterator[bytes]:
        """The blocks of ``obj``'s current version (repeats possible)."""
        return versions.blocks_of_object(self.db, obj)

    def chunks_with_data(self, obj: bytes) -> int:
        return versions.chunks_with_data(self.db, obj)

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
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def meta_set(self, key: str, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, value))

    # -- helpers -------------------------------------------------------------------------------

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

    def _has_children(self, obj: bytes) -> bool:
        return (
            self.db.execute("SELECT 1 FROM links WHERE parent=? LIMIT 1", (obj,)).fetchone()
            is not None
        )

    def _is_ancestor(self, ancestor: bytes, obj: bytes) -> bool:
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

    def _ensure_root(self) -> None:
        if self.get_object(ROOT_OBJ) is None:
            self.db.execute(
                "INSERT INTO objects(obj, kind, mode, uid, gid, atime, mtime, ctime) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (ROOT_OBJ, stat.S_IFDIR, 0o755, 0, 0, 0, 0, 0),
            )


_SETTABLE_ATTRS = frozenset({"mode", "uid", "gid", "atime", "mtime", "ctime"})
_CHANGE_APPLIERS = {
    "mkobj": Namespace._mkobj,
    "link": Namespace._link,
    "move": Namespace._move,
    "unlink": Namespace._unlink,
    "attr": Namespace._attr,
    "content": Namespace._content,
    "compact": Namespace._compact,
    "xattr": Namespace._xattr,
}
