"""Namespace ops: the only way the tree changes, on one node or many.

An op is ``(ts, node, changes)``: a hybrid-logical-clock timestamp, the 32-byte ID of the
node that made it, and a list of primitive changes applied atomically. ``(ts, node)`` is the
op's ID and its place in the one total order every node applies ops in.

Invariants:
- ``encode_op`` is canonical (msgpack of plain lists, fixed field order), so the same op has
  the same bytes everywhere: it is what a signature will cover (``sig`` is reserved);
- an op's changes reference objects and links by global IDs (16 random bytes), never by
  local inode numbers;
- the HLC never goes backwards, and exceeds every timestamp it has observed.

Primitive changes (dicts, key ``c`` names the kind)::

    {"c": "mkobj", "obj", "kind", "mode", "uid", "gid", "rdev", "target", "time"}
    {"c": "link",  "link", "parent", "name", "obj"}
    {"c": "move",  "link", "parent", "name", "replace"}     # replace: link id or None
    {"c": "unlink", "link"}
    {"c": "attr",  "obj", "fields": {"mode"|"uid"|"gid"|"atime"|"mtime"|"ctime": int}}
    {"c": "content", "obj", "size", "chunk_size", "cut", "put", "base", "mtime", "ctime"}
    {"c": "compact", "obj", "base", "put"}       # put: [[offset, length, block, block_offset]]
    (content with "chunks" instead of "cut"/"put": from before extents; see dhtfs.meta.versions)
    {"c": "xattr", "obj", "name", "value"}                 # value None removes
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from dhtfs.base.randbytes import random_bytes

OP_FORMAT = 1
OBJ_ID_BYTES = 16
ROOT_OBJ = bytes(OBJ_ID_BYTES)

Change = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Op:
    """One atomic namespace change, identified and ordered by ``(ts, node)``."""

    ts: int
    node: bytes
    changes: tuple[Change, ...]

    @property
    def op_id(self) -> tuple[int, bytes]:
        return (self.ts, self.node)


def new_id() -> bytes:
    """A fresh global object or link ID."""
    return random_bytes(OBJ_ID_BYTES)


class _Packers(threading.local):
    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True)


_packers = _Packers()


def pack(value: Any) -> bytes:
    """msgpack of ``value`` with a reused per-thread Packer (``msgpack.packb`` builds a Packer,
    and its 1 MiB buffer, on every call)."""
    return _packers.packer.pack(value)


def encode_op(op: Op) -> bytes:
    return pack([OP_FORMAT, op.ts, op.node, list(op.changes)])


def decode_op(blob: bytes) -> Op:
    fmt, ts, node, changes = msgpack.unpackb(blob, raw=False)
    if fmt != OP_FORMAT:
        raise ValueError(f"unknown op format {fmt}")
    return Op(ts, node, tuple(changes))


class HybridClock:
    """A hybrid logical clock folded into one integer of nanoseconds.

    ``now()`` returns ``max(wall_ns, last + 1)``, so timestamps are unique per node, follow
    wall time when it moves forward and never go backwards; ``observe(ts)`` moves ``last`` past
    a remote timestamp, so causally later ops always get larger timestamps.
    """

    def __init__(self, last: int = 0) -> None:
        self._last = last

    def now(self) -> int:
        self._last = max(time.time_ns(), self._last + 1)
        return self._last

    @property
    def last(self) -> int:
        """The latest timestamp issued or observed: every later ``now()`` exceeds it."""
        return self._last

    def observe(self, ts: int) -> None:
        self._last = max(self._last, ts)
