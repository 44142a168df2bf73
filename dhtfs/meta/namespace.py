"""The namespace: the tree's tables (``dhtfs.meta.schema``) changed only by applying ops, in
one deterministic order, in group-committed transactions. Queries are ``dhtfs.meta.rows``'s,
the rule for each change ``dhtfs.meta.changes``'s and ``dhtfs.meta.versions``'s.

Order (Kleppmann et al., "A highly-available move operation for replicated trees"): ops are
applied in ``(ts, node)`` order. An op older than the newest applied one is inserted by undoing
every newer op (restoring before-images, ``dhtfs.meta.undo``), applying it, and redoing them.
Hence the state is a function of the *set* of ops, whatever order they arrived in.

Transactions (group commit): ``apply`` runs each op in one open SQLite transaction. An op
that fails rolls the transaction back, and the ops applied in it before are applied again
(apply is deterministic), so a failing op leaves no trace and the ops before it stay; cheaper
than a savepoint per op, and failures are rare. The ``oplog`` rows of a transaction are
inserted in one batch when it commits, or before anything reads ``oplog``. Two ways to make
applied ops survive a crash of this process:

- ``persist()``: append them to the op journal (``dhtfs.meta.journal``), one small write; what the
  filesystem does before replying to a handler that changed the tree;
- ``commit()``: COMMIT the transaction (WAL, ``synchronous=NORMAL``), then empty the journal;
  a background task does this shortly after the transaction opened, ``fsync`` at once (and
  fsyncs the WAL, for power loss).

At start ``replay_journal()`` re-applies what the journal holds (ops already committed are
recognised and skipped), so a crash between a persist and the next commit loses nothing.

Power loss: a COMMIT is not fsynced (``synchronous=NORMAL``). The records of the ops applied
since the last *durable point* (a COMMIT whose WAL was then fsynced: ``commit_mark`` before,
``durable_through`` after) are kept for the filesystem's fsync journal
(``dhtfs.store.syncjournal``), which makes them durable with the blocks they name
(``take_unsynced_records``). Past ``UNSYNCED_RECORDS_MAX`` bytes they are dropped and
``take_unsynced_records`` says None until the next durable point: the caller then commits and
fsyncs the WAL instead.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import msgpack

from dhtfs.base.durable import fsync_file
from dhtfs.base.periodic import Doorbell
from dhtfs.meta.changes import TreeChanges
from dhtfs.meta.journal import OpJournal
from dhtfs.meta.ops import Op, decode_op, encode_op, pack
from dhtfs.meta.schema import decode_journal_record, upgrade
from dhtfs.meta.undo import UndoableWrites, restore
from dhtfs.oplog.entries import chain_link, chain_start

log = logging.getLogger(__name__)


UNSYNCED_RECORDS_MAX = 8 * 1024 * 1024
"""Bytes of op records kept for the fsync journal between durable points (see above)."""


class Namespace(TreeChanges):
    """The tree in SQLite plus ``apply``. Not thread-safe: use from one thread (the trio one).

    ``journal``: where ``persist()`` writes applied ops (None: ``persist()`` commits).
    ``opened``: rung each time a transaction opens (the group-commit loop of
    ``dhtfs.runtime.service`` waits on it; None: nobody does)."""

    def __init__(
        self, db: sqlite3.Connection, journal: OpJournal | None = None, *,
        opened: Doorbell | None = None,
    ) -> None:
        super().__init__(db)
        self.opened = opened  # see commit()
        self.journal = journal  # see persist()
        # ops applied in the open transaction, in order, with their seq, sig and link
        self._tx_ops: list[tuple[Op, int, bytes | None, bytes]] = []
        self._oplog_rows: list[tuple[Any, ...]] = []  # their unwritten rows
        self._keep_journal = False  # ops applied here may be missing from the tables
        # Op records since the last durable point, not yet taken (see the module docstring):
        # ``_applied`` counts every record ever kept; ``_unsynced`` holds those numbered
        # ``_unsynced_from`` on; ``_lost_at``: records were dropped when ``_applied`` was that.
        self._applied = 0
        self._unsynced: list[bytes] = []
        self._unsynced_bytes = 0
        self._unsynced_from = 0
        self._lost_at: int | None = None
        name = next((r[2] for r in db.execute("PRAGMA database_list") if r[1] == "main"), "")
        self.wal_path = f"{name}-wal" if name else None
        self.ensure_root()
        upgrade(db)
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
        self.ensure_root()
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

    def meta_set(self, key: str, value: bytes) -> None:
        """Set ``meta`` key ``key`` in the open transaction (one is opened if none is). If the
        write fails (a full disk: SQLITE_FULL may roll the whole transaction back), the ops
        applied in that transaction are applied again, so the tables still hold every applied
        op, and the error propagates."""
        try:
            super().meta_set(key, value)
        except sqlite3.Error:
            if self._tx_ops and not self.db.in_transaction:
                self._redo_transaction()
            raise

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
        replayed = self.replay_records(self.journal.records())
        self.commit()
        return replayed

    def replay_records(self, records: list[bytes]) -> int:
        """Apply the journaled ops (op journal or fsync journal records) that the database
        lacks, in order; → how many. An op that does not follow its origin's last one here
        (power loss took ops before it that were never made durable) is skipped with the
        rest of that origin's, with a warning: they were never acknowledged by an fsync."""
        replayed = 0
        for record in records:
            op, seq, sig = decode_journal_record(record)
            have = self.vector.get(op.node, 0)
            if seq is not None and seq <= have:
                continue  # committed before the crash
            if seq is not None and seq > have + 1:
                log.warning("journal: op %s#%d does not follow #%d here (lost to power loss "
                            "before any fsync); skipped", op.node.hex()[:12], seq, have)
                continue
            try:
                replayed += self.apply(op, seq=seq, sig=sig)
            except ValueError as exc:  # older than the folded history: nothing to redo
                log.warning("journal: op %s#%s skipped: %s", op.node.hex()[:12], seq, exc)
        return replayed

    def _begin(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self._tx_ops = []
            self._tx_newest = self._newest
            if self.opened is not None:
                self.opened.ring()

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
            record = pack([seq, sig, body])
            if self.journal is not None:
                self.journal.add(record)
            self._keep_unsynced(record)
        return applied

    # -- durable points (power loss) -----------------------------------------------------------

    def _keep_unsynced(self, record: bytes) -> None:
        self._applied += 1
        self._unsynced.append(record)
        self._unsynced_bytes += len(record)
        if self._unsynced_bytes > UNSYNCED_RECORDS_MAX:
            self.lose_unsynced_records()

    def take_unsynced_records(self) -> list[bytes] | None:
        """The records of the ops applied since the last durable point and not taken yet, in
        order (the caller makes them durable: the fsync journal); None if some were dropped
        (too many, or ``lose_unsynced_records``): only a durable point covers them then."""
        if self._lost_at is not None:
            return None
        records, self._unsynced = self._unsynced, []
        self._unsynced_from += len(records)
        self._unsynced_bytes = 0
        return records

    def lose_unsynced_records(self) -> None:
        """Forget the records kept so far (taken ones that did not reach the disk, or too
        many): ``take_unsynced_records`` says None until the next durable point."""
        self._unsynced_from += len(self._unsynced)
        self._unsynced, self._unsynced_bytes = [], 0
        self._lost_at = self._applied

    def commit_mark(self) -> int:
        """Commit; the mark to give ``durable_through`` once the WAL is fsynced."""
        self.commit()
        return self._applied

    def sync_wal(self) -> None:
        """fsync the WAL (any thread: no SQLite call): what is committed survives power loss."""
        if self.wal_path is not None:
            fsync_file(self.wal_path)

    def durable_through(self, mark: int) -> None:
        """Every op applied before ``commit_mark`` returned ``mark`` is durable (its COMMIT's
        WAL was fsynced): their records need not be kept."""
        drop = min(max(mark - self._unsynced_from, 0), len(self._unsynced))
        if drop:
            self._unsynced_bytes -= sum(len(r) for r in self._unsynced[:drop])
            del self._unsynced[:drop]
            self._unsynced_from += drop
        if self._lost_at is not None and self._lost_at <= mark:
            self._lost_at = None

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
            restore(db, self._tx(), msgpack.unpackb(row[3], raw=False))
        self._apply_one(op, body, (seq, sig, link))
        for row in reversed(later):
            db.execute("DELETE FROM oplog WHERE ts=? AND node=?", (row[0], row[1]))
            self._apply_one(decode_op(row[2]), row[2], row[4:])
        return True

    def _tx(self) -> UndoableWrites:
        return UndoableWrites(self.db, self._rows, self._facts)

    def _apply_one(self, op: Op, body: bytes, place: tuple[Any, ...]) -> None:
        """Apply ``op`` (whose encoding is ``body``; ``place``: its seq, sig and link in its
        origin's log) on top of the current state."""
        tx = self._tx()
        for change in op.changes:
            self.apply_change(tx, op, change)
        self._oplog_rows.append((op.ts, op.node, body, pack(tx.undo), *place))

    # -- queries -------------------------------------------------------------------------------

    @property
    def newest_op(self) -> tuple[int, bytes]:
        """The ID of the newest op applied: an op ordered before it is slotted in (every
        newer op is undone, then redone, and may then do something else)."""
        return self._newest

    def ops_after(self, op_id: tuple[int, bytes]) -> list[Op]:
        """Every applied op not folded yet that is ordered after ``op_id``, in order: the
        ops that applying an op at ``op_id`` undoes and redoes."""
        self._write_oplog()
        return [
            decode_op(body)
            for ts, node, body in self.db.execute(
                "SELECT ts, node, body FROM oplog WHERE ts>=? ORDER BY ts, node", (op_id[0],)
            )
            if (ts, node) > op_id
        ]

    def last_ts(self) -> int:
        self._write_oplog()
        newest = self.db.execute("SELECT coalesce(max(ts), 0) FROM oplog").fetchone()[0]
        return max(newest, self.fold_ts)
