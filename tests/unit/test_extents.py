"""Piece lists (dhtfs.meta.extents): overlay and clip against a byte-array model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dhtfs.meta.extents import clip, overlay, overlay_all, split, stitch

SPAN = 64
BLOCKS = {bytes([i]) * 32: bytes((i * 7 + j) % 251 + 1 for j in range(SPAN)) for i in range(5)}


def well_formed(pieces: list, span: int) -> bool:
    ends = [p[0] + p[1] for p in pieces]
    return all(p[1] > 0 and p[0] >= 0 for p in pieces) and all(
        ends[i] <= pieces[i + 1][0] for i in range(len(pieces) - 1)
    ) and (not ends or ends[-1] <= span)


step = st.one_of(
    st.tuples(
        st.just("put"),
        st.integers(0, SPAN - 1),
        st.integers(1, SPAN),
        st.sampled_from(sorted(BLOCKS)),
        st.integers(0, SPAN - 1),
    ),
    st.tuples(st.just("clip"), st.integers(0, SPAN)),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, max_size=30))
def test_overlay_and_clip_match_a_byte_model(steps: list) -> None:
    pieces: list = []
    model = bytearray(SPAN)
    for s in steps:
        if s[0] == "put":
            _, pos, length, block, boff = s
            length = min(length, SPAN - pos, SPAN - boff)
            if length <= 0:
                continue
            pieces = overlay(pieces, (pos, length, block, boff))
            model[pos : pos + length] = BLOCKS[block][boff : boff + length]
        else:
            pieces = clip(pieces, s[1])
            model[s[1] :] = bytes(SPAN - s[1])
        assert well_formed(pieces, SPAN)
        assert stitch(pieces, SPAN, BLOCKS.__getitem__) == bytes(model)


def test_a_block_shorter_than_its_piece_reads_zeros_past_its_end() -> None:
    short = {b"s" * 32: b"abc"}
    assert stitch([(2, 6, b"s" * 32, 0)], 10, short.__getitem__) == b"\0\0abc\0\0\0\0\0"


def test_split_cuts_a_file_extent_at_chunk_boundaries() -> None:
    block = b"b" * 32
    assert list(split(10, 30, block, 5, 16)) == [
        (0, (10, 6, block, 5)),
        (1, (0, 16, block, 11)),
        (2, (0, 8, block, 27)),
    ]


@settings(max_examples=300, deadline=None)
@given(
    old=st.lists(st.tuples(st.integers(0, SPAN - 1), st.integers(1, 20)), max_size=8),
    new=st.lists(st.tuples(st.integers(0, SPAN - 1), st.integers(1, 20)), max_size=8),
    sort_new=st.booleans(),
)
def test_overlay_all_is_overlay_in_order(old: list, new: list, sort_new: bool) -> None:
    """The one-sweep path (sorted, disjoint new pieces) and the general one agree with laying
    the pieces over one by one."""
    blocks = sorted(BLOCKS)
    base: list = []
    for i, (pos, length) in enumerate(old):
        base = overlay(base, (pos, min(length, SPAN - pos), blocks[i % 5], 0))
    pieces = []
    for i, (pos, length) in enumerate(new):
        pieces.append((pos, min(length, SPAN - pos), blocks[(i + 2) % 5], 1))
    if sort_new:  # make them disjoint and sorted: the fast path
        pieces = clip_disjoint(sorted(pieces))
    expected = base
    for piece in pieces:
        expected = overlay(expected, piece)
    got = overlay_all(base, pieces)
    assert well_formed(got, SPAN + 1)
    assert stitch(got, SPAN, BLOCKS.__getitem__) == stitch(expected, SPAN, BLOCKS.__getitem__)


def clip_disjoint(pieces: list) -> list:
    out: list = []
    end = 0
    for pos, length, block, off in pieces:
        if pos < end:
            continue
        out.append((pos, length, block, off))
        end = pos + length
    return out
