"""The rules that apply one change of an op to the namespace's tables, the same way on every
node (``TreeChanges``; ``dhtfs.meta.versions`` holds those of content changes). Every write
goes through the op's ``dhtfs.meta.undo.UndoableWrites``, so the op can be undone.

Apply rules (Kleppmann et al., "A highly-available move operation for replicated trees"; the
order ops are applied in is ``dhtfs.meta.namespace``'s): each change is total: if it cannot
apply it is skipped, the same way on every node:

- a link or move into a missing parent, or one that would make a directory cycle: skipped;
- a name clash: the later op takes the name; the entry it displaces is renamed
  ``NAME.conflict-<node>-<ts>`` after the op that had named it;
- a content write whose base is not the current content (concurrent writers): the current
  content is kept beside the file as ``NAME.conflict-<node>-<ts>``, then the write is laid
  over it (``dhtfs.meta.versions``); a compaction of a version that is no longer current:
  skipped;
- unlinking a directory that still has children: skipped (the children are not lost);
- linking an object that has no name left (and was not made by the same op): skipped.
"""

from __future__ import annotations

import stat

from dhtfs.meta import versions
from dhtfs.meta.ops import Change, Op
from dhtfs.meta.rows import NamespaceRows
from dhtfs.meta.schema import conflict_name
from dhtfs.meta.undo import UndoableWrites


class TreeChanges(NamespaceRows):
    """The namespace's tables (``NamespaceRows``) and the rules that change them, one change
    at a time: each rule is total (what cannot apply is skipped) and reads only the tables,
    so every node that applies the same ops in the same order reaches the same state."""

    def apply_change(self, tx: UndoableWrites, op: Op, change: Change) -> None:
        """Apply one change of ``op`` (a dict with its kind in ``"c"``) through ``tx``."""
        _CHANGE_APPLIERS[change["c"]](self, tx, op, change)

    def _mkobj(self, tx: UndoableWrites, op: Op, c: Change) -> None:
        t = c["time"]
        tx.insert_object(
            {
                "obj": c["obj"],
                "kind": c["kind"],
                "mode": c["mode"],
                "uid": c["uid"],
                "gid": c["gid"],
                "rdev": c.get("rdev", 0),
                "target": c.get("target"),
                "atime": t,
                "mtime": t,
                "ctime": t,
                "content_ts": op.ts,
                "content_node": op.node,
            }
        )

    def _link(self, tx: UndoableWrites, op: Op, c: Change) -> None:
        obj = self.get_object(c["obj"])
        if obj is None or not self.is_live_dir(c["parent"]):
            return
        if (
            obj.is_dir
            and self.db.execute(
                "SELECT 1 FROM links WHERE obj=? AND link<>?", (c["obj"], c["link"])
            ).fetchone()
        ):
            return  # a directory has one name
        if (
            not any(ch["c"] == "mkobj" and ch["obj"] == c["obj"] for ch in op.changes)
            and self.link_count(c["obj"]) == 0
        ):
            # An object that lost its last name stays unnamed (as linkat(2) of an unlinked
            # file fails): folding may collect it on any node, so reviving it could differ.
            return
        self._make_room(tx, c["parent"], c["name"], c["link"])
        tx.put_link(c["link"], c["parent"], c["name"], c["obj"], obj.kind, op)

    def _move(self, tx: UndoableWrites, op: Op, c: Change) -> None:
        row = self.db.execute("SELECT obj, kind FROM links WHERE link=?", (c["link"],)).fetchone()
        if row is None or not self.is_live_dir(c["parent"]):
            return
        if row[1] == stat.S_IFDIR and self.is_ancestor(row[0], c["parent"]):
            return  # would make a cycle
        replace = c.get("replace")
        if replace is not None:
            hit = self.db.execute(
                "SELECT obj FROM links WHERE link=? AND parent=? AND name=?",
                (replace, c["parent"], c["name"]),
            ).fetchone()
            if hit is not None and not self.has_children(hit[0]):
                tx.delete_link(replace)
        self._make_room(tx, c["parent"], c["name"], c["link"])
        tx.put_link(c["link"], c["parent"], c["name"], row[0], row[1], op)

    def _unlink(self, tx: UndoableWrites, op: Op, c: Change) -> None:
        row = self.db.execute("SELECT obj FROM links WHERE link=?", (c["link"],)).fetchone()
        if row is None or self.has_children(row[0]):
            return
        tx.delete_link(c["link"])

    def _attr(self, tx: UndoableWrites, op: Op, c: Change) -> None:
        fields = {k: v for k, v in c["fields"].items() if k in _SETTABLE_ATTRS}
        if fields and self.get_object(c["obj"]) is not None:
            tx.update_object(c["obj"], fields)

    def _content(self, tx: UndoableWrites, op: Op, c: Change) -> None:
        versions.apply_content(self, tx, op, c)

    def _compact(self, tx: UndoableWrites, op: Op, c: Change) -> None:
        versions.apply_compact(self, tx, op, c)

    def _xattr(self, tx: UndoableWrites, op: Op, c: Change) -> None:
        if self.get_object(c["obj"]) is not None:
            self._xattr_objs.add(c["obj"])
            tx.set_xattr(c["obj"], c["name"], c["value"])

    def _make_room(self, tx: UndoableWrites, parent: bytes, name: bytes, link: bytes) -> None:
        """If another link holds ``(parent, name)``, rename it after the op that named it."""
        if (parent, name) in self._facts.free_names:
            return
        row = self.db.execute(
            "SELECT link, lts, lnode FROM links WHERE parent=? AND name=? AND link<>?",
            (parent, name, link),
        ).fetchone()
        if row is not None:
            tx.rename_link(row[0], self.free_name(parent, conflict_name(name, row[2], row[1])))


_SETTABLE_ATTRS = frozenset({"mode", "uid", "gid", "atime", "mtime", "ctime"})
_CHANGE_APPLIERS = {
    "mkobj": TreeChanges._mkobj,
    "link": TreeChanges._link,
    "move": TreeChanges._move,
    "unlink": TreeChanges._unlink,
    "attr": TreeChanges._attr,
    "content": TreeChanges._content,
    "compact": TreeChanges._compact,
    "xattr": TreeChanges._xattr,
}
