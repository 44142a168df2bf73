"""``Range: bytes=...`` (RFC 9110 §14): single, suffix and multiple ranges, and the
``multipart/byteranges`` body that answers several.

``parse_range`` returns the satisfiable ranges as ``(first, last)`` byte positions,
inclusive, clipped to the representation's size, in the order asked; ``None`` when the
header is to be ignored (not a ``bytes`` range, malformed, or more than ``MAX_RANGES``
ranges: the whole representation is then served, as the RFC allows); ``Unsatisfiable`` (416)
when it is well formed but no range overlaps the representation. Overlapping ranges are
served as asked (a client asking twice for the same bytes gets them twice), up to
``MAX_RANGES`` parts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MAX_RANGES = 64
MAX_HEADER = 4096


class Unsatisfiable(ValueError):
    """A well-formed Range of which no range overlaps the representation (416)."""


def parse_range(header: bytes, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable ranges of ``header`` for a representation of ``size`` bytes (module
    docstring)."""
    if len(header) > MAX_HEADER:
        return None
    unit, sep, spec = header.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return None
    items = [item.strip() for item in spec.split(b",")]
    items = [item for item in items if item]
    if not items or len(items) > MAX_RANGES:
        return None
    out: list[tuple[int, int]] = []
    for item in items:
        first_text, dash, last_text = item.partition(b"-")
        first_text, last_text = first_text.strip(), last_text.strip()
        if not dash or not _digits(first_text, last_text):
            return None
        if not first_text:  # suffix: the last N bytes
            if not last_text:
                return None
            length = int(last_text)
            if length > 0 and size > 0:
                out.append((max(0, size - length), size - 1))
            continue
        first = int(first_text)
        if last_text and int(last_text) < first:
            return None  # invalid range-spec: the whole header is ignored
        if first < size:
            out.append((first, min(int(last_text), size - 1) if last_text else size - 1))
    if not out:
        raise Unsatisfiable(f"bytes */{size}")
    return out


def _digits(*texts: bytes) -> bool:
    return all(not t or (t.isdigit() and len(t) <= 19) for t in texts)


def content_range(first: int, last: int, size: int) -> bytes:
    return b"bytes %d-%d/%d" % (first, last, size)


@dataclass(frozen=True)
class Multipart:
    """The framing of a ``multipart/byteranges`` body: each part's head (boundary and
    headers) before its bytes, and the closing delimiter; ``length`` is the whole body's."""

    boundary: bytes
    heads: list[bytes]
    tail: bytes
    ranges: list[tuple[int, int]]

    @classmethod
    def build(cls, ranges: list[tuple[int, int]], size: int, content_type: bytes) -> Multipart:
        boundary = os.urandom(12).hex().encode()
        heads = [
            b"%s--%s\r\nContent-Type: %s\r\nContent-Range: %s\r\n\r\n"
            % (b"\r\n" if i else b"", boundary, content_type, content_range(f, last, size))
            for i, (f, last) in enumerate(ranges)
        ]
        return cls(boundary, heads, b"\r\n--%s--\r\n" % boundary, ranges)

    @property
    def content_type(self) -> bytes:
        return b"multipart/byteranges; boundary=" + self.boundary

    @property
    def length(self) -> int:
        body = sum(last - first + 1 for first, last in self.ranges)
        return body + sum(map(len, self.heads)) + len(self.tail)
