"""The namespace's history as a replicated log: entries, certificates and members for the
replicator, folding of stable history, and snapshots for late joiners.

Folding (causal stability). Every member of the swarm reports, in anti-entropy, its version
vector V_m and its clock C_m (every op it makes from then on is stamped after C_m, and every op
it made or received before is in V_m). With S = min over members of V_m (what every member
holds) the fold point is the largest T such that no op ordered at or before T can still be
missing anywhere: T <= C_m for every member m, and for every origin o, T is below the first op
of o that some member lacks (its timestamp, when we hold it; else the last stable op of o).
Ops at or before T are never undone again (nothing can be inserted before them), so their
``oplog`` rows (bodies and undo records) are dropped, and ``folded[o]`` keeps how many of o's
ops were folded; ``fold_ts`` = T refuses any op stamped at or before it. Once nothing is left
unfolded, objects without a name (unlinked files) and their xattrs are deleted too, unless the
kernel or an open handle still holds them (``protected``). Until every known member has
reported, nothing is folded: a member that stays away holds folding back (the log then grows
until it returns), unless it is forgotten (``dhtfs.oplog.membership``): then the others fold
without it, and when it comes back it installs a snapshot with ``restamp_after`` (its ops
that nobody saw stamped anew on top; one that no longer applies is kept in the ``aside``
table, never dropped).

Snapshots. A node whose vector is behind another's ``folded`` cannot get the missing ops any
more; it gets the other's replicated tables instead (objects, links, xattrs, the unfolded
oplog, certificates, folded) and continues from there; ops of its own that the snapshot lacks
are applied again on top (``install``). Snapshots are trusted like the member that serves them (any
member of the swarm's CA); folded ops are no longer individually signed.

Invariants: ``fold`` and ``install`` run between transactions (they commit first) and leave
``Namespace.vector`` unchanged by folding (folded ops still count as held).
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import msgpack

from dhtfs.meta.namespace import Namespace
from dhtfs.meta.ops import ROOT_OBJ, HybridClock, Op, decode_op, encode_op
from dhtfs.meta.schema import link_ops

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 2  # 2: with the extents table
SNAPSHOT_TABLES = ("objects", "links", "xattrs", "extents", "oplog", "certs", "folded")


class History:
    """Log-facing operations on one ``Namespace`` (see the module docstring)."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.db = ns.db

    # -- entries, certificates, members ----------------------------------------------------------

    def entries(self, origin: bytes, after: int, limit: int) -> list[tuple[int, bytes, Any, Any]]:
        """``(seq, body, sig, link)`` of ``origin``'s unfolded ops after ``after``, in order,
        persisted first (``Namespace.persist``), so what leaves the node survives a crash."""
        ns = self.ns
        if ns.pending:
            ns.persist()
        ns.write_back()
        return self.db.execute(
            "SELECT seq, body, sig, link FROM oplog WHERE node=? AND seq>? ORDER BY seq LIMIT ?",
            (origin, after, limit),
        ).fetchall()

    def cert(self, origin: bytes) -> bytes | None:
        row = self.db.execute("SELECT der FROM certs WHERE origin=?", (origin,)).fetchone()
        return row[0] if row else None

    def add_cert(self, origin: bytes, der: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO certs(origin, der) VALUES (?,?)", (origin, der))

    def members(self) -> set[bytes]:
        return {r[0] for r in self.db.execute("SELECT node FROM members")}

    def add_member(self, node: bytes) -> None:
        self.db.execute("INSERT OR IGNORE INTO members(node) VALUES (?)", (node,))

    def folded(self) -> dict[bytes, int]:
        return dict(self.db.execute("SELECT origin, seq FROM folded").fetchall())

    # -- folding ---------------------------------------------------------------------------------

    def fold_point(self, stable: dict[bytes, int], highest: dict[bytes, int], floor: int) -> int:
        """The largest T that ``fold`` may fold up to (see the module docstring)."""
        ns = self.ns
        ns.write_back()
        bound = floor
        for origin, top in highest.items():
            have = ns.vector.get(origin, 0)
            s = min(stable.get(origin, 0), have)
            if s < have:  # we hold o's first op that some member lacks: stop below it
                bound = min(bound, self._ts_of(origin, s + 1) - 1)
            elif top > s:  # someone holds more of o than we do: its stamps are unknown
                bound = min(bound, self._ts_of(origin, s) if s else 0)
        return bound

    def _ts_of(self, origin: bytes, seq: int) -> int:
        row = self.db.execute(
            "SELECT ts FROM oplog WHERE node=? AND seq=?", (origin, seq)
        ).fetchone()
        return row[0] if row else self.ns.fold_ts

    def fold(
        self,
        stable: dict[bytes, int],
        highest: dict[bytes, int],
        floor: int,
        protected: set[bytes] | frozenset[bytes] = frozenset(),
    ) -> int:
        """Fold every op at or before the fold point; returns how many were folded."""
        ns = self.ns
        ns.commit()
        bound = self.fold_point(stable, highest, floor)
        if bound <= ns.fold_ts:
            return 0
        db = self.db
        counts = db.execute(
            "SELECT node, max(seq), count(*) FROM oplog WHERE ts<=? GROUP BY node", (bound,)
        ).fetchall()
        folded = [
            (node, seq, db.execute("SELECT link FROM oplog WHERE node=? AND seq=?",
                                   (node, seq)).fetchone()[0])
            for node, seq, _ in counts
        ]
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM oplog WHERE ts<=?", (bound,))
            db.executemany(  # (an origin's ops fold in seq order: the new seq is the larger)
                "INSERT INTO folded(origin, seq, link) VALUES (?,?,?) ON CONFLICT(origin) "
                "DO UPDATE SET seq=excluded.seq, link=excluded.link",
                folded,
            )
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('fold_ts', ?)",
                       (str(bound).encode(),))
            collected = 0
            if db.execute("SELECT 1 FROM oplog LIMIT 1").fetchone() is None:
                collected = self._collect(protected)
        ns.reset_caches()
        if collected:
            self.shrink()
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        folded = sum(c for _, _, c in counts)
        log.debug("folded %d ops up to %d; collected %d unnamed objects", folded, bound,
                  collected)
        return folded

    def _collect(self, protected: set[bytes] | frozenset[bytes]) -> int:
        """Delete objects without a name (and their xattrs and extents), but the root and
        ``protected``."""
        db = self.db
        unnamed = [
            r[0] for r in db.execute(
                "SELECT obj FROM objects WHERE obj<>? AND obj NOT IN (SELECT obj FROM links)",
                (ROOT_OBJ,),
            )
            if r[0] not in protected
        ]
        db.executemany("DELETE FROM objects WHERE obj=?", [(o,) for o in unnamed])
        db.executemany("DELETE FROM xattrs WHERE obj=?", [(o,) for o in unnamed])
        db.executemany("DELETE FROM extents WHERE obj=?", [(o,) for o in unnamed])
        # Their local inode numbers too (AUTOINCREMENT still never hands a number out twice).
        if db.execute("SELECT 1 FROM sqlite_master WHERE name='inodes'").fetchone():
            db.executemany("DELETE FROM inodes WHERE obj=?", [(o,) for o in unnamed])
        return len(unnamed)

    def shrink(self) -> bool:
        """Give the pages that folding freed back to the file system (VACUUM, then an empty
        WAL) when they are most of the database; True if it did."""
        db = self.db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        if pages < 256 or free * 2 < pages:
            return False
        self.ns.commit()
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return True

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The replicated tables, compressed (see the module docstring)."""
        ns = self.ns
        ns.commit()
        tables = {t: self.db.execute(f"SELECT * FROM {t}").fetchall() for t in SNAPSHOT_TABLES}
        doc = {"format": SNAPSHOT_FORMAT, "fold_ts": ns.fold_ts, "tables": tables}
        return zlib.compress(msgpack.packb(doc, use_bin_type=True), 1)

    @staticmethod
    def snapshot_vector(doc: dict[str, Any]) -> dict[bytes, int]:
        vector = {row[0]: row[1] for row in doc["tables"]["folded"]}
        for row in doc["tables"]["oplog"]:
            node, seq = row[1], row[4]
            vector[node] = max(vector.get(node, 0), seq)
        return vector

    def install(self, blob: bytes, own: bytes, clock: HybridClock,
                restamp_after: int | None = None) -> dict[bytes, int]:
        """Replace the replicated tables with a snapshot; returns the new vector. ValueError
        (and nothing changed) if it is malformed.

        Ops made here that the snapshot lacks are applied again on top of it, with their
        places in this node's log; one stamped at or before the snapshot's fold point (made
        while no member of the snapshot's swarm knew this node) is stamped anew by ``clock``
        (content ops that built on it follow it), since nothing may go before folded history.
        ``restamp_after``: own ops past that place are stamped anew whatever their time (a
        node that was forgotten: the swarm refuses them as they were, see
        ``dhtfs.oplog.membership``).
        """
        try:
            doc = msgpack.unpackb(zlib.decompress(blob), raw=False)
            if doc.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"unknown snapshot format {doc.get('format')!r}")
            vector = self.snapshot_vector(doc)
        except (zlib.error, msgpack.UnpackException, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"malformed snapshot ({exc!r})") from None
        ns = self.ns
        if self.folded().get(own, 0) > vector.get(own, 0):
            raise ValueError(
                "this node has folded changes of its own that the snapshot lacks (it ran "
                "apart from that swarm with this certificate); installing it would lose them. "
                "Copy the files out, then mount a fresh state directory to join"
            )
        mine = [(row[0], decode_op(row[1]))
                for row in self.entries(own, vector.get(own, 0), 1 << 40)]
        ns.commit()
        db = self.db
        with db:
            db.execute("BEGIN IMMEDIATE")
            for table in SNAPSHOT_TABLES:
                if table != "certs":  # certificates only accumulate (ours among them)
                    db.execute(f"DELETE FROM {table}")
                rows = doc["tables"][table]
                if rows:
                    marks = ",".join("?" * len(rows[0]))
                    db.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", rows)
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('fold_ts', ?)",
                       (str(doc["fold_ts"]).encode(),))
        ns.reset_caches()
        clock.observe(ns.last_ts())
        renamed: dict[tuple[int, bytes], list[Any]] = {}
        for seq, op in mine:
            if op.ts <= ns.fold_ts or (restamp_after is not None and seq > restamp_after):
                new = Op(clock.now(), op.node, op.changes)
                renamed[op.op_id] = [new.ts, new.node]
                op = new
            changes = tuple(
                {**c, "base": renamed.get(tuple(c["base"]), c["base"])}
                if c.get("c") in ("content", "compact") and c.get("base") is not None else c
                for c in op.changes
            )
            try:
                ns.apply(Op(op.ts, op.node, changes))
            except (KeyError, TypeError, ValueError) as exc:
                self._keep_aside(op, exc)
        ns.commit()
        if mine:
            log.warning("kept %d ops made here on top of the snapshot (%d stamped anew)",
                        len(mine), len(renamed))
        return dict(ns.vector)

    def _keep_aside(self, op: Op, exc: Exception) -> None:
        """An op of ours that no longer applies on top of a snapshot: kept in the ``aside``
        table (never dropped), with an error naming where."""
        db = self.db
        db.execute("CREATE TABLE IF NOT EXISTS aside (ts INTEGER, node BLOB, body BLOB, "
                   "why TEXT)")
        db.execute("INSERT INTO aside VALUES (?,?,?,?)", (op.ts, op.node, encode_op(op),
                                                         repr(exc)))
        path = next((r[2] for r in db.execute("PRAGMA database_list") if r[1] == "main"), "")
        log.error("an op made here (at %d) does not apply on top of the swarm's snapshot (%r);"
                  " it is kept aside in table 'aside' of %s (decode with "
                  "dhtfs.meta.ops.decode_op)", op.ts, exc, path)

    # -- migration -------------------------------------------------------------------------------

    def adopt_origin(self, old: bytes, new: bytes) -> int:
        """Re-stamp every op made as ``old`` as made by ``new`` (a state directory from before
        the swarm had a random origin ID; a swarm node's is its certificate's node ID).

        Only for a log that never left this node. IDs are 32 random bytes, so replacing them
        in op bodies, undo records and rows changes nothing else; the order of ops is kept
        (this node's timestamps are unique). Returns the ops re-stamped.
        """
        ns = self.ns
        ns.commit()
        db = self.db
        rows = db.execute(
            "SELECT ts, node, body, undo, seq, sig FROM oplog WHERE instr(body, ?) OR "
            "instr(undo, ?)",
            (old, old),
        ).fetchall()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM oplog WHERE instr(body, ?) OR instr(undo, ?)", (old, old))
            db.executemany(
                "INSERT INTO oplog(ts, node, body, undo, seq, sig) VALUES (?,?,?,?,?,?)",
                [
                    (ts, new if node == old else node, body.replace(old, new),
                     undo.replace(old, new), seq, sig)
                    for ts, node, body, undo, seq, sig in rows
                ],
            )
            db.execute("UPDATE objects SET content_node=? WHERE content_node=?", (new, old))
            db.execute("UPDATE links SET lnode=? WHERE lnode=?", (new, old))
            db.execute("UPDATE folded SET origin=? WHERE origin=?", (new, old))
        link_ops(db, new)  # the chain covers the origin's ID and the bodies
        ns.reset_caches()
        return sum(1 for r in rows if r[1] == old)
