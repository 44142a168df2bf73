"""Group transactions: a failing op leaves no trace, buffered rows reach the tables."""

from __future__ import annotations

import stat

import pytest

from dhtfs.meta import rows
from dhtfs.meta.namespace import Namespace
from dhtfs.meta.ops import ROOT_OBJ, Op
from dhtfs.meta.schema import connect
from tests.unit.test_namespace_merge import LINKS, NODES, OBJS, mkdir, state


def _content(obj: bytes, ts: int, size: int) -> Op:
    change = {"c": "content", "obj": obj, "size": size, "chunk_size": 4096,
              "chunks": b"", "mtime": ts, "ctime": ts}  # fmt: skip
    return Op(ts, NODES[0], (change,))


def test_failing_op_leaves_no_trace_and_earlier_ops_stay() -> None:
    ns = Namespace(connect(":memory:"))
    ns.apply(mkdir(OBJS[0], LINKS[0], ROOT_OBJ, b"a", 1))
    ns.commit()
    ns.apply(mkdir(OBJS[1], LINKS[1], ROOT_OBJ, b"b", 2))  # uncommitted, in the same transaction
    ns.apply(_content(OBJS[1], 3, 7))
    expected = state(ns)
    # A well-formed first change, then one this node does not know (a newer peer's op, say):
    # the op fails after its first change was applied.
    bad = Op(4, NODES[0], (*mkdir(OBJS[2], LINKS[2], ROOT_OBJ, b"c", 4).changes, {"c": "??"}))
    with pytest.raises(KeyError):
        ns.apply(bad)
    assert ns.pending  # the earlier uncommitted ops are still applied, not yet committed
    assert state(ns) == expected
    assert ns.get_object(OBJS[2]) is None and ns.get_object(OBJS[1]).size == 7
    ns.apply(mkdir(OBJS[3], LINKS[3], ROOT_OBJ, b"d", 5))  # and the namespace goes on
    ns.commit()
    assert set(ns.tree()) == {b"a", b"b", b"d"}
    assert ns.db.execute("SELECT count(*) FROM oplog").fetchone()[0] == 4


def test_buffered_rows_are_read_back_and_written_once_at_commit() -> None:
    ns = Namespace(connect(":memory:"))
    ns.apply(mkdir(OBJS[0], LINKS[0], ROOT_OBJ, b"a", 1))
    ns.apply(_content(OBJS[0], 2, 11))
    sql = "SELECT size FROM objects WHERE obj=?"
    assert ns.get_object(OBJS[0]).size == 11  # read back from the buffer
    assert ns.db.execute(sql, (OBJS[0],)).fetchone() is None  # not yet in the table
    ns.commit()
    assert ns.db.execute(sql, (OBJS[0],)).fetchone() == (11,)
    again = Namespace(ns.db)  # a fresh cache reads the table
    assert again.get_object(OBJS[0]) == ns.get_object(OBJS[0])
    assert ns.object_count() == 2  # root and a


def test_a_full_cache_writes_its_dirty_rows_before_forgetting_them(monkeypatch) -> None:
    monkeypatch.setattr(rows, "CACHE_ENTRIES", 3)
    ns = Namespace(connect(":memory:"))
    for i in range(6):  # more new rows than the cache holds, none committed
        ns.apply(mkdir(OBJS[i], LINKS[i], ROOT_OBJ, b"d%d" % i, i + 1))
    assert all(ns.get_object(OBJS[i]).kind == stat.S_IFDIR for i in range(6))
    ns.commit()
    assert ns.db.execute("SELECT count(*) FROM objects").fetchone()[0] == 7
