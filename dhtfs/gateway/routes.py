"""A request turned into a response: ``GET``/``HEAD`` of files, directories and
``/.blocks/<hex id>``; every other method 405 (with ``Allow``); errors as short plain-text
bodies (never a traceback).

Routes, in order: ``/.blocks/<64 hex digits>`` serves one verified block (``Cache-Control:
immutable``; the name ``.blocks`` at the root is the gateway's, a file of that name is not
served); any other path is resolved in the tree (``dhtfs.gateway.paths``): a regular file is
served with validators and ranges, a directory answers its listing, anything else is 404.

A response's body is an async iterator of byte strings that the server sends one at a time,
awaiting each send before asking for the next (backpressure reaches the read path).
"""

from __future__ import annotations

import logging
import mimetypes
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from dhtfs.base.errors import NamespaceError
from dhtfs.fs.files import FileContents
from dhtfs.gateway import paths
from dhtfs.gateway.content import BlockBody, FileVersion
from dhtfs.gateway.listing import listing_chunks, wants_json
from dhtfs.gateway.ranges import Multipart, Unsatisfiable, content_range, parse_range
from dhtfs.gateway.validators import (
    block_etag,
    evaluate,
    file_etag,
    http_date,
    range_applies,
)
from dhtfs.meta.tree import Tree

log = logging.getLogger(__name__)

ALLOW = b"GET, HEAD"
BLOCKS = b"/.blocks/"
Body = FileVersion | BlockBody
REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request",
           401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           412: "Precondition Failed", 416: "Range Not Satisfiable",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


@dataclass
class Response:
    """Status, headers, and the body (``length`` None: unknown, sent chunked)."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: AsyncIterator[bytes] = field(default_factory=_nothing)
    length: int | None = 0


def error(status: int, detail: str = "", **extra: bytes) -> Response:
    """A plain-text error response: the status line, and ``detail`` if given."""
    text = f"{status} {REASONS.get(status, '')}\n" + (f"{detail}\n" if detail else "")
    body = text.encode()

    async def once() -> AsyncIterator[bytes]:
        yield body

    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               *((k.replace("_", "-").encode(), v) for k, v in extra.items())]
    return Response(status, headers, once(), len(body))


def content_type(name: bytes) -> bytes:
    guessed, encoding = mimetypes.guess_type(name.decode("utf-8", "replace"), strict=False)
    if guessed is None or encoding is not None:
        return b"application/octet-stream"
    return guessed.encode() + (b"; charset=utf-8" if guessed.startswith("text/") else b"")


class Routes:
    """The gateway's answers over one tree (``tree``) and its file contents (``contents``:
    the mount's, so reads share its cache, read-ahead and fetches); ``mountpoint``: see
    ``paths.Resolver``."""

    def __init__(self, tree: Tree, contents: FileContents,
                 mountpoint: bytes | None = None) -> None:
        self.tree = tree
        self.contents = contents
        self.resolver = paths.Resolver(tree, mountpoint)

    async def respond(self, method: bytes, target: bytes,
                      headers: dict[bytes, bytes]) -> Response:
        """The response to one request (``headers``: lower-cased names)."""
        if method not in (b"GET", b"HEAD"):
            return error(405, "this gateway is read-only", allow=ALLOW)
        try:
            if target.startswith(BLOCKS):
                return await self._block(target[len(BLOCKS):], headers)
            names, slash = paths.split_target(target)
            found = self.resolver.resolve(names)
        except paths.BadTarget as exc:
            return error(400, str(exc))
        except paths.Forbidden as exc:
            return error(403, str(exc))
        except paths.NotFound:
            return error(404)
        row = found.row
        if row.is_dir:
            as_json = wants_json(headers.get(b"accept", b""))
            kind = b"application/json" if as_json else b"text/html; charset=utf-8"
            return Response(200, [(b"content-type", kind), (b"cache-control", b"no-cache")],
                            listing_chunks(self.tree, row.obj, found.names, as_json), None)
        if row.kind != stat.S_IFREG or slash:
            return error(404)
        version = FileVersion(self.tree, self.contents, row, self.contents.default_chunk_size)
        name = found.names[-1] if found.names else b""
        return self.representation(
            version, headers, file_etag(row), row.mtime // 1_000_000_000, content_type(name),
            [(b"cache-control", b"no-cache")])

    async def _block(self, hex_id: bytes, headers: dict[bytes, bytes]) -> Response:
        hex_id = hex_id.split(b"?", 1)[0]
        try:
            if len(hex_id) != 64:
                raise ValueError
            block_id = bytes.fromhex(hex_id.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return error(400, "a block is named by its 64 hex digits")
        etag = block_etag(block_id)
        early = evaluate(headers, etag, None)
        if early is not None:
            return Response(early, [(b"etag", etag)]) if early == 304 else error(early)
        contents = self.contents
        if contents.fetch is None and contents.cache.get(block_id) is None \
                and not contents.store.has(block_id):
            return error(404, "no such block here")  # a node alone: nowhere else to look
        try:
            body = await BlockBody.fetch(contents, block_id)
        except NamespaceError as exc:
            return error(502, f"the block could not be read: {exc}")
        except ValueError as exc:
            log.error("gateway: %s", exc)
            return error(502, "the block failed verification")
        return self.representation(
            body, headers, etag, None, b"application/octet-stream",
            [(b"cache-control", b"public, max-age=31536000, immutable")])

    def representation(self, body: Body, headers: dict[bytes, bytes], etag: bytes,
                       mtime: int | None, kind: bytes,
                       extra: list[tuple[bytes, bytes]]) -> Response:
        """A file's or a block's response: preconditions (304/412), then the Range (206, a
        multipart 206, 416) or the whole body (200)."""
        size = body.size
        common = [(b"etag", etag), (b"accept-ranges", b"bytes"), *extra]
        if mtime is not None:
            common.append((b"last-modified", http_date(mtime)))
        early = evaluate(headers, etag, mtime)
        if early == 304:
            return Response(304, common)
        if early is not None:
            return error(early)
        ranges = None
        if b"range" in headers and range_applies(headers, etag, mtime):
            try:
                ranges = parse_range(headers[b"range"], size)
            except Unsatisfiable:
                return error(416, content_range=b"bytes */%d" % size)
        if ranges is None:
            return Response(200, [(b"content-type", kind), *common],
                            body.read(0, size - 1) if size else _nothing(), size)
        if len(ranges) == 1:
            first, last = ranges[0]
            return Response(206, [(b"content-type", kind), *common,
                                  (b"content-range", content_range(first, last, size))],
                            body.read(first, last), last - first + 1)
        multipart = Multipart.build(ranges, size, kind)
        return Response(206, [(b"content-type", multipart.content_type), *common],
                        _multipart_body(body, multipart), multipart.length)


async def _multipart_body(body: Body, multipart: Multipart) -> AsyncIterator[bytes]:
    for head, (first, last) in zip(multipart.heads, multipart.ranges, strict=True):
        yield head
        async for piece in body.read(first, last):
            yield piece
    yield multipart.tail
