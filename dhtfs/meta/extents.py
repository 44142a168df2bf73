"""Extents: where a file's bytes are, as pieces of content-addressed blocks.

A file version is its size plus, for each chunk index ``i`` (the file's bytes
``[i * chunk_size, (i + 1) * chunk_size)``) that holds data, a list of *pieces*: ``(pos,
length, block, offset)`` says the chunk's bytes ``[pos, pos + length)`` are the block's bytes
``[offset, offset + length)``. Bytes no piece covers are zeros (holes cost nothing).

Invariants of a piece list (``overlay`` and ``clip`` keep them; a stored row always has them):
- sorted by ``pos``, pieces do not overlap, every ``length`` > 0;
- every piece lies inside its chunk: ``pos + length <= chunk_size``;
- in a stored version, no piece reaches past the file's size (so growing a file reads zeros).

A block is the SHA-256-addressed plaintext of what one write (or one compaction) produced.
A piece may claim more bytes than its block has (state directories from before extents: the
chunk's span was recorded, not the block's length); those bytes read as zeros.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import msgpack

Piece = tuple[int, int, bytes, int]
"""``(pos in chunk, length, block id, offset in block)``."""


def overlay(pieces: list[Piece], new: Piece) -> list[Piece]:
    """``pieces`` with ``new`` laid over them (``new`` wins where they overlap)."""
    pos, length = new[0], new[1]
    end = pos + length
    if length <= 0:
        return pieces
    if not pieces or pieces[-1][0] + pieces[-1][1] <= pos:
        return [*pieces, new]  # appending past the end: the common sequential case
    out: list[Piece] = []
    placed = False
    for p in pieces:
        p_pos, p_len, block, off = p
        p_end = p_pos + p_len
        if p_end <= pos or p_pos >= end:  # untouched
            if p_pos >= end and not placed:
                out.append(new)
                placed = True
            out.append(p)
            continue
        if p_pos < pos:  # left remainder
            out.append((p_pos, pos - p_pos, block, off))
        if not placed:
            out.append(new)
            placed = True
        if p_end > end:  # right remainder
            out.append((end, p_end - end, block, off + (end - p_pos)))
    if not placed:
        out.append(new)
    return out


def overlay_all(pieces: list[Piece], new: list[Piece]) -> list[Piece]:
    """``pieces`` with every piece of ``new`` laid over in order (later ones win).

    One sweep when ``new`` is sorted and disjoint (a flush's change always is), else one
    ``overlay`` per new piece."""
    if len(new) == 1:
        return overlay(pieces, new[0])
    for a, b in itertools.pairwise(new):
        if a[0] + a[1] > b[0] or a[1] <= 0:
            for piece in new:
                pieces = overlay(pieces, piece)
            return pieces
    if not pieces:
        return [p for p in new if p[1] > 0]
    out: list[Piece] = []
    j = 0  # first new piece that may still overlap the current old piece
    for p_pos, p_len, block, off in pieces:
        p_end = p_pos + p_len
        cur = p_pos
        while j < len(new) and new[j][0] + new[j][1] <= cur:
            j += 1
        k = j
        while k < len(new) and new[k][0] < p_end:  # new pieces cutting this old one
            n_pos, n_len = new[k][0], new[k][1]
            if n_pos > cur:
                out.append((cur, n_pos - cur, block, off + (cur - p_pos)))
            cur = max(cur, n_pos + n_len)
            k += 1
        if cur < p_end:
            out.append((cur, p_end - cur, block, off + (cur - p_pos)))
    out.extend(new)
    out.sort(key=lambda p: p[0])
    return out


def clip(pieces: list[Piece], limit: int) -> list[Piece]:
    """``pieces`` without any byte at or past ``limit`` (a position in the chunk)."""
    if not pieces or pieces[-1][0] + pieces[-1][1] <= limit:
        return pieces
    out: list[Piece] = []
    for p_pos, p_len, block, off in pieces:
        if p_pos >= limit:
            break
        out.append((p_pos, min(p_len, limit - p_pos), block, off))
    return out


def split(
    offset: int, length: int, block: bytes, block_offset: int, chunk_size: int
) -> Iterator[tuple[int, Piece]]:
    """A file-level extent ``[offset, offset + length)`` as ``(chunk index, piece)`` pairs."""
    while length > 0:
        index, pos = divmod(offset, chunk_size)
        n = min(length, chunk_size - pos)
        yield index, (pos, n, block, block_offset)
        offset += n
        length -= n
        block_offset += n


def pack_pieces(pieces: Iterable[Piece]) -> bytes:
    return msgpack.packb([list(p) for p in pieces], use_bin_type=True)


def unpack_pieces(blob: bytes) -> list[Piece]:
    return [tuple(p) for p in msgpack.unpackb(blob, raw=False)]  # type: ignore[misc]


def stitch(pieces: list[Piece], span: int, block_bytes: Callable[[bytes], bytes]) -> bytes:
    """The chunk's first ``span`` bytes: pieces over zeros (``block_bytes``: plaintext of a
    block). A single piece at 0 covering the span returns the block's bytes without a copy."""
    if len(pieces) == 1 and pieces[0][0] == 0 and pieces[0][3] == 0 and pieces[0][1] >= span:
        data = block_bytes(pieces[0][2])
        if len(data) == span:
            return data
    out = bytearray(span)
    for pos, length, block, off in pieces:
        if pos >= span:
            break
        n = min(length, span - pos)
        piece = block_bytes(block)[off : off + n]
        out[pos : pos + len(piece)] = piece
    return bytes(out)


def blocks_of(pieces: Iterable[Piece]) -> list[bytes]:
    """The block IDs the pieces use, in order, each once."""
    return list(dict.fromkeys(p[2] for p in pieces))


def covered(pieces: Iterable[Piece]) -> int:
    """How many bytes the pieces cover."""
    return sum(p[1] for p in pieces)
