"""Namespace apply rules: order independence (property), conflicts, cycles, tombstones."""

from __future__ import annotations

import itertools
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtfs.meta.namespace import Namespace
from dhtfs.meta.ops import ROOT_OBJ, Op
from dhtfs.meta.schema import connect

NODES = [bytes([n]) * 32 for n in (1, 2, 3)]
OBJS = [bytes([0xA0 + i]) * 16 for i in range(6)]
LINKS = [bytes([0xB0 + i]) * 16 for i in range(8)]
NAMES = [b"a", b"b", b"c"]
BLOCKS = [bytes([0xC0 + i]) * 32 for i in range(4)]


def pack_chunks(ids: list[bytes | None]) -> bytes:
    """A content op's chunk list from before extents (all-zero: a hole)."""
    return b"".join(bytes(32) if i is None else i for i in ids)


def fresh() -> Namespace:
    return Namespace(connect(":memory:"))


def state(ns: Namespace) -> tuple:
    ns.write_back()
    objects = ns.db.execute("SELECT * FROM objects ORDER BY obj").fetchall()
    links = ns.db.execute("SELECT link, parent, name, obj FROM links ORDER BY link").fetchall()
    xattrs = ns.db.execute("SELECT * FROM xattrs ORDER BY obj, name").fetchall()
    extents = ns.db.execute("SELECT * FROM extents ORDER BY obj, idx").fetchall()
    return ns.tree(), objects, links, xattrs, extents


bases = st.one_of(st.none(), st.tuples(st.integers(0, 30), st.sampled_from(NODES)))
extents = st.lists(
    st.tuples(
        st.integers(0, 90), st.integers(1, 40), st.sampled_from(BLOCKS), st.integers(0, 8)
    ).map(list),
    max_size=3,
)


parents = st.sampled_from([ROOT_OBJ, *OBJS[:3]])  # OBJS[:3] are directories
change = st.one_of(
    st.builds(
        lambda i: {
            "c": "mkobj",
            "obj": OBJS[i],
            "kind": stat.S_IFDIR if i < 3 else stat.S_IFREG,
            "mode": 0o755,
            "uid": 0,
            "gid": 0,
            "time": 1,
        },
        st.integers(0, len(OBJS) - 1),
    ),
    st.builds(
        lambda lk, p, n, o: {"c": "link", "link": lk, "parent": p, "name": n, "obj": o},
        st.sampled_from(LINKS),
        parents,
        st.sampled_from(NAMES),
        st.sampled_from(OBJS),
    ),
    st.builds(
        lambda lk, p, n, r: {"c": "move", "link": lk, "parent": p, "name": n, "replace": r},
        st.sampled_from(LINKS),
        parents,
        st.sampled_from(NAMES),
        st.one_of(st.none(), st.sampled_from(LINKS)),
    ),
    st.builds(lambda lk: {"c": "unlink", "link": lk}, st.sampled_from(LINKS)),
    st.builds(
        lambda o, m: {"c": "attr", "obj": o, "fields": {"mode": m}},
        st.sampled_from(OBJS),
        st.integers(0, 0o777),
    ),
    st.builds(  # from before extents: the whole chunk list
        lambda o, s, b: {
            "c": "content",
            "obj": o,
            "size": s,
            "chunk_size": 16,
            "chunks": pack_chunks([bytes([s % 251 + 1]) * 32, None, BLOCKS[s % 4]]),
            "mtime": 5,
            "ctime": 5,
            "base": b,
        },
        st.sampled_from(OBJS[3:]),
        st.integers(1, 100),
        bases,
    ),
    st.builds(  # extents: a cut, then pieces laid over, then the size
        lambda o, s, cut, put, cs, b: {
            "c": "content",
            "obj": o,
            "size": s,
            "chunk_size": cs,
            "cut": cut,
            "put": put,
            "mtime": 5,
            "ctime": 5,
            "base": b,
        },
        st.sampled_from(OBJS[3:]),
        st.integers(0, 100),
        st.one_of(st.none(), st.integers(0, 100)),
        extents,
        st.sampled_from([16, 32]),
        bases,
    ),
    st.builds(
        lambda o, put, b: {"c": "compact", "obj": o, "base": b, "put": put},
        st.sampled_from(OBJS[3:]),
        extents,
        bases.filter(lambda b: b is not None),
    ),
    st.builds(
        lambda o, n, v: {"c": "xattr", "obj": o, "name": n, "value": v},
        st.sampled_from(OBJS),
        st.sampled_from([b"user.x", b"user.y"]),
        st.one_of(st.none(), st.binary(max_size=4)),
    ),
)
ops_strategy = st.lists(
    st.builds(
        lambda ts, node, changes: Op(ts, node, tuple(changes)),
        st.integers(1, 30),
        st.sampled_from(NODES),
        st.lists(change, min_size=1, max_size=3),
    ),
    max_size=25,
    unique_by=lambda op: (op.ts, op.node),
).filter(lambda ops: _each_object_made_once(ops))


def _each_object_made_once(ops: list[Op]) -> bool:
    """Object IDs are 128-bit random values: two ops never make the same object. (A repeated
    ``mkobj`` of one ID with pre-extents content ops on it does not converge; that case is
    kept apart, as a known failure: ``test_repeated_mkobj_with_legacy_content_converges``.)"""
    made = [c["obj"] for op in ops for c in op.changes if c["c"] == "mkobj"]
    return len(made) == len(set(made))


@settings(max_examples=150, deadline=None)
@given(ops=ops_strategy, data=st.data())
def test_any_order_gives_the_same_tree(ops: list[Op], data: st.DataObject) -> None:
    in_order = fresh()
    for op in sorted(ops, key=lambda o: o.op_id):
        in_order.apply(op)
    shuffled_ops = data.draw(st.permutations(ops))
    shuffled = fresh()
    for op in shuffled_ops:
        shuffled.apply(op)
    # Duplicates are ignored.
    for op in shuffled_ops[:3]:
        assert not shuffled.apply(op)
    assert state(shuffled) == state(in_order)


def mkdir(obj: bytes, link: bytes, parent: bytes, name: bytes, ts: int, node=NODES[0]) -> Op:
    return Op(
        ts,
        node,
        (
            {
                "c": "mkobj",
                "obj": obj,
                "kind": stat.S_IFDIR,
                "mode": 0o755,
                "uid": 0,
                "gid": 0,
                "time": ts,
            },
            {"c": "link", "link": link, "parent": parent, "name": name, "obj": obj},
        ),
    )


def test_move_that_would_make_a_cycle_is_discarded_on_every_order() -> None:
    a, b = OBJS[0], OBJS[1]
    base = [mkdir(a, LINKS[0], ROOT_OBJ, b"a", 1), mkdir(b, LINKS[1], ROOT_OBJ, b"b", 2)]
    a_into_b = Op(10, NODES[1], ({"c": "move", "link": LINKS[0], "parent": b, "name": b"a"},))
    b_into_a = Op(11, NODES[2], ({"c": "move", "link": LINKS[1], "parent": a, "name": b"b"},))
    trees = []
    for order in ([a_into_b, b_into_a], [b_into_a, a_into_b]):
        ns = fresh()
        for op in [*base, *order]:
            ns.apply(op)
        trees.append(ns.tree())
    assert trees[0] == trees[1]
    assert set(trees[0]) == {b"b"} and set(trees[0][b"b"]) == {b"a"}  # the later move lost


def test_concurrent_writes_keep_the_loser_as_conflict_copy() -> None:
    f = OBJS[4]
    create = Op(
        1,
        NODES[0],
        (
            {
                "c": "mkobj",
                "obj": f,
                "kind": stat.S_IFREG,
                "mode": 0o644,
                "uid": 0,
                "gid": 0,
                "time": 1,
            },
            {"c": "link", "link": LINKS[0], "parent": ROOT_OBJ, "name": b"f", "obj": f},
        ),
    )

    def write(ts: int, node: bytes, fill: int) -> Op:
        return Op(
            ts,
            node,
            (
                {
                    "c": "content",
                    "obj": f,
                    "size": 10,
                    "chunk_size": 4096,
                    "cut": 0,
                    "put": [[0, 10, bytes([fill]) * 32, 0]],
                    "mtime": ts,
                    "ctime": ts,
                    "base": (1, NODES[0]),
                },
            ),
        )

    w1, w2 = write(5, NODES[1], 1), write(6, NODES[2], 2)
    trees, blocks = [], []
    for order in ([w1, w2], [w2, w1]):
        ns = fresh()
        for op in [create, *order]:
            ns.apply(op)
        tree = ns.tree()
        trees.append(tree)
        blocks.append(
            {n: [p[2] for _, ps in ns.extents(e[5]) for p in ps] for n, e in tree.items()}
        )
    assert trees[0] == trees[1]
    names = sorted(trees[0])
    assert names[0] == b"f" and names[1] == b"f.conflict-02020202-5"
    assert blocks[0][b"f"] == [bytes([2]) * 32]  # the later write won the name
    assert blocks[0][names[1]] == [bytes([1]) * 32]  # the earlier write is kept


def test_rmdir_of_a_directory_that_gained_a_child_is_skipped() -> None:
    ns = fresh()
    ns.apply(mkdir(OBJS[0], LINKS[0], ROOT_OBJ, b"d", 1))
    ns.apply(Op(5, NODES[0], ({"c": "unlink", "link": LINKS[0]},)))
    ns.apply(mkdir(OBJS[1], LINKS[1], OBJS[0], b"child", 3, NODES[1]))  # arrives late
    assert ns.tree() == {b"d": {b"child": {}}}


def test_compaction_keeps_the_version_and_is_skipped_on_another() -> None:
    """A compact op rewrites a version's pieces without changing its ID (a write based on that
    version does not conflict); based on a version that is no longer current, it is skipped,
    in whatever order the ops arrive."""
    f = OBJS[3]
    create = Op(
        1,
        NODES[0],
        (
            {"c": "mkobj", "obj": f, "kind": stat.S_IFREG, "mode": 0o644, "uid": 0, "gid": 0,
             "time": 1},
            {"c": "link", "link": LINKS[0], "parent": ROOT_OBJ, "name": b"f", "obj": f},
        ),
    )

    def write(ts: int, base: tuple, put: list) -> Op:
        change = {"c": "content", "obj": f, "size": 32, "chunk_size": 16, "cut": None,
                  "put": put, "mtime": ts, "ctime": ts, "base": base}
        return Op(ts, NODES[1], (change,))

    w1 = write(2, (1, NODES[0]), [[0, 4, BLOCKS[0], 0], [8, 4, BLOCKS[1], 0]])
    compact = Op(3, NODES[1], ({"c": "compact", "obj": f, "base": (2, NODES[1]),
                                "put": [[0, 12, BLOCKS[2], 0]]},))
    w2 = write(4, (2, NODES[1]), [[20, 4, BLOCKS[3], 0]])
    stale = Op(5, NODES[2], ({"c": "compact", "obj": f, "base": (2, NODES[1]),
                              "put": [[0, 32, BLOCKS[0], 0]]},))
    results = []
    for order in ([create, w1, compact, w2, stale], [stale, w2, compact, w1, create]):
        ns = fresh()
        for op in order:
            ns.apply(op)
        results.append(state(ns))
        assert [n for n in ns.tree()] == [b"f"]  # no conflict copy
        assert list(ns.extents(f)) == [
            (0, [(0, 12, BLOCKS[2], 0)]),
            (1, [(4, 4, BLOCKS[3], 0)]),
        ]
        assert (ns.get_object(f).content_ts, ns.get_object(f).content_node) == (4, NODES[1])
    assert results[0] == results[1]


@pytest.mark.xfail(strict=True, reason="known bug: a repeated mkobj of one object ID with "
                   "pre-extents content ops diverges by order (found by hypothesis; cannot "
                   "happen with random IDs; the same on the tree before issue 17)")
def test_repeated_mkobj_with_legacy_content_converges() -> None:
    node, obj = NODES[2], bytes([0xA3]) * 16

    def mkobj(ts: int) -> Op:
        return Op(ts, node, ({"c": "mkobj", "obj": obj, "kind": stat.S_IFREG, "mode": 0o755,
                              "uid": 0, "gid": 0, "time": 1},))

    def legacy(ts: int) -> Op:
        return Op(ts, node, ({"c": "content", "obj": obj, "size": 2, "chunk_size": 16,
                              "chunks": b"\x03" * 96, "mtime": 5, "ctime": 5, "base": None},))

    extents = Op(7, node, ({"c": "content", "obj": obj, "size": 19, "chunk_size": 32,
                            "cut": None, "put": [[0, 2, b"\xc0" * 32, 0], [2, 1, b"\xc0" * 32, 8],
                                                 [5, 32, b"\xc3" * 32, 8]],
                            "mtime": 5, "ctime": 5, "base": None},))
    ops = [mkobj(2), legacy(4), extents, mkobj(22), legacy(25)]
    in_order = fresh()
    for op in ops:
        in_order.apply(op)
    for order in itertools.permutations(ops):
        other = fresh()
        for op in order:
            other.apply(op)
        assert state(other) == state(in_order)
