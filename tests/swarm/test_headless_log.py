"""Headless storage nodes keep the replicated op log: a returning mount catches up from one
when no other mount is up; and the headless log, too, drops what every member holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhtfs.base.config import DEFAULT_PORT
from dhtfs.trust import pki
from testkit.mounting import Mount
from testkit.nodeproc import Swarm
from testkit.observe import control, listing, member_options, wait_converged
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]


def test_returning_mount_catches_up_from_a_headless_node(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    cert, key, node_id = pki.issue_node_cert(ca, "storage", tmp_path / "storage")
    headless = Swarm(tmp_path / "headless")
    try:
        h = headless.start(pki.Identity(ca / "ca.crt", cert, key, node_id), "127.0.0.30", [],
                           extra=["--fold-interval", "1"])
        Swarm.wait([h])
        seeds = f"bootstrap={h.address}"
        a = Mount(tmp_path / "a-mnt", tmp_path / "a-state", options=[
            *member_options(ca, "a", tmp_path / "a"), "listen=127.0.0.31:0", seeds,
            "fold_interval=1"]).start()
        b = Mount(tmp_path / "b-mnt", tmp_path / "b-state", options=[
            *member_options(ca, "b", tmp_path / "b"), "listen=127.0.0.32:0", seeds,
            "fold_interval=1"])
        try:
            b.start()
            for i in range(20):
                (a.mountpoint / f"early-{i}").write_bytes(b"held by all %d\n" % i)
            wait_converged([a.state, b.state])
            # Everyone holds the early ops: the storage node drops them from its log.
            wait_until(lambda: control(h.state, "oplog")["trimmed"], "the headless log trim")
            assert b.stop() == 0  # b leaves ...
            for i in range(30):
                (a.mountpoint / f"note-{i}").write_bytes(f"note {i}\n".encode())
            (a.mountpoint / "dir").mkdir()
            (a.mountpoint / "note-0").rename(a.mountpoint / "dir" / "moved")
            expected = listing(a.mountpoint)
            a_vector = control(a.state, "oplog")["vector"]
            wait_until(lambda: control(h.state, "oplog")["vector"] == a_vector,
                       "the headless node to hold a's whole log")
            # Its small blocks were placed too (they ride along their provider records).
            wait_until(lambda: control(a.state, "status")["placed"] >= 50, "placement", 90)
        finally:
            assert a.stop() == 0
        b.start()  # ... and comes back while a is away: the storage node alone catches it up
        try:
            assert listing(b.mountpoint) == expected
            assert (b.mountpoint / "dir" / "moved").read_bytes() == b"note 0\n"
            kept = control(h.state, "oplog")
            assert kept["entries"] < sum(s for _, s in kept["vector"])  # it did not keep all
        finally:
            b.close()
    finally:
        headless.close()


def test_a_headless_node_takes_a_bootstrap_address_without_a_port(tmp_path: Path) -> None:
    """``bootstrap=HOST`` means HOST at the default port for a headless node as for a mount
    (it used to be refused as a config error): the node starts, goes on without peers when
    nobody answers there, and stops cleanly."""
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    cert, key, node_id = pki.issue_node_cert(ca, "storage", tmp_path / "storage")
    headless = Swarm(tmp_path / "headless")
    try:
        h = headless.start(pki.Identity(ca / "ca.crt", cert, key, node_id), "127.0.0.33",
                           ["127.0.0.34"])
        Swarm.wait([h])
        assert control(h.state, "status")["peers"] == 0
        assert f"127.0.0.34:{DEFAULT_PORT}" in h.log()  # it tried the default port
        assert headless.stop(h) == 0
    finally:
        headless.close()
