"""A namespace from before extents (content in ``objects.chunks``, undo records holding such
rows) is migrated at open, and undoing its old ops still gives the state every node agrees on.
"""

from __future__ import annotations

import stat
from pathlib import Path

import msgpack

from dhtfs.meta.namespace import Namespace
from dhtfs.meta.ops import ROOT_OBJ, Op
from dhtfs.meta.schema import connect
from tests.unit.test_namespace_merge import LINKS, NODES, OBJS, fresh, pack_chunks, state

F = OBJS[3]
C1, C2 = bytes([0xD1]) * 32, bytes([0xD2]) * 32
CREATE = Op(
    1,
    NODES[0],
    (
        {"c": "mkobj", "obj": F, "kind": stat.S_IFREG, "mode": 0o644, "uid": 0, "gid": 0,
         "time": 1},
        {"c": "link", "link": LINKS[0], "parent": ROOT_OBJ, "name": b"f", "obj": F},
    ),
)
LEGACY_WRITE = Op(
    5,
    NODES[0],
    ({"c": "content", "obj": F, "size": 20, "chunk_size": 16,
      "chunks": pack_chunks([C1, C2]), "base": [1, NODES[0]], "mtime": 5, "ctime": 5},),
)
LEGACY_CHMOD = Op(7, NODES[0], ({"c": "attr", "obj": F, "fields": {"mode": 0o640}},))
LATE_CHMOD = Op(3, NODES[1], ({"c": "attr", "obj": F, "fields": {"mode": 0o600}},))
LATE_TOUCH = Op(6, NODES[1], ({"c": "attr", "obj": F, "fields": {"atime": 6}},))
LATE_WRITE = Op(
    4,
    NODES[2],
    ({"c": "content", "obj": F, "size": 40, "chunk_size": 16, "cut": None,
      "put": [[30, 5, C2, 0]], "base": [1, NODES[0]], "mtime": 4, "ctime": 4},),
)


def make_legacy(path: Path) -> None:
    """A state as code from before extents left it: ``chunks`` filled, no extents rows, undo
    records without extents entries, and no migration mark."""
    ns = Namespace(connect(path))
    ns.apply(CREATE)
    ns.apply(LEGACY_WRITE)
    ns.apply(LEGACY_CHMOD)
    ns.commit()
    db = ns.db
    db.execute("UPDATE objects SET chunks=? WHERE obj=?", (pack_chunks([C1, C2]), F))
    db.execute("DELETE FROM extents")
    for ts, node, undo in db.execute("SELECT ts, node, undo FROM oplog").fetchall():
        old = [e for e in msgpack.unpackb(undo, raw=False) if e[0] != "extents"]
        db.execute(
            "UPDATE oplog SET undo=? WHERE ts=? AND node=?",
            (msgpack.packb(old, use_bin_type=True), ts, node),
        )
    db.execute("DELETE FROM meta WHERE key='extents'")
    db.close()


def test_migrated_state_reads_the_same_and_late_ops_merge_as_everywhere(tmp_path: Path) -> None:
    make_legacy(tmp_path / "ns.db")
    ns = Namespace(connect(tmp_path / "ns.db"))
    assert ns.get_object(F).chunks == b""
    assert list(ns.extents(F)) == [(0, [(0, 16, C1, 0)]), (1, [(0, 4, C2, 0)])]
    # Ops older than the legacy ones arrive: those are undone (their migrated undo records
    # restore the content they found, as extents) and redone on top.
    for op in (LATE_TOUCH, LATE_WRITE, LATE_CHMOD):
        ns.apply(op)
    everywhere = fresh()
    for op in (CREATE, LATE_CHMOD, LATE_WRITE, LEGACY_WRITE, LATE_TOUCH, LEGACY_CHMOD):
        everywhere.apply(op)
    assert state(ns) == state(everywhere)
    row = ns.get_object(F)
    assert (row.mode, row.atime, row.size, row.chunks) == (0o640, 6, 20, b"")
    # The legacy write replaced the whole content (the late write's bytes are kept in the
    # conflict copy: it was based on the empty file, not on the legacy write's version).
    assert list(ns.extents(F)) == [(0, [(0, 16, C1, 0)]), (1, [(0, 4, C2, 0)])]
