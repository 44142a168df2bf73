"""Extended attributes: stored ``user.*`` (and ``trusted.*``/``security.*``) names, plus the
read-only virtual ``user.dhtfs.*`` names that show how a file is stored (its ID, chunk size,
extents and blocks) and, on a swarm mount, where its blocks are (asking the network).

Invariants: virtual names cannot be set or removed (EPERM) and are not listed (so that tools
which copy xattrs do not try to); ``system.*`` (POSIX ACLs) is not supported (EOPNOTSUPP), so
tools fall back to plain mode bits.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Awaitable, Callable
from typing import Any

from dhtfs.base.errors import NamespaceError
from dhtfs.fs.buffers import OpenFile
from dhtfs.meta.extents import Piece
from dhtfs.meta.namespace import Namespace
from dhtfs.meta.schema import ObjectRow

VIRTUAL_PREFIX = b"user.dhtfs."
MAX_VALUE = 64 * 1024

Locate = Callable[[list[bytes]], Awaitable[dict[bytes, list[list[Any]]]]]
"""A swarm mount's provider lookup: blocks → {block: [[node hex, "host:port", rtt ms | None]]}."""


def check_settable(name: bytes, value: bytes | None = None) -> None:
    if name.startswith(VIRTUAL_PREFIX):
        raise NamespaceError(errno.EPERM, "user.dhtfs.* attributes are read-only")
    if name.startswith(b"system."):
        raise NamespaceError(errno.EOPNOTSUPP)
    if not name.startswith((b"user.", b"trusted.", b"security.")):
        raise NamespaceError(errno.EOPNOTSUPP)
    if value is not None and len(value) > MAX_VALUE:
        raise NamespaceError(errno.E2BIG)


async def virtual_value(
    name: bytes,
    row: ObjectRow,
    extents: Callable[[], list[list[Any]]],
    *,
    control_socket: str,
    locate: Locate | None,
) -> bytes | None:
    """The value of a ``user.dhtfs.*`` name, or None if ``name`` is not one.

    ``extents()``: the file's ``[offset, length, block, block_offset]`` extents in order.
    ``user.dhtfs.chunks`` lists the block of each extent (for a file written sequentially:
    one block per chunk, the SHA-256 of the chunk); ``user.dhtfs.extents`` the extents, with
    block IDs in hex. Holes are in neither. ``user.dhtfs.control``: the path of this mount's
    control socket (``control_socket``: where ``dhtfs sync`` finds the mount). A swarm mount
    (``locate``) also has ``user.dhtfs.replicas`` (per block of the file: how many nodes
    provide it) and ``user.dhtfs.providers`` (which ones), both found on the network.
    """
    if name == b"user.dhtfs.control":
        return control_socket.encode()
    if name in (b"user.dhtfs.replicas", b"user.dhtfs.providers") and locate:
        blocks = list(dict.fromkeys(e[2] for e in extents()))
        found = await locate(blocks)
        if name == b"user.dhtfs.replicas":
            doc: list[Any] = [[b.hex(), len(found.get(b, []))] for b in blocks]
        else:
            doc = [[b.hex(), found.get(b, [])] for b in blocks]
        return json.dumps(doc).encode()
    if name == b"user.dhtfs.id":
        return row.obj.hex().encode()
    if name == b"user.dhtfs.chunk_size":
        return str(row.chunk_size).encode()
    if name == b"user.dhtfs.chunks":
        return json.dumps([e[2].hex() for e in extents()]).encode()
    if name == b"user.dhtfs.extents":
        return json.dumps([[o, n, b.hex(), bo] for o, n, b, bo in extents()]).encode()
    return None


def file_extents(
    row: ObjectRow,
    of: OpenFile | None,
    ns: Namespace,
    live_pieces: Callable[[OpenFile, int], list[Piece]],
) -> list[list[Any]]:
    """``[offset, length, block, block_offset]`` of every extent of the file, in order
    (an open file's as its readers see it, uncommitted blocks included: ``live_pieces``,
    i.e. ``FileContents.pieces``)."""
    if of is None:
        cs = row.chunk_size
        return [
            [i * cs + pos, n, block, boff]
            for i, pieces in ns.extents(row.obj)
            for pos, n, block, boff in pieces
        ]
    indexes = sorted({i for i, _ in ns.extents(row.obj)} | set(of.new))
    cs = of.chunk_size
    return [
        [i * cs + pos, n, block, boff]
        for i in indexes
        for pos, n, block, boff in live_pieces(of, i)
    ]
