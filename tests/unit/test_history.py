"""Folding stable history and snapshots (``dhtfs.meta.history``)."""

from __future__ import annotations

import stat

import pytest

from dhtfs.meta.history import History
from dhtfs.meta.namespace import Namespace
from dhtfs.meta.ops import ROOT_OBJ, HybridClock, Op
from dhtfs.meta.schema import connect
from tests.unit.test_namespace_merge import LINKS, NODES, OBJS, mkdir

X, Y = NODES[0], NODES[1]


def fresh() -> Namespace:
    return Namespace(connect(":memory:"))


def mkfile(obj: bytes, link: bytes, name: bytes, ts: int, node: bytes) -> Op:
    return Op(ts, node, (
        {"c": "mkobj", "obj": obj, "kind": stat.S_IFREG, "mode": 0o644, "uid": 0, "gid": 0,
         "time": ts},
        {"c": "link", "link": link, "parent": ROOT_OBJ, "name": name, "obj": obj},
    ))


def unlink(link: bytes, ts: int, node: bytes) -> Op:
    return Op(ts, node, ({"c": "unlink", "link": link},))


def test_fold_drops_only_what_every_member_holds_and_collects_unnamed_objects() -> None:
    ns = fresh()
    h = History(ns)
    ns.apply(mkfile(OBJS[3], LINKS[0], b"gone", 10, X))
    ns.apply(mkdir(OBJS[0], LINKS[1], ROOT_OBJ, b"kept", 20, X))
    ns.apply(unlink(LINKS[0], 30, Y))
    ns.apply(mkdir(OBJS[1], LINKS[2], ROOT_OBJ, b"late", 40, X))
    tree = ns.tree()
    # Y's member has X up to seq 2 only: X's 3rd op (ts 40) is not stable; clocks past it.
    stable, highest = {X: 2, Y: 1}, {X: 3, Y: 1}
    assert h.fold_point(stable, highest, floor=100) == 39
    assert h.fold(stable, highest, floor=100) == 3
    assert ns.fold_ts == 39 and ns.vector == {X: 3, Y: 1}
    assert h.folded() == {X: 2, Y: 1}
    assert [row[0] for row in h.entries(X, 0, 10)] == [3]  # only the unfolded one is served
    assert ns.get_object(OBJS[3]) is not None  # unnamed, but history is not all folded yet
    with pytest.raises(ValueError, match="older than the folded history"):
        ns.apply(mkdir(OBJS[2], LINKS[3], ROOT_OBJ, b"too-old", 35, NODES[2]), seq=1)
    # Everyone has everything now: the rest folds and the unnamed file goes.
    assert h.fold({X: 3, Y: 1}, {X: 3, Y: 1}, floor=100) == 1
    assert ns.db.execute("SELECT count(*) FROM oplog").fetchone()[0] == 0
    assert ns.get_object(OBJS[3]) is None
    assert ns.tree() == tree
    assert ns.vector == {X: 3, Y: 1}


def test_nothing_folds_past_a_member_clock_or_an_origin_we_have_not_heard() -> None:
    ns = fresh()
    h = History(ns)
    for i in range(3):
        ns.apply(mkdir(OBJS[i], LINKS[i], ROOT_OBJ, f"d{i}".encode(), 10 + i, X))
    assert h.fold_point({X: 3}, {X: 3}, floor=11) == 11  # a member may still stamp at 12
    # Some member holds ops of Y that we never saw: their stamps are unknown.
    assert h.fold_point({X: 3, Y: 0}, {X: 3, Y: 2}, floor=100) == 0
    assert h.fold({X: 3, Y: 0}, {X: 3, Y: 2}, floor=100) == 0


def test_protected_unnamed_objects_survive_collection() -> None:
    ns = fresh()
    h = History(ns)
    ns.apply(mkfile(OBJS[3], LINKS[0], b"open-then-unlinked", 10, X))
    ns.apply(unlink(LINKS[0], 20, X))
    h.fold({X: 2}, {X: 2}, floor=100, protected={OBJS[3]})
    assert ns.get_object(OBJS[3]) is not None


def test_snapshot_installs_elsewhere_and_keeps_the_ops_made_there() -> None:
    a, b = fresh(), fresh()
    for i in range(3):
        a.apply(mkdir(OBJS[i], LINKS[i], ROOT_OBJ, f"d{i}".encode(), 10 + i, X))
    History(a).fold({X: 2}, {X: 3}, floor=100)  # a folded X's first two ops
    # b made an op of its own (as Y) stamped before a's fold point, and holds nothing of X.
    b.apply(mkfile(OBJS[4], LINKS[4], b"made-on-b", 5, Y))
    clock = HybridClock(b.last_ts())
    vector = History(b).install(History(a).snapshot(), Y, clock)
    assert vector == {X: 3, Y: 1}
    names = set(b.tree())
    assert names == {b"d0", b"d1", b"d2", b"made-on-b"}
    assert b.fold_ts == a.fold_ts
    (row,) = b.db.execute("SELECT ts FROM oplog WHERE node=?", (Y,)).fetchall()
    assert row[0] > b.fold_ts  # stamped anew: nothing goes before folded history
    with pytest.raises(ValueError, match="malformed"):
        History(b).install(b"not a snapshot", Y, clock)


def test_an_unnamed_object_is_never_linked_again() -> None:
    """Whether a node has collected it or not, a link op to an object without names is
    skipped the same way everywhere."""
    ns = fresh()
    ns.apply(mkfile(OBJS[3], LINKS[0], b"f", 10, X))
    ns.apply(unlink(LINKS[0], 20, X))
    ns.apply(Op(30, Y, ({"c": "link", "link": LINKS[1], "parent": ROOT_OBJ, "name": b"back",
                         "obj": OBJS[3]},)))
    assert ns.lookup(ROOT_OBJ, b"back") is None


def test_a_snapshot_that_lacks_our_folded_changes_is_refused() -> None:
    """Two nodes of one CA that folded apart: installing the other's snapshot would lose what
    this one folded, so it is refused and nothing changes."""
    a, b = fresh(), fresh()
    a.apply(mkdir(OBJS[0], LINKS[0], ROOT_OBJ, b"from-a", 10, X))
    History(a).fold({X: 1}, {X: 1}, floor=100)
    b.apply(mkdir(OBJS[1], LINKS[1], ROOT_OBJ, b"from-b", 20, Y))
    History(b).fold({Y: 1}, {Y: 1}, floor=100)
    tree = b.tree()
    with pytest.raises(ValueError, match="would lose them"):
        History(b).install(History(a).snapshot(), Y, HybridClock(b.last_ts()))
    assert b.tree() == tree and b.vector == {Y: 1}
