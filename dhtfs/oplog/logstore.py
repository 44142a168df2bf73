"""Log stores: what the replicator needs of one (``LogStore`` and the two kinds that also
forget history, ``TrimmingStore`` and ``FoldingStore``), and the stores of nodes without a
namespace: in memory (the simulator) and in SQLite (a headless storage node, so that a
returning mount can catch up from it when no other mount is up). A mount's store is its
namespace (``dhtfs.meta.replica.NamespaceLog``, a ``FoldingStore``).

Every store names the protocol it implements as a base class; the replicator
(``dhtfs.oplog.folding.Folding``) tells the kinds apart by those protocols, never by probing for
attributes.

Invariants (``LogStore``): entries of an origin are held as the run ``1..vector[origin]`` with
no holes; ``accept`` takes entries that extend the runs, in order. The stores here apply
nothing: they keep and serve. A headless node's drops what every member holds (``trim``), so
its log does not grow forever either.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from dhtfs.oplog.entries import InvalidEntry, LogEntry, chain_link, chain_start


@runtime_checkable
class LogStore(Protocol):
    """Where a node keeps the log (see ``dhtfs.oplog.replicator`` for the invariants)."""

    def vector(self) -> dict[bytes, int]:
        """origin → highest seq held (every lower one is held too)."""
        ...

    def entries_after(self, origin: bytes, seq: int, limit: int) -> list[LogEntry]:
        """Up to ``limit`` entries of ``origin`` after ``seq``, in order, with their links
        and the signatures held (a run of another origin's ends with a signed entry). Each
        survives a crash of this process from now on (a store persists before it hands
        out)."""
        ...

    def accept(self, entries: Sequence[LogEntry]) -> None:
        """Store and apply authenticated entries (with their signatures, None inside a
        batch); each extends its origin's run by one, in order; the store keeps each one's
        chain link. Raises ``InvalidEntry`` for the first one it refuses (those before it
        are kept)."""
        ...

    def head(self, origin: bytes) -> bytes:
        """The chain link of the last entry of ``origin`` held (``chain_start`` if none)."""
        ...

    def cert(self, origin: bytes) -> bytes | None:
        """The DER certificate of ``origin``, if known."""
        ...

    def add_cert(self, origin: bytes, der: bytes) -> None:
        """Keep a verified certificate (relays must forward it with the origin's entries)."""
        ...


@runtime_checkable
class TrimmingStore(LogStore, Protocol):
    """A store that drops what every member holds, keeping only its vector and chain heads
    (a headless node's; the simulator's)."""

    def folded(self) -> dict[bytes, int]:
        """origin → entries no longer served one by one (a puller behind them is told)."""
        ...

    def trim(self, stable: dict[bytes, int]) -> int:
        """Drop the entries of each origin up to ``stable[origin]`` (every member holds
        them); returns how many went."""
        ...


@runtime_checkable
class FoldingStore(LogStore, Protocol):
    """A store that can fold stable history and serve and install snapshots (a mount's)."""

    def clock(self) -> int:
        """Every entry made here from now on is ordered after this."""
        ...

    def folded(self) -> dict[bytes, int]:
        """origin → entries folded (no longer served one by one)."""
        ...

    def fold(self, stable: dict[bytes, int], highest: dict[bytes, int], floor: int) -> int:
        """Fold what is stable: ``stable``/``highest`` are the component-wise minimum and
        maximum of every member's vector, ``floor`` the smallest clock any member reported;
        returns the entries folded (``dhtfs.meta.history``)."""
        ...

    def snapshot(self) -> bytes:
        """The replicated state, as one blob a peer can ``install``."""
        ...

    def install(self, blob: bytes, restamp_after: int | None = None) -> None:
        """Install a peer's ``snapshot`` (ValueError if it is malformed); own entries past
        ``restamp_after``, if given, are made anew on top of it."""
        ...

    def members(self) -> set[bytes]:
        """The members kept from earlier runs."""
        ...

    def add_member(self, node: bytes) -> None:
        """Keep ``node`` as a member across restarts."""
        ...


class MemoryLogStore(LogStore):
    """Entries in dicts; ``append_own`` makes a new own entry (the simulator's writers)."""

    def __init__(self, own_id: bytes) -> None:
        self.own_id = own_id
        self._runs: dict[bytes, list[LogEntry]] = {}
        self._certs: dict[bytes, bytes] = {}

    def vector(self) -> dict[bytes, int]:
        return {o: len(run) for o, run in self._runs.items()}

    def head(self, origin: bytes) -> bytes:
        run = self._runs.get(origin)
        return run[-1].link if run and run[-1].link else chain_start(origin)

    def entries_after(self, origin: bytes, seq: int, limit: int) -> list[LogEntry]:
        return self._runs.get(origin, [])[seq : seq + limit]

    def accept(self, entries: Sequence[LogEntry]) -> None:
        for e in entries:
            run = self._runs.setdefault(e.origin, [])
            if e.seq != len(run) + 1:
                raise InvalidEntry(e, f"expected seq {len(run) + 1}")
            link = chain_link(self.head(e.origin), e.seq, e.body)
            run.append(LogEntry(e.origin, e.seq, e.body, e.sig, link))

    def append_own(self, body: bytes) -> LogEntry:
        run = self._runs.setdefault(self.own_id, [])
        seq = len(run) + 1
        link = chain_link(self.head(self.own_id), seq, body)
        entry = LogEntry(self.own_id, seq, body, None, link)
        run.append(entry)
        return entry

    def has(self, origin: bytes, seq: int) -> bool:
        return seq <= len(self._runs.get(origin, ()))

    def cert(self, origin: bytes) -> bytes | None:
        return self._certs.get(origin)

    def add_cert(self, origin: bytes, der: bytes) -> None:
        self._certs[origin] = der


SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    origin BLOB NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    sig BLOB,
    link BLOB NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS certs (origin BLOB PRIMARY KEY, der BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trimmed (
    origin BLOB PRIMARY KEY, seq INTEGER NOT NULL, link BLOB NOT NULL
) WITHOUT ROWID;
"""


class SqliteLogStore(TrimmingStore):
    """Entries in ``<state>/oplog.db`` (WAL; each ``accept`` is one transaction).

    ``trim(stable)`` drops entries every member holds (``trimmed`` keeps, per origin, how
    many and the chain link of the last, so the vector and the chain go on); ``folded()``
    says what it no longer serves.
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(entries)")}
        if columns and "link" not in columns:  # entries signed one by one: pull them again
            self.db.execute("DROP TABLE entries")
        self.db.executescript(SCHEMA)
        path.chmod(0o600)
        self._vector: dict[bytes, int] = {}
        self._heads: dict[bytes, bytes] = {}
        for origin, seq, link in [
            *self.db.execute("SELECT origin, seq, link FROM trimmed"),
            *self.db.execute(
                "SELECT origin, seq, link FROM entries WHERE (origin, seq) IN "
                "(SELECT origin, max(seq) FROM entries GROUP BY origin)"
            ),
        ]:
            if seq > self._vector.get(origin, 0):
                self._vector[origin], self._heads[origin] = seq, link

    def vector(self) -> dict[bytes, int]:
        return dict(self._vector)

    def head(self, origin: bytes) -> bytes:
        return self._heads.get(origin) or chain_start(origin)

    def entries_after(self, origin: bytes, seq: int, limit: int) -> list[LogEntry]:
        rows = self.db.execute(
            "SELECT seq, body, sig, link FROM entries WHERE origin=? AND seq>? ORDER BY seq "
            "LIMIT ?",
            (origin, seq, limit),
        ).fetchall()
        return [LogEntry(origin, s, b, g, k) for s, b, g, k in rows]

    def accept(self, entries: Sequence[LogEntry]) -> None:
        rows = []
        vector, heads = dict(self._vector), dict(self._heads)
        refused: InvalidEntry | None = None
        for e in entries:
            if e.seq != vector.get(e.origin, 0) + 1:
                refused = InvalidEntry(e, f"expected seq {vector.get(e.origin, 0) + 1}")
                break
            link = chain_link(heads.get(e.origin) or chain_start(e.origin), e.seq, e.body)
            vector[e.origin], heads[e.origin] = e.seq, link
            rows.append((e.origin, e.seq, e.body, e.sig, link))
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO entries VALUES (?,?,?,?,?)", rows)
        self._vector, self._heads = vector, heads
        if refused is not None:
            raise refused

    def folded(self) -> dict[bytes, int]:
        return dict(self.db.execute("SELECT origin, seq FROM trimmed").fetchall())

    def trim(self, stable: dict[bytes, int]) -> int:
        """Drop the entries of each origin up to ``stable[origin]`` (every member holds
        them); returns how many went."""
        done = self.folded()
        cuts = []
        for origin, seq in stable.items():
            seq = min(seq, self._vector.get(origin, 0))
            if seq > done.get(origin, 0):
                row = self.db.execute(
                    "SELECT link FROM entries WHERE origin=? AND seq=?", (origin, seq)
                ).fetchone()
                if row is not None:
                    cuts.append((origin, seq, row[0]))
        dropped = 0
        with self.db:
            self.db.execute("BEGIN")
            for origin, seq, link in cuts:
                dropped += self.db.execute(
                    "DELETE FROM entries WHERE origin=? AND seq<=?", (origin, seq)
                ).rowcount
                self.db.execute("INSERT OR REPLACE INTO trimmed VALUES (?,?,?)",
                                (origin, seq, link))
        return dropped

    def cert(self, origin: bytes) -> bytes | None:
        row = self.db.execute("SELECT der FROM certs WHERE origin=?", (origin,)).fetchone()
        return row[0] if row else None

    def add_cert(self, origin: bytes, der: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO certs VALUES (?,?)", (origin, der))

    def close(self) -> None:
        self.db.close()
