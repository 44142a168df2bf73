"""The op journal: what a crash between a persist and the next SQLite commit leaves behind."""

from __future__ import annotations

from pathlib import Path

from dhtfs.meta.journal import HEADER, OpJournal
from dhtfs.meta.namespace import Namespace
from dhtfs.meta.ops import ROOT_OBJ
from dhtfs.meta.schema import connect
from tests.unit.test_namespace_merge import mkdir


def _open(path: Path) -> Namespace:
    ns = Namespace(connect(path / "ns.db"))
    ns.journal = OpJournal(path / "ops.journal")
    return ns


def test_records_round_trip_and_stop_at_a_torn_tail(tmp_path: Path) -> None:
    j = OpJournal(tmp_path / "j")
    for body in (b"one", b"", b"three" * 100):
        j.add(body)
    assert j.records() == []  # queued, not written
    j.write()
    assert j.records() == [b"one", b"", b"three" * 100]
    with open(tmp_path / "j", "ab") as fh:  # a record cut short by power loss
        fh.write(HEADER.pack(10, 0) + b"abc")
    assert j.records() == [b"one", b"", b"three" * 100]
    j.reset()
    assert j.records() == [] and (tmp_path / "j").stat().st_size == 0


def test_corrupt_record_ends_replay(tmp_path: Path) -> None:
    j = OpJournal(tmp_path / "j")
    j.add(b"good")
    j.add(b"flipped")
    j.add(b"after")
    j.write()
    raw = bytearray((tmp_path / "j").read_bytes())
    raw[HEADER.size + 4 + HEADER.size] ^= 0xFF  # first byte of "flipped"
    (tmp_path / "j").write_bytes(bytes(raw))
    assert j.records() == [b"good"]


def test_persisted_ops_survive_a_crash_before_commit(tmp_path: Path) -> None:
    ns = _open(tmp_path)
    ns.apply(mkdir(b"\xa1" * 16, b"\xb1" * 16, ROOT_OBJ, b"kept", 1))
    ns.persist()  # journaled, SQLite still uncommitted
    ns.apply(mkdir(b"\xa2" * 16, b"\xb2" * 16, ROOT_OBJ, b"lost", 2))  # never persisted
    assert ns.pending
    ns.db.close()  # the crash: SQLite rolls the open transaction back
    ns.journal.close()

    again = _open(tmp_path)
    assert again.tree() == {}  # nothing was committed
    assert again.replay_journal() == 1
    assert set(again.tree()) == {b"kept"}
    assert not again.pending and (tmp_path / "ops.journal").stat().st_size == 0


def test_replaying_committed_ops_changes_nothing(tmp_path: Path) -> None:
    ns = _open(tmp_path)
    ns.apply(mkdir(b"\xa1" * 16, b"\xb1" * 16, ROOT_OBJ, b"d", 1))
    ns.persist()
    saved = (tmp_path / "ops.journal").read_bytes()
    ns.commit()  # a crash right after COMMIT, before the journal was emptied:
    (tmp_path / "ops.journal").write_bytes(saved)
    ns.db.close()
    ns.journal.close()

    again = _open(tmp_path)
    before = again.db.execute("SELECT count(*) FROM oplog").fetchone()[0]
    assert again.replay_journal() == 0
    assert again.db.execute("SELECT count(*) FROM oplog").fetchone()[0] == before
    assert set(again.tree()) == {b"d"}
