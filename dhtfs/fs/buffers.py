"""What ``dhtfs.fs.files`` holds in memory: open files with their write buffers and the
ranges being sealed, and the plaintext cache.

An ``OpenFile`` is one inode's live content while it has open handles (the layers a read
applies are in ``dhtfs.fs.files``). A chunk's unsealed bytes are *ranges* ``[pos,
bytearray]``: sorted by ``pos``, disjoint and not touching (``merge_range`` keeps them so),
each to be stored as a block of its own or packed with others. ``PlaintextCache`` keeps
decrypted block plaintext, LRU, bounded in bytes.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import trio

from dhtfs.meta.extents import Piece


@dataclass(eq=False)
class Sealing:
    """A range being stored, at ``offset`` in a block (several small ranges share one block:
    see ``FileContents.flush``). ``limit``: how many of its bytes still count (a truncate
    during sealing lowers it); ``block``: set once stored."""

    index: int
    pos: int
    data: bytes | bytearray  # a bytearray handed over by the write buffers: never changed
    limit: int
    offset: int = 0
    block: bytes | None = None
    failed: bool = False  # not stored, or its change was dropped: never lands in ``new``


@dataclass(eq=False)
class OpenFile:
    """The live content of one inode while it has open handles (or is being changed)."""

    obj: bytes
    size: int
    chunk_size: int
    base: tuple[int, bytes]
    mtime: int
    handles: int = 0
    dirty: bool = False
    cut: int | None = None
    new: dict[int, list[Piece]] = field(default_factory=dict)
    sealing: deque[Sealing] = field(default_factory=deque)
    buffers: dict[int, list[list[Any]]] = field(default_factory=dict)
    buffered: int = 0
    pending: int = 0
    idle: trio.Event = field(default_factory=trio.Event)
    error: OSError | None = None  # a dropped change: handles fail until all are closed
    clean: tuple[int, int, int] | None = None  # (size, chunk_size, mtime) before the change

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def changing(self) -> bool:
        """True while this file has changes not yet committed."""
        return bool(self.dirty or self.buffers or self.sealing or self.pending)

    def stored_blocks(self) -> set[bytes]:
        """Blocks stored for this file's uncommitted change."""
        out = {p[2] for pieces in self.new.values() for p in pieces}
        out.update(s.block for s in self.sealing if s.block is not None)
        return out


class PlaintextCache:
    """LRU of decrypted block plaintext, bounded in bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, block_id: bytes) -> bytes | None:
        data = self._items.get(block_id)
        if data is not None:
            self._items.move_to_end(block_id)
        return data

    def put(self, block_id: bytes, data: bytes) -> None:
        if len(data) > self.capacity or block_id in self._items:
            return
        self._items[block_id] = data
        self._bytes += len(data)
        while self._bytes > self.capacity:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)


def merge_range(ranges: list[list[Any]], pos: int, data: memoryview) -> tuple[list[Any], int]:
    """Write ``data`` at ``pos`` into the sorted, disjoint, non-adjacent ``ranges`` (in place);
    returns the range now holding it and how many bytes the buffers grew by."""
    end = pos + len(data)
    if ranges:
        last = ranges[-1]
        last_end = last[0] + len(last[1])
        if last_end == pos:  # sequential: extend the last range
            last[1] += data
            return last, len(data)
        if last[0] <= pos and end <= last_end:  # an overwrite inside the last range
            last[1][pos - last[0] : end - last[0]] = data
            return last, 0
    # Find the ranges that overlap or touch [pos, end) by bisection on their starts.
    first = bisect.bisect_right(ranges, pos, key=_range_start)
    if first and ranges[first - 1][0] + len(ranges[first - 1][1]) >= pos:
        first -= 1
    stop = first
    while stop < len(ranges) and ranges[stop][0] <= end:
        stop += 1
    if first == stop:  # touches nothing: a new range
        new = [pos, bytearray(data)]
        ranges.insert(first, new)
        return new, len(data)
    if stop - first == 1:
        held = ranges[first]
        h_pos, h_data = held
        if h_pos <= pos and end <= h_pos + len(h_data):  # an overwrite inside one range
            h_data[pos - h_pos : end - h_pos] = data
            return held, 0
    touching = ranges[first:stop]
    before = sum(len(r[1]) for r in touching)
    start = min(pos, touching[0][0])
    stop_at = max(end, touching[-1][0] + len(touching[-1][1]))
    merged = bytearray(stop_at - start)
    for r_pos, r_data in touching:
        merged[r_pos - start : r_pos - start + len(r_data)] = r_data
    merged[pos - start : end - start] = data
    new = [start, merged]
    ranges[first:stop] = [new]
    return new, len(merged) - before


def _range_start(r: list[Any]) -> int:
    return r[0]


def clip_ranges(ranges: list[list[Any]], limit: int) -> int:
    """Drop buffered bytes at or past ``limit`` (in place); returns how many went."""
    dropped = 0
    while ranges and ranges[-1][0] >= limit:
        dropped += len(ranges.pop()[1])
    if ranges and ranges[-1][0] + len(ranges[-1][1]) > limit:
        last = ranges[-1]
        keep = limit - last[0]
        dropped += len(last[1]) - keep
        del last[1][keep:]
    return dropped


def copy_over(out: bytearray, start: int, end: int, pos: int, data: memoryview) -> None:
    """Copy the part of ``data`` (which sits at ``pos``) that falls in ``[start, end)`` into
    ``out`` (which holds ``[start, end)``)."""
    lo, hi = max(pos, start), min(pos + len(data), end)
    if lo < hi:
        out[lo - start : hi - start] = data[lo - pos : hi - pos]
