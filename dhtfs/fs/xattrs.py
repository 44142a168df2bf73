"""Extended attributes: stored ``user.*`` (and ``trusted.*``/``security.*``) names, plus the
read-only virtual ``user.dhtfs.*`` names that show how a file is stored.

Invariants: virtual names cannot be set or removed (EPERM) and are not listed (so that tools
which copy xattrs do not try to); ``system.*`` (POSIX ACLs) is not supported (EOPNOTSUPP), so
tools fall back to plain mode bits.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from typing import Any

from dhtfs.base.errors import NamespaceError
from dhtfs.meta.namespace import ObjectRow

VIRTUAL_PREFIX = b"user.dhtfs."
MAX_VALUE = 64 * 1024


def check_settable(name: bytes, value: bytes | None = None) -> None:
    if name.startswith(VIRTUAL_PREFIX):
        raise NamespaceError(errno.EPERM, "user.dhtfs.* attributes are read-only")
    if name.startswith(b"system."):
        raise NamespaceError(errno.EOPNOTSUPP)
    if not name.startswith((b"user.", b"trusted.", b"security.")):
        raise NamespaceError(errno.EOPNOTSUPP)
    if value is not None and len(value) > MAX_VALUE:
        raise NamespaceError(errno.E2BIG)


def virtual_value(
    name: bytes, row: ObjectRow, extents: Callable[[], list[list[Any]]]
) -> bytes | None:
    """The value of a ``user.dhtfs.*`` name, or None if ``name`` is not one.

    ``extents()``: the file's ``[offset, length, block, block_offset]`` extents in order.
    ``user.dhtfs.chunks`` lists the block of each extent (for a file written sequentially:
    one block per chunk, the SHA-256 of the chunk); ``user.dhtfs.extents`` the extents, with
    block IDs in hex. Holes are in neither.
    """
    if name == b"user.dhtfs.id":
        return row.obj.hex().encode()
    if name == b"user.dhtfs.chunk_size":
        return str(row.chunk_size).encode()
    if name == b"user.dhtfs.chunks":
        return json.dumps([e[2].hex() for e in extents()]).encode()
    if name == b"user.dhtfs.extents":
        return json.dumps([[o, n, b.hex(), bo] for o, n, b, bo in extents()]).encode()
    return None
