"""The counts ``stat`` needs (links per object, chunks with data, subdirectories) and the names
``lookup`` needs, answered from memory (``dhtfs.meta.rows.LinkFacts``), stay exactly what
SQLite says: after local ops, remote ops applied in order, late ops slotted in by undo and
redo, and ops that fail and roll back."""

from __future__ import annotations

import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtfs.meta.namespace import Namespace
from dhtfs.meta.ops import ROOT_OBJ, Op
from dhtfs.meta.schema import connect
from dhtfs.meta.tree import Tree

NODES = [bytes([n]) * 32 for n in (1, 2, 3)]
DIRS = [bytes([0xA0 + i]) * 16 for i in range(2)]
FILES = [bytes([0xA8 + i]) * 16 for i in range(3)]
OBJS = DIRS + FILES
LINKS = [bytes([0xB0 + i]) * 16 for i in range(8)]
NAMES = [b"a", b"b", b"c"]
BLOCK = bytes([0xC0]) * 32


def fresh() -> Namespace:
    return Namespace(connect(":memory:"))


def counted(ns: Namespace, obj: bytes) -> tuple[int, int, int]:
    """What SQLite counts, asked directly (no cache)."""
    db = ns.db
    return (
        db.execute("SELECT count(*) FROM links WHERE obj=?", (obj,)).fetchone()[0],
        db.execute("SELECT count(*) FROM extents WHERE obj=?", (obj,)).fetchone()[0],
        db.execute(
            "SELECT count(*) FROM links WHERE parent=? AND kind=?", (obj, stat.S_IFDIR)
        ).fetchone()[0],
    )


def remembered(ns: Namespace, obj: bytes) -> tuple[int, int, int]:
    return ns.link_count(obj), ns.chunks_with_data(obj), ns.subdir_count(obj)


def warm_and_check(ns: Namespace, objs: list[bytes]) -> None:
    """Every count and every name asked (so it is in memory for the next op) equals what
    SQLite says."""
    for obj in objs:
        assert remembered(ns, obj) == counted(ns, obj), obj.hex()[:4]
    places = {(p, n) for p in (ROOT_OBJ, *DIRS) for n in NAMES}
    places |= set(ns.db.execute("SELECT parent, name FROM links").fetchall())
    places |= set(ns._facts.names)  # every name remembered, gone from the table or not
    for parent, name in places:
        row = ns.db.execute(
            "SELECT link, obj FROM links WHERE parent=? AND name=?", (parent, name)
        ).fetchone()
        assert ns.lookup(parent, name) == (tuple(row) if row else None), name


def content(obj: bytes, size: int, put: list[list], cut: int | None = None) -> dict:
    return {
        "c": "content", "obj": obj, "size": size, "chunk_size": 16, "cut": cut, "put": put,
        "mtime": 5, "ctime": 5, "base": None,
    }


def mkfile(obj: bytes, link: bytes, parent: bytes, name: bytes) -> list[dict]:
    return [
        {"c": "mkobj", "obj": obj, "kind": stat.S_IFREG, "mode": 0o644, "uid": 0, "gid": 0,
         "time": 1},
        {"c": "link", "link": link, "parent": parent, "name": name, "obj": obj},
    ]


def test_counts_follow_local_ops_through_the_tree() -> None:
    ns = fresh()
    tree = Tree(ns, NODES[0])
    d = tree.create(ROOT_OBJ, b"d", stat.S_IFDIR, 0o755, 0, 0)
    f = tree.create(ROOT_OBJ, b"f", stat.S_IFREG, 0o644, 0, 0)
    objs = [ROOT_OBJ, d, f]
    warm_and_check(ns, objs)
    tree.link(f, d, b"g")
    warm_and_check(ns, objs)
    assert ns.link_count(f) == 2
    row = tree.require(f)
    tree.set_content(f, 40, 16, None, [[0, 40, BLOCK, 0]], (row.content_ts, row.content_node), 9)
    warm_and_check(ns, objs)
    assert ns.chunks_with_data(f) == 3
    row = tree.require(f)
    tree.set_content(f, 10, 16, 10, [], (row.content_ts, row.content_node), 9)  # truncate
    warm_and_check(ns, objs)
    assert ns.chunks_with_data(f) == 1
    tree.remove(ROOT_OBJ, b"f", directory=False)
    warm_and_check(ns, objs)
    assert ns.link_count(f) == 1
    tree.rename(d, b"g", ROOT_OBJ, b"h", 0)
    e = tree.create(d, b"e", stat.S_IFDIR, 0o755, 0, 0)
    warm_and_check(ns, [*objs, e])
    assert ns.subdir_count(d) == 1
    tree.remove(d, b"e", directory=True)
    warm_and_check(ns, [*objs, e])
    tree.remove(ROOT_OBJ, b"h", directory=False)
    warm_and_check(ns, objs)
    assert ns.link_count(f) == 0


def test_a_late_remote_op_redoes_later_ops_and_the_counts_follow() -> None:
    """A link made at ts 10 is undone, then skipped on redo, when an unlink of the object's
    only name made at ts 5 arrives: the file's link count drops from 2 to 0 without any op
    naming it being applied in this batch."""
    f, link0, link1 = FILES[0], LINKS[0], LINKS[1]
    ns = fresh()
    ns.apply(Op(1, NODES[0], (*mkfile(f, link0, ROOT_OBJ, b"f"),
                              content(f, 20, [[0, 20, BLOCK, 0]]))))
    ns.apply(Op(10, NODES[1], ({"c": "link", "link": link1, "parent": ROOT_OBJ, "name": b"g",
                                "obj": f},)))
    warm_and_check(ns, [f, ROOT_OBJ])
    assert ns.link_count(f) == 2 and ns.chunks_with_data(f) == 2
    ns.apply(Op(5, NODES[2], ({"c": "unlink", "link": link0},)))  # late: undo, apply, redo
    warm_and_check(ns, [f, ROOT_OBJ])
    assert ns.link_count(f) == 0


def test_an_op_that_fails_rolls_back_and_the_counts_are_those_before_it() -> None:
    f = FILES[0]
    ns = fresh()
    ns.apply(Op(1, NODES[0], tuple(mkfile(f, LINKS[0], ROOT_OBJ, b"f"))))
    warm_and_check(ns, [f])
    bad = Op(2, NODES[0], (
        {"c": "link", "link": LINKS[1], "parent": ROOT_OBJ, "name": b"g", "obj": f},
        content(f, 20, [[0, 20, BLOCK, 0]]),
        {"c": "no such change"},
    ))
    with pytest.raises(KeyError):
        ns.apply(bad)
    warm_and_check(ns, [f])
    assert remembered(ns, f) == (1, 0, 0)


def test_a_listing_primes_the_counts_and_later_ops_keep_them_true() -> None:
    ns = fresh()
    tree = Tree(ns, NODES[0])
    f = tree.create(ROOT_OBJ, b"f", stat.S_IFREG, 0o644, 0, 0)
    listed = ns.children_with_objects(ROOT_OBJ)
    assert [r.obj for _, _, r in listed] == [f]
    assert ns._facts.links[f] == 1 and ns._facts.data_chunks[f] == 0
    tree.link(f, ROOT_OBJ, b"g")
    row = tree.require(f)
    tree.set_content(f, 5, 16, None, [[0, 5, BLOCK, 0]], (row.content_ts, row.content_node), 9)
    assert remembered(ns, f) == counted(ns, f) == (2, 1, 0)


change = st.one_of(
    st.builds(
        lambda i: {
            "c": "mkobj", "obj": OBJS[i], "kind": stat.S_IFDIR if OBJS[i] in DIRS else
            stat.S_IFREG, "mode": 0o755, "uid": 0, "gid": 0, "time": 1,
        },
        st.integers(0, len(OBJS) - 1),
    ),
    st.builds(
        lambda lk, p, n, o: {"c": "link", "link": lk, "parent": p, "name": n, "obj": o},
        st.sampled_from(LINKS), st.sampled_from([ROOT_OBJ, *DIRS]), st.sampled_from(NAMES),
        st.sampled_from(OBJS),
    ),
    st.builds(
        lambda lk, p, n, r: {"c": "move", "link": lk, "parent": p, "name": n, "replace": r},
        st.sampled_from(LINKS), st.sampled_from([ROOT_OBJ, *DIRS]), st.sampled_from(NAMES),
        st.one_of(st.none(), st.sampled_from(LINKS)),
    ),
    st.builds(lambda lk: {"c": "unlink", "link": lk}, st.sampled_from(LINKS)),
    st.builds(
        lambda o, s, cut, off, b: {**content(o, s, [[off, 20, BLOCK, 0]], cut), "base": b},
        st.sampled_from(FILES), st.integers(0, 80), st.one_of(st.none(), st.integers(0, 80)),
        st.integers(0, 60),
        st.one_of(st.none(), st.tuples(st.integers(0, 30), st.sampled_from(NODES))),
    ),
)
ops_strategy = st.lists(
    st.builds(
        lambda ts, node, changes: Op(ts, node, tuple(changes)),
        st.integers(1, 30), st.sampled_from(NODES), st.lists(change, min_size=1, max_size=3),
    ),
    max_size=20,
    unique_by=lambda op: (op.ts, op.node),
).filter(lambda ops: len(m := [c["obj"] for op in ops for c in op.changes
                               if c["c"] == "mkobj"]) == len(set(m)))


@settings(max_examples=150, deadline=None)
@given(ops=ops_strategy, data=st.data())
def test_counts_stay_exact_whatever_order_ops_arrive_in(ops: list[Op], data) -> None:
    """Ops arrive in any order (late ones undo and redo the newer ones); every count is asked
    before each op (so the cache is full) and checked after it, conflict copies included."""
    ns = fresh()
    for op in data.draw(st.permutations(ops)):
        everything = [ROOT_OBJ, *OBJS, *(r[0] for r in ns.db.execute("SELECT obj FROM links"))]
        warm_and_check(ns, everything)
        ns.apply(op)
        everything = [ROOT_OBJ, *OBJS, *(r[0] for r in ns.db.execute("SELECT obj FROM links"))]
        warm_and_check(ns, everything)


def test_a_late_remote_op_reports_the_ops_it_redid_with_their_links_places_before() -> None:
    """The mount invalidates what a batch changed (``dhtfs.fs.remote``); a late op changes
    what the newer ops it redoes did, so those ops are reported too, with the place their
    links held before: here a local link made at ts 10 that the late unlink of the file's
    only name (ts 5) makes skip, so the kernel's entry ``g`` must go."""
    from dhtfs.meta.ops import encode_op
    from dhtfs.meta.replica import NamespaceLog
    from dhtfs.oplog.entries import LogEntry

    f, link0, link1 = FILES[0], LINKS[0], LINKS[1]
    ns = fresh()
    tree = Tree(ns, NODES[0])
    ns.apply(Op(1, NODES[1], tuple(mkfile(f, link0, ROOT_OBJ, b"f"))), seq=1, sig=b"s")
    ns.apply(Op(10, NODES[0], ({"c": "link", "link": link1, "parent": ROOT_OBJ, "name": b"g",
                                "obj": f},)))
    told: list = []
    log = NamespaceLog(tree, on_remote=lambda ops, before: told.append((ops, before)))
    late = Op(5, NODES[1], ({"c": "unlink", "link": link0},))
    log.accept([LogEntry(NODES[1], 2, encode_op(late), b"s")])
    [(ops, before)] = told
    assert [op.ts for op in ops] == [5, 10]
    assert before == {link0: (ROOT_OBJ, b"f"), link1: (ROOT_OBJ, b"g")}
    assert ns.link_place(link1) is None and ns.link_count(f) == 0
    told.clear()
    on_time = Op(20, NODES[1], ({"c": "attr", "obj": f, "fields": {"mode": 0o600}},))
    log.accept([LogEntry(NODES[1], 3, encode_op(on_time), b"s")])
    assert [op.ts for op in told[0][0]] == [20]  # in order: nothing redone
