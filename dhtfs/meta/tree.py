"""POSIX namespace operations on global IDs: check preconditions, then emit one op.

``Tree`` knows nothing of inodes or FUSE. Each method validates against the current state
(raising ``NamespaceError`` with the errno POSIX asks for), then builds one op stamped by the
node's hybrid clock and applies it through ``Namespace.apply``, the only writer of the tree.
Every op that adds or removes a name also sets the parent directory's mtime and ctime.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Any

from dhtfs.base.errors import ConfigError, NamespaceError
from dhtfs.base.periodic import Doorbell
from dhtfs.meta.history import History
from dhtfs.meta.namespace import Namespace
from dhtfs.meta.ops import Change, HybridClock, Op, new_id
from dhtfs.meta.schema import ObjectRow

NAME_MAX = 255
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

log = logging.getLogger(__name__)


class Tree:
    """The namespace as a POSIX filesystem sees it, addressed by object IDs. ``written``: rung
    after each op this node writes (a mount's op log waits on it to push the op)."""

    def __init__(
        self, namespace: Namespace, node_id: bytes, *, written: Doorbell | None = None
    ) -> None:
        self.ns = namespace
        self.node_id = node_id
        self.clock = HybridClock(namespace.last_ts())
        self.written = written  # rung after each op (the op log pushes it: swarm work)

    # -- writing -------------------------------------------------------------------------------

    def commit(self, changes: list[Change]) -> Op:
        """Stamp ``changes`` as one op, apply it, and ring ``written``."""
        op = Op(self.clock.now(), self.node_id, tuple(changes))
        self.ns.apply(op)
        if self.written is not None:
            self.written.ring()
        return op

    def create(
        self,
        parent: bytes,
        name: bytes,
        kind: int,
        mode: int,
        uid: int,
        gid: int,
        *,
        rdev: int = 0,
        target: bytes | None = None,
    ) -> bytes:
        """Create a new object named ``name`` in ``parent``; returns its ID."""
        self._check_name(name)
        self.require_dir(parent)
        if self.ns.lookup(parent, name) is not None:
            raise NamespaceError(errno.EEXIST)
        obj, now = new_id(), time.time_ns()
        self.commit(
            [
                {
                    "c": "mkobj",
                    "obj": obj,
                    "kind": kind,
                    "mode": mode & 0o7777,
                    "uid": uid,
                    "gid": gid,
                    "rdev": rdev,
                    "target": target,
                    "time": now,
                },
                {"c": "link", "link": new_id(), "parent": parent, "name": name, "obj": obj},
                _touch(parent, now),
            ]
        )
        return obj

    def link(self, obj: bytes, parent: bytes, name: bytes) -> None:
        self._check_name(name)
        self.require_dir(parent)
        row = self.require(obj)
        if row.is_dir:
            raise NamespaceError(errno.EPERM)
        if self.ns.link_count(obj) == 0:
            raise NamespaceError(errno.ENOENT)  # unlinked: linkat(2) says ENOENT too
        if self.ns.lookup(parent, name) is not None:
            raise NamespaceError(errno.EEXIST)
        now = time.time_ns()
        self.commit(
            [
                {"c": "link", "link": new_id(), "parent": parent, "name": name, "obj": obj},
                {"c": "attr", "obj": obj, "fields": {"ctime": now}},
                _touch(parent, now),
            ]
        )

    def remove(self, parent: bytes, name: bytes, *, directory: bool) -> bytes:
        """unlink(2) (``directory=False``) or rmdir(2); returns the object ID."""
        link, obj = self.require_entry(parent, name)
        row = self.require(obj)
        if directory:
            if not row.is_dir:
                raise NamespaceError(errno.ENOTDIR)
            if self.ns.children(obj, limit=1):
                raise NamespaceError(errno.ENOTEMPTY)
        elif row.is_dir:
            raise NamespaceError(errno.EISDIR)
        now = time.time_ns()
        changes: list[Change] = [{"c": "unlink", "link": link}, _touch(parent, now)]
        if not directory:
            changes.append({"c": "attr", "obj": obj, "fields": {"ctime": now}})
        self.commit(changes)
        return obj

    def rename(
        self, parent: bytes, name: bytes, new_parent: bytes, new_name: bytes, flags: int
    ) -> bytes | None:
        """rename(2) with RENAME_NOREPLACE; returns the ID of a replaced object, if any."""
        if flags & RENAME_EXCHANGE:
            raise NamespaceError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        self._check_name(new_name)
        link, obj = self.require_entry(parent, name)
        self.require_dir(new_parent)
        moving = self.require(obj)
        if moving.is_dir and self.ns.is_ancestor(obj, new_parent):
            raise NamespaceError(errno.EINVAL)
        replaced = self.ns.lookup(new_parent, new_name)
        replace_link = None
        if replaced is not None:
            if replaced[1] == obj:
                return None  # same object: POSIX says do nothing
            if flags & RENAME_NOREPLACE:
                raise NamespaceError(errno.EEXIST)
            target = self.require(replaced[1])
            if moving.is_dir and not target.is_dir:
                raise NamespaceError(errno.ENOTDIR)
            if not moving.is_dir and target.is_dir:
                raise NamespaceError(errno.EISDIR)
            if target.is_dir and self.ns.children(replaced[1], limit=1):
                raise NamespaceError(errno.ENOTEMPTY)
            replace_link = replaced[0]
        now = time.time_ns()
        changes: list[Change] = [
            {
                "c": "move",
                "link": link,
                "parent": new_parent,
                "name": new_name,
                "replace": replace_link,
            },
            {"c": "attr", "obj": obj, "fields": {"ctime": now}},
            _touch(parent, now),
        ]
        if new_parent != parent:
            changes.append(_touch(new_parent, now))
        if replaced is not None:
            changes.append({"c": "attr", "obj": replaced[1], "fields": {"ctime": now}})
        self.commit(changes)
        return replaced[1] if replaced is not None else None

    def set_attrs(self, obj: bytes, fields: dict[str, int]) -> None:
        self.require(obj)
        self.commit([{"c": "attr", "obj": obj, "fields": fields}])

    def set_content(
        self,
        obj: bytes,
        size: int,
        chunk_size: int,
        cut: int | None,
        put: list[list[Any]],
        base: tuple[int, bytes],
        mtime: int,
    ) -> Op:
        """Commit a content change (``dhtfs.meta.versions``): drop bytes from ``cut`` on, lay
        ``put`` (``[offset, length, block, block_offset]`` extents) over, resize to ``size``."""
        return self.commit(
            [
                {
                    "c": "content",
                    "obj": obj,
                    "size": size,
                    "chunk_size": chunk_size,
                    "cut": cut,
                    "put": put,
                    "base": list(base),
                    "mtime": mtime,
                    "ctime": time.time_ns(),
                }
            ]
        )

    def compact(self, obj: bytes, base: tuple[int, bytes], put: list[list[Any]]) -> Op:
        """Commit a compaction of version ``base`` of ``obj``: the same bytes, in ``put``."""
        return self.commit([{"c": "compact", "obj": obj, "base": list(base), "put": put}])

    def set_xattr(self, obj: bytes, name: bytes, value: bytes | None) -> None:
        self.require(obj)
        if value is None and self.ns.xattr(obj, name) is None:
            raise NamespaceError(errno.ENODATA)
        self.commit(
            [
                {"c": "xattr", "obj": obj, "name": name, "value": value},
                {"c": "attr", "obj": obj, "fields": {"ctime": time.time_ns()}},
            ]
        )

    # -- reading -------------------------------------------------------------------------------

    def require(self, obj: bytes) -> ObjectRow:
        row = self.ns.get_object(obj)
        if row is None:
            raise NamespaceError(errno.ENOENT)
        return row

    def require_dir(self, obj: bytes) -> ObjectRow:
        row = self.require(obj)
        if not row.is_dir:
            raise NamespaceError(errno.ENOTDIR)
        if not self.ns.is_live_dir(obj):
            raise NamespaceError(errno.ENOENT)  # removed directory
        return row

    def find_entry(self, parent: bytes, name: bytes) -> tuple[bytes, bytes] | None:
        """``(link, obj)`` of ``name`` in the live directory ``parent``; None if no such name.
        A name longer than ``NAME_MAX`` is ENAMETOOLONG (as ``statfs`` says), not missing."""
        self.require_dir(parent)
        if len(name) > NAME_MAX:
            raise NamespaceError(errno.ENAMETOOLONG)
        return self.ns.lookup(parent, name)

    def require_entry(self, parent: bytes, name: bytes) -> tuple[bytes, bytes]:
        hit = self.find_entry(parent, name)
        if hit is None:
            raise NamespaceError(errno.ENOENT)
        return hit

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise NamespaceError(errno.ENAMETOOLONG)
        if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
            raise NamespaceError(errno.EINVAL)


def _touch(dir_obj: bytes, now: int) -> Change:
    return {"c": "attr", "obj": dir_obj, "fields": {"mtime": now, "ctime": now}}


def bind_origin(ns: Namespace, node_id: bytes) -> bytes:
    """Make ``node_id`` (the swarm certificate's node ID) the origin of this node's ops.

    A state directory belongs to one node identity for good (its ops, once shared, carry that
    ID): another certificate on it is a ConfigError. A state directory from before the swarm
    (a random origin, never shared) has its ops re-stamped once (``adopt_origin``).
    """
    current = ns.meta_get("node_id")
    if current is not None and current != node_id:
        if ns.meta_get("node_id_bound") is not None:
            raise ConfigError(
                f"the state directory belongs to node {current.hex()[:16]}, not to the "
                f"certificate's node {node_id.hex()[:16]}; use a fresh state= directory "
                "for another node identity"
            )
        moved = History(ns).adopt_origin(current, node_id)
        log.warning(
            "re-stamped %d ops of this state directory with node ID %s", moved, node_id.hex()[:16]
        )
    ns.meta_set("node_id", node_id)
    ns.meta_set("node_id_bound", b"1")
    return node_id
