"""The namespace as a replicated log: per-origin sequence numbers with no gaps, signatures
kept through undo/redo and crashes, migration of state directories from before the swarm."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dhtfs.base.errors import ConfigError
from dhtfs.meta.history import History
from dhtfs.meta.journal import OpJournal
from dhtfs.meta.namespace import Namespace
from dhtfs.meta.ops import ROOT_OBJ, decode_op, encode_op
from dhtfs.meta.schema import connect
from dhtfs.meta.tree import bind_origin
from dhtfs.oplog.entries import chain_link, chain_start
from tests.unit.test_namespace_merge import LINKS, NODES, OBJS, mkdir

X, Y = NODES[0], NODES[1]


def fresh(path: Path | str = ":memory:") -> Namespace:
    return Namespace(connect(path))


def test_vector_and_entries_follow_each_origin_without_gaps() -> None:
    ns = fresh()
    ops = [mkdir(OBJS[i], LINKS[i], ROOT_OBJ, f"d{i}".encode(), 10 + i, X) for i in range(3)]
    for op in ops:
        ns.apply(op)  # made here: the next seq of its origin
    ns.apply(mkdir(OBJS[3], LINKS[3], ROOT_OBJ, b"y1", 11, Y), seq=1, sig=b"sig-1")
    assert ns.vector == {X: 3, Y: 1}
    got = History(ns).entries(X, 1, 10)
    assert [row[0] for row in got] == [2, 3]
    assert [decode_op(row[1]) for row in got] == ops[1:]
    y_body = encode_op(mkdir(OBJS[3], LINKS[3], ROOT_OBJ, b"y1", 11, Y))
    assert History(ns).entries(Y, 0, 10) == [
        (1, y_body, b"sig-1", chain_link(chain_start(Y), 1, y_body))
    ]
    # Each op's link extends its origin's chain.
    link = chain_start(X)
    for seq, body, _sig, stored in History(ns).entries(X, 0, 10):
        link = chain_link(link, seq, body)
        assert stored == link
    assert ns.heads[X] == link
    with pytest.raises(ValueError):  # a gap: seq 3 of Y before its seq 2
        ns.apply(mkdir(OBJS[4], LINKS[4], ROOT_OBJ, b"y3", 20, Y), seq=3, sig=b"s")
    assert ns.vector == {X: 3, Y: 1}
    assert ns.lookup(ROOT_OBJ, b"y3") is None


def test_an_older_op_arriving_late_keeps_the_later_ops_seq_and_sig() -> None:
    ns = fresh()
    ns.apply(mkdir(OBJS[0], LINKS[0], ROOT_OBJ, b"late-ts", 100, Y), seq=1, sig=b"y-sig")
    ns.apply(mkdir(OBJS[1], LINKS[1], ROOT_OBJ, b"early-ts", 50, X), seq=1, sig=b"x-sig")
    ns.write_back()  # the Y op was undone and redone around the X op
    rows = ns.db.execute("SELECT node, seq, sig, link FROM oplog ORDER BY ts").fetchall()
    assert [r[:3] for r in rows] == [(X, 1, b"x-sig"), (Y, 1, b"y-sig")]
    y_body = encode_op(mkdir(OBJS[0], LINKS[0], ROOT_OBJ, b"late-ts", 100, Y))
    assert rows[1][3] == chain_link(chain_start(Y), 1, y_body)


def test_journal_replay_restores_seq_and_sig(tmp_path: Path) -> None:
    ns = fresh(tmp_path / "ns.db")
    ns.journal = OpJournal(tmp_path / "ops.journal")
    ns.apply(mkdir(OBJS[0], LINKS[0], ROOT_OBJ, b"a", 10, X))
    ns.commit()
    ns.apply(mkdir(OBJS[1], LINKS[1], ROOT_OBJ, b"b", 20, Y), seq=1, sig=b"y-sig")
    ns.apply(mkdir(OBJS[2], LINKS[2], ROOT_OBJ, b"c", 30, X))
    ns.persist()  # journaled, never committed: a crash now
    ns_heads = dict(ns.heads)
    ns.db.close()
    again = fresh(tmp_path / "ns.db")
    again.journal = OpJournal(tmp_path / "ops.journal")
    assert again.vector == {X: 1}
    assert again.replay_journal() == 2
    assert again.vector == {X: 2, Y: 1}
    assert History(again).entries(Y, 0, 5)[0][2] == b"y-sig"
    assert again.heads == ns_heads
    assert again.lookup(ROOT_OBJ, b"c") is not None


def test_a_state_directory_from_before_the_swarm_is_numbered_and_re_stamped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ns.db"
    ns = fresh(path)
    old_id = b"\x42" * 32
    for i in range(3):
        ns.apply(mkdir(OBJS[i], LINKS[i], ROOT_OBJ, f"d{i}".encode(), 10 + i, old_id))
    ns.commit()
    tree = ns.tree()
    # What the code before the swarm left: an oplog without seq and sig columns.
    db = ns.db
    db.executescript(
        "CREATE TABLE old AS SELECT ts, node, body, undo FROM oplog; DROP TABLE oplog;"
        "CREATE TABLE oplog (ts INTEGER NOT NULL, node BLOB NOT NULL, body BLOB NOT NULL,"
        " undo BLOB NOT NULL, PRIMARY KEY (ts, node)) WITHOUT ROWID;"
        "INSERT INTO oplog SELECT * FROM old; DROP TABLE old; DROP INDEX IF EXISTS oplog_by_origin;"
    )
    ns.meta_set("node_id", old_id)
    db.execute("DELETE FROM meta WHERE key='log_numbered'")  # nor had it numbered anything
    db.close()

    migrated = fresh(path)
    assert migrated.vector == {old_id: 3}
    new_id = b"\x77" * 32
    assert bind_origin(migrated, new_id) == new_id
    assert migrated.vector == {new_id: 3}
    assert migrated.tree() == tree
    link = chain_start(new_id)  # the chain is rebuilt for the new ID
    for seq, body, _sig, stored in History(migrated).entries(new_id, 0, 10):
        link = chain_link(link, seq, body)
        assert stored == link
    assert old_id not in b"".join(
        b for row in migrated.db.execute("SELECT node, body, undo FROM oplog") for b in row
    )
    assert {n for (n,) in migrated.db.execute("SELECT content_node FROM objects")} <= {
        new_id, b""}
    # From now on the directory belongs to that identity.
    with pytest.raises(ConfigError, match="belongs to node"):
        bind_origin(migrated, b"\x99" * 32)
    migrated.apply(mkdir(OBJS[4], LINKS[4], ROOT_OBJ, b"after", 99, new_id))
    assert migrated.vector == {new_id: 4}


def test_certificates_are_kept() -> None:
    ns = fresh()
    assert History(ns).cert(X) is None
    History(ns).add_cert(X, b"der")
    assert History(ns).cert(X) == b"der"
    assert isinstance(ns.db, sqlite3.Connection)
