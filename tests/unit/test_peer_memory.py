"""A mount remembers its peers' addresses in its namespace; a write that fails there (a full
disk: SQLITE_FULL) is a warning tried again later, never the end of the daemon (it was: the
rejoin task died of it and took the mount down)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from dhtfs.meta.namespace import Namespace
from dhtfs.meta.schema import connect
from dhtfs.runtime.joining import Joiner, NamespacePeers


def test_a_failed_write_of_the_peers_is_a_warning(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    ns = Namespace(connect(tmp_path / "ns.db"))
    peers = NamespacePeers(ns.meta_get, ns.meta_set)
    routing = SimpleNamespace(contacts=lambda: [SimpleNamespace(address=("127.0.0.2", 7420))])
    joiner = Joiner(SimpleNamespace(routing=routing), [], peers)  # type: ignore[arg-type]
    joiner.remember_peers()
    ns.commit()
    assert peers.load() == {("127.0.0.2", 7420)}

    ns.db.execute("PRAGMA query_only = 1")  # every write now fails, as on a full disk
    with pytest.raises(sqlite3.Error):
        ns.meta_set("peers", b"[]")  # the failure is real
    joiner.known.add(("127.0.0.3", 7420))
    with caplog.at_level(logging.WARNING, logger="dhtfs.runtime.joining"):
        joiner.remember_peers()  # no exception
    assert "could not remember peer addresses" in caplog.text
    ns.db.execute("PRAGMA query_only = 0")
    joiner.remember_peers()  # tried again later: it works once the disk has room
    ns.commit()
    assert peers.load() == {("127.0.0.2", 7420), ("127.0.0.3", 7420)}
