"""Log entries and their wire form (``dhtfs.oplog.replicator``'s messages), strictly validated.

An entry on the wire is ``[origin: bytes(32), seq: int >= 1, body: bytes, sig: bytes]`` (an
empty ``sig``: not the end of a signed batch); a
vector ``[[origin, seq], ...]``; certificates ``[[origin, der], ...]``. Anything else in a
request is a ``RemoteError`` (the caller's fault); in an answer a ``ProtocolError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dhtfs.base.errors import ProtocolError, RemoteError
from dhtfs.base.ids import ID_BYTES

MAX_ENTRIES = 4096
"""Entries in one message at most (a pull answer says ``more`` past it)."""
MAX_BODY = 40 * 1024 * 1024  # a content op of a 2**20-chunk file fits
MAX_SIG = 256
MAX_CERT = 16 * 1024


CHAIN_TAG = b"dhtfs-log-chain-v1\0"


def chain_start(origin: bytes) -> bytes:
    """The link before ``origin``'s first entry."""
    return hashlib.sha256(CHAIN_TAG + origin).digest()


def chain_link(prev: bytes, seq: int, body: bytes) -> bytes:
    """The link of entry ``seq`` (``prev``: the link of entry ``seq - 1``)."""
    return hashlib.sha256(prev + seq.to_bytes(8, "big") + body).digest()


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of one origin's log. ``sig``: the origin's signature when the entry ends a
    signed batch (``dhtfs.oplog.signing``), else None. ``link``: its chain link, where the store
    knows it (never sent: every receiver computes links itself)."""

    origin: bytes
    seq: int
    body: bytes
    sig: bytes | None = None
    link: bytes | None = field(default=None, compare=False)


class InvalidEntry(Exception):
    """A store refused an entry whose signature verified (e.g. its body names another origin)."""

    def __init__(self, entry: LogEntry, reason: str) -> None:
        super().__init__(f"entry {entry.origin.hex()[:12]}#{entry.seq}: {reason}")
        self.entry = entry


# -- wire --------------------------------------------------------------------------------------


def _fail(method: str, message: str, answer: bool) -> Exception:
    return ProtocolError(f"{method}: {message}") if answer else RemoteError(f"{method}: {message}")


def entries_from_wire(v: Any, method: str, *, answer: bool = False) -> list[LogEntry]:
    if not isinstance(v, list) or len(v) > MAX_ENTRIES:
        raise _fail(method, f"'entries' must be a list of at most {MAX_ENTRIES}", answer)
    out = []
    for item in v:
        if not isinstance(item, list) or len(item) != 4:
            raise _fail(method, "an entry must be [origin, seq, body, sig]", answer)
        origin, seq, body, sig = item
        if (
            type(origin) is not bytes or len(origin) != ID_BYTES
            or type(seq) is not int or seq < 1
            or type(body) is not bytes or len(body) > MAX_BODY
            or type(sig) is not bytes or len(sig) > MAX_SIG
        ):
            raise _fail(method, "malformed entry", answer)
        out.append(LogEntry(origin, seq, body, sig or None))
    return out


def _id_pairs(
    v: Any, method: str, answer: bool, what: str, entry: str, limit: int,
    valid: Callable[[Any], bool],
) -> dict[bytes, Any]:
    """``[[id, value], ...]`` → ``{id: value}``: a list of at most ``limit`` pairs of a
    32-byte ID and a value ``valid`` accepts."""
    if not isinstance(v, list) or len(v) > limit:
        raise _fail(method, f"'{what}' must be a list", answer)
    out = {}
    for item in v:
        if (
            not isinstance(item, list) or len(item) != 2
            or type(item[0]) is not bytes or len(item[0]) != ID_BYTES
            or not valid(item[1])
        ):
            raise _fail(method, f"malformed {entry} entry", answer)
        out[item[0]] = item[1]
    return out


def certs_from_wire(v: Any, method: str, *, answer: bool = False) -> dict[bytes, bytes]:
    return _id_pairs(v, method, answer, "certs", "certificate", MAX_ENTRIES,
                     lambda der: type(der) is bytes and len(der) <= MAX_CERT)


def vector_to_wire(vector: dict[bytes, int]) -> list[list[Any]]:
    return [[o, s] for o, s in vector.items()]


def vector_from_wire(v: Any, method: str, *, answer: bool = False) -> dict[bytes, int]:
    return _id_pairs(v, method, answer, "vector", "vector", 1_000_000,
                     lambda seq: type(seq) is int and seq >= 0)
