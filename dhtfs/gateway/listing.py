"""Directory listings: HTML for browsers, JSON for ``Accept: application/json``.

Streamed in batches of ``BATCH`` entries (a directory of any size costs one batch of memory).
Every name is escaped where it lands: HTML-escaped in text, percent-encoded in the ``href``
(absolute paths, so that a listing works with or without a trailing slash), and in JSON both
the name as text (undecodable bytes replaced) and its raw bytes as the percent-encoded
``href``.
"""

from __future__ import annotations

import html
import json
import stat
from collections.abc import AsyncIterator

from dhtfs.gateway.paths import quote_path
from dhtfs.meta.schema import ObjectRow
from dhtfs.meta.tree import Tree

BATCH = 256


def wants_json(accept: bytes) -> bool:
    """Whether an ``Accept`` header asks for JSON rather than HTML."""
    return b"application/json" in accept.lower()


def _kind(row: ObjectRow) -> str:
    if row.is_dir:
        return "directory"
    if row.kind == stat.S_IFLNK:
        return "symlink"
    return "file" if row.kind == stat.S_IFREG else "other"


def _text(name: bytes) -> str:
    return name.decode("utf-8", "replace")


async def listing_chunks(tree: Tree, obj: bytes, names: list[bytes],
                         as_json: bool) -> AsyncIterator[bytes]:
    """The listing of directory ``obj`` (reached by ``names``), batch by batch."""
    after = 0
    if as_json:
        yield b'{"path": %s, "entries": [' % json.dumps(_text(b"/" + b"/".join(names))).encode()
    else:
        title = html.escape(_text(b"/" + b"/".join(names)))
        yield (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Index of {title}'
               f'</title></head>\n<body><h1>Index of {title}</h1>\n<table>\n'
               '<tr><th>name</th><th>size</th><th>kind</th></tr>\n').encode()
        if names:
            up = html.escape(quote_path(names[:-1]).rstrip("/") + "/", quote=True)
            yield f'<tr><td><a href="{up}">../</a></td><td></td><td>directory</td></tr>\n'.encode()
    first = True
    while True:
        batch = tree.ns.children_with_objects(obj, after, BATCH)
        if not batch:
            break
        parts = []
        for row_id, name, row in batch:
            after = row_id
            href = quote_path([*names, name]) + ("/" if row.is_dir else "")
            if as_json:
                item = {"name": _text(name), "href": href, "kind": _kind(row),
                        "size": row.size, "mtime": row.mtime / 1e9}
                parts.append(("" if first else ",") + json.dumps(item))
            else:
                shown = html.escape(_text(name)) + ("/" if row.is_dir else "")
                parts.append(f'<tr><td><a href="{html.escape(href, quote=True)}">{shown}</a>'
                             f'</td><td>{row.size}</td><td>{_kind(row)}</td></tr>\n')
            first = False
        yield "".join(parts).encode()
        if len(batch) < BATCH:
            break
    yield b"]}\n" if as_json else b"</table></body></html>\n"
