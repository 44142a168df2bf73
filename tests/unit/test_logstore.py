"""The headless node's log store: chain links kept, trimming what every member holds, and all
of it across a restart."""

from __future__ import annotations

from pathlib import Path

from dhtfs.oplog.entries import LogEntry, chain_link, chain_start
from dhtfs.oplog.logstore import SqliteLogStore

A, B = bytes([1]) * 32, bytes([2]) * 32


def entries(origin: bytes, n: int) -> list[LogEntry]:
    return [LogEntry(origin, s, b"op %d" % s, b"sig" if s == n else None) for s in range(1, n + 1)]


def test_trim_keeps_vector_and_chain_across_a_restart(tmp_path: Path) -> None:
    store = SqliteLogStore(tmp_path / "oplog.db")
    store.accept(entries(A, 5))
    store.accept(entries(B, 2))
    link = chain_start(A)
    for s in range(1, 6):
        link = chain_link(link, s, b"op %d" % s)
    assert store.head(A) == link
    assert store.trim({A: 3, B: 9}) == 3 + 2  # B's cut is capped at what it holds
    assert store.folded() == {A: 3, B: 2}
    assert [e.seq for e in store.entries_after(A, 0, 10)] == [4, 5]
    store.close()
    again = SqliteLogStore(tmp_path / "oplog.db")
    assert again.vector() == {A: 5, B: 2}
    assert again.head(A) == link and again.head(B) == chain_link(
        chain_link(chain_start(B), 1, b"op 1"), 2, b"op 2")
    assert again.trim({A: 3}) == 0  # nothing more to drop
    again.accept([LogEntry(B, 3, b"op 3", b"sig")])  # the chain goes on after a trim
    assert again.vector()[B] == 3
    again.close()
