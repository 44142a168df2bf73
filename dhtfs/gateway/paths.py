"""Request targets turned into the tree's objects, never leaving the tree.

``split_target`` percent-decodes a request target segment by segment: the raw target is split
on ``/`` first, so an encoded ``%2f`` can never make a separator; a segment that decodes to
``..`` (``..``, ``%2e%2e``, ``.%2E``), contains ``/`` or NUL, or holds a malformed escape is
refused (``BadTarget``, a 400). ``Resolver.resolve`` walks the decoded names from the root,
following symbolic links *inside the tree only*: a relative target is resolved against the
link's directory, never above the root; an absolute one only when it points into the mount
(its mountpoint prefix); anything else is ``Forbidden`` (403). At most ``MAX_SYMLINKS`` links
are followed per request.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from dhtfs.meta.ops import ROOT_OBJ
from dhtfs.meta.schema import ObjectRow
from dhtfs.meta.tree import NAME_MAX, Tree

MAX_SYMLINKS = 40
MAX_TARGET = 8192
_HEX = b"0123456789abcdefABCDEF"


class BadTarget(ValueError):
    """A request target that is not a path of the tree (400)."""


class NotFound(LookupError):
    """No such name (404)."""


class Forbidden(PermissionError):
    """A path that would leave the tree through a symbolic link (403)."""


def percent_decode(segment: bytes) -> bytes:
    """``segment`` with every ``%XX`` decoded; BadTarget for a malformed escape."""
    if b"%" not in segment:
        return segment
    out = bytearray()
    i = 0
    while i < len(segment):
        c = segment[i]
        if c == 0x25:  # %
            pair = segment[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise BadTarget("malformed percent-encoding")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def split_target(target: bytes) -> tuple[list[bytes], bool]:
    """``(names, trailing slash)`` of an origin-form target (query dropped); BadTarget if it
    is not one or would leave the tree (module docstring)."""
    if len(target) > MAX_TARGET:
        raise BadTarget("request target too long")
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    if not path.startswith(b"/"):
        raise BadTarget("the request target must be an absolute path")
    names: list[bytes] = []
    for raw in path.split(b"/"):
        name = percent_decode(raw)
        if name in (b"", b"."):
            continue
        if name == b"..":
            raise BadTarget("'..' would leave the tree")
        if b"/" in name or b"\0" in name:
            raise BadTarget("a name may hold neither '/' nor NUL")
        if len(name) > NAME_MAX:
            raise BadTarget("a name is longer than 255 bytes")
        names.append(name)
    return names, path.endswith(b"/")


def quote_path(names: list[bytes]) -> str:
    """The URL path of ``names`` (every byte outside the unreserved set percent-encoded)."""
    safe = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    parts = ["".join(chr(b) if b in safe else f"%{b:02X}" for b in name) for name in names]
    return "/" + "/".join(parts)


@dataclass(frozen=True)
class Resolved:
    """What a path names: its object row and the names leading to it from the root."""

    row: ObjectRow
    names: list[bytes]


class Resolver:
    """Paths of one tree (``tree``), symbolic links followed inside it; ``mountpoint``: the
    mount's own path, so that absolute links into the mount resolve (None: none do)."""

    def __init__(self, tree: Tree, mountpoint: bytes | None = None) -> None:
        self.tree = tree
        self.mountpoint = mountpoint.rstrip(b"/") if mountpoint else None

    def resolve(self, names: list[bytes]) -> Resolved:
        """The object ``names`` leads to from the root; NotFound or Forbidden."""
        ns = self.tree.ns
        stack: list[tuple[bytes, bytes]] = []  # (name, obj) of each directory walked into
        todo = list(reversed(names))
        links = 0
        row = ns.get_object(ROOT_OBJ)
        if row is None:
            raise NotFound("no root")
        while todo:
            name = todo.pop()
            here = stack[-1][1] if stack else ROOT_OBJ
            if not row.is_dir or not ns.is_live_dir(here):
                raise NotFound("not a directory")
            hit = ns.lookup(here, name)
            if hit is None:
                raise NotFound("no such name")
            child = ns.get_object(hit[1])
            if child is None:
                raise NotFound("no such object")
            if child.kind == stat.S_IFLNK:
                links += 1
                if links > MAX_SYMLINKS:
                    raise NotFound("too many levels of symbolic links")
                inner = self._link_names(child.target or b"", stack)
                todo.extend(reversed(inner))
                row = ns.get_object(stack[-1][1] if stack else ROOT_OBJ) or row
                continue
            stack.append((name, child.obj))
            row = child
        return Resolved(row, [n for n, _ in stack])

    def _link_names(self, target: bytes, stack: list[tuple[bytes, bytes]]) -> list[bytes]:
        """The names a symbolic link's ``target`` walks (``stack`` rewound for ``..`` and for
        an absolute target into the mount); Forbidden if it leaves the tree."""
        if target.startswith(b"/"):
            mount = self.mountpoint
            if mount is None or not (target == mount or target.startswith(mount + b"/")):
                raise Forbidden("a symbolic link points outside the tree")
            target = target[len(mount) :]
            stack.clear()
        out: list[bytes] = []
        for name in target.split(b"/"):
            if name in (b"", b"."):
                continue
            if name == b"..":
                if out:
                    out.pop()
                elif stack:
                    stack.pop()
                else:
                    raise Forbidden("a symbolic link points above the tree's root")
                continue
            out.append(name)
        return out
