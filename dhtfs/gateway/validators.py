"""Validators of a representation and the conditional headers (RFC 9110 §8.8, §13).

A file's ``ETag`` is strong and names its content version: the object ID and the op that
last wrote its content (``content_ts``, ``content_node``: every content change, local or from
another node, a conflict copy or an undo/redo included, gives a new one; see
``dhtfs.meta.versions``) and its size. A block's is its ID (a block never changes).
``Last-Modified`` is the file's mtime, in whole seconds.

``evaluate`` applies the preconditions in the RFC's order: ``If-Match`` (412),
``If-Unmodified-Since`` (412, only without If-Match), ``If-None-Match`` (304 for GET and
HEAD), ``If-Modified-Since`` (304, only without If-None-Match). ``range_applies`` decides
``If-Range``: the Range is honoured only if the validator given is the current ETag (strong
comparison) or exactly the Last-Modified date.
"""

from __future__ import annotations

from email.utils import formatdate, parsedate_to_datetime

from dhtfs.meta.schema import ObjectRow

MAX_TAGS = 64


def file_etag(row: ObjectRow) -> bytes:
    """The strong ETag of ``row``'s current content version (module docstring)."""
    return b'"%s-%x-%s-%x"' % (row.obj.hex().encode(), row.content_ts,
                                row.content_node.hex()[:32].encode(), row.size)


def block_etag(block_id: bytes) -> bytes:
    return b'"%s"' % block_id.hex().encode()


def http_date(seconds: float) -> bytes:
    return formatdate(seconds, usegmt=True).encode()


def parse_date(value: bytes) -> int | None:
    """Seconds since the epoch of an HTTP date; None if it is not one."""
    try:
        return int(parsedate_to_datetime(value.decode("latin-1")).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _tags(value: bytes) -> list[bytes] | None:
    """The entity tags of a list header; None for ``*``."""
    if value.strip() == b"*":
        return None
    return [t.strip() for t in value.split(b",")[:MAX_TAGS] if t.strip()]


def _weak_match(tags: list[bytes], etag: bytes) -> bool:
    return any(t.removeprefix(b"W/") == etag for t in tags)


def evaluate(headers: dict[bytes, bytes], etag: bytes, mtime: int | None) -> int | None:
    """The status the preconditions give (304 or 412), None to go on (module docstring).
    ``headers``: lower-cased names; ``mtime``: Last-Modified in seconds (None: none)."""
    if b"if-match" in headers:
        tags = _tags(headers[b"if-match"])
        if tags is not None and etag not in tags:  # strong comparison
            return 412
    elif b"if-unmodified-since" in headers and mtime is not None:
        since = parse_date(headers[b"if-unmodified-since"])
        if since is not None and mtime > since:
            return 412
    if b"if-none-match" in headers:
        tags = _tags(headers[b"if-none-match"])
        if tags is None or _weak_match(tags, etag):
            return 304
    elif b"if-modified-since" in headers and mtime is not None:
        since = parse_date(headers[b"if-modified-since"])
        if since is not None and mtime <= since:
            return 304
    return None


def range_applies(headers: dict[bytes, bytes], etag: bytes, mtime: int | None) -> bool:
    """Whether a Range is to be honoured given ``If-Range`` (module docstring)."""
    value = headers.get(b"if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        return value == etag
    when = parse_date(value)
    return when is not None and mtime is not None and when == mtime
