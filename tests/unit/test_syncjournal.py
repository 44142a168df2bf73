"""The fsync journal's file format: laps, torn records, clearing."""

from __future__ import annotations

from pathlib import Path

from dhtfs.store.syncjournal import BLOCK, OP, SyncJournal


def test_a_lap_reads_back_until_a_torn_record_or_an_older_lap(tmp_path: Path) -> None:
    path = tmp_path / "sync.journal"
    j = SyncJournal(path)
    j.append([(BLOCK, b"b" * 40), (OP, b"op-1")])
    j.append([(OP, b"op-2")])
    assert SyncJournal(path).records() == [(BLOCK, b"b" * 40), (OP, b"op-1"), (OP, b"op-2")]
    data = path.read_bytes()
    for cut in range(len(data)):  # a torn write: only whole records count
        path.write_bytes(data[:cut])
        got = SyncJournal(path).records()
        assert got == [(BLOCK, b"b" * 40), (OP, b"op-1"), (OP, b"op-2")][: len(got)]
    path.write_bytes(data)
    j.reset()  # the next lap writes over the old one: its rest is not read as part of it
    j.append([(OP, b"x")])
    assert SyncJournal(path).records() == [(OP, b"x")]
    j.close()


def test_clear_reads_as_empty_and_laps_keep_growing(tmp_path: Path) -> None:
    path = tmp_path / "sync.journal"
    j = SyncJournal(path)
    j.append([(OP, b"one")])
    lap = j.lap
    j.clear()
    j.close()
    again = SyncJournal(path)
    assert again.records() == []
    assert again.lap > lap  # old records past the new lap's end are never taken for it
    again.append([(OP, b"two")])
    assert SyncJournal(path).records() == [(OP, b"two")]
    again.close()
