"""The README's way into a swarm: a zero-config mount is a private swarm; a second node joins
with a certificate issued from that swarm's CA; bad swarm options are one-line errors."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from dhtfs.trust import pki
from testkit.env import MOUNT, child_env
from testkit.mounting import Mount
from testkit.observe import control, member_options, wait_converged
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]

ENV = child_env()


def test_second_node_joins_a_zero_config_mount(tmp_path: Path) -> None:
    first = Mount(tmp_path / "one", tmp_path / "one-state", ["listen=127.0.0.20:0"]).start()
    try:
        swarm_dir = first.state / "swarm"
        for name in ("ca.crt", "ca.key", "node.crt", "node.key"):
            assert (swarm_dir / name).stat().st_mode & 0o077 == 0  # nothing for other users
        (first.mountpoint / "hello").write_bytes(b"from the first machine\n")
        address = control(first.state, "status")["listen"]
        second = Mount(tmp_path / "two", tmp_path / "two-state", [
            *member_options(swarm_dir, "laptop", tmp_path / "laptop"),
            "listen=127.0.0.21:0", f"bootstrap={address}",
        ]).start()
        try:
            # Mounted once caught up: the tree is there at once.
            assert (second.mountpoint / "hello").read_bytes() == b"from the first machine\n"
            (second.mountpoint / "reply").write_bytes(b"hi")
            wait_until(lambda: (first.mountpoint / "reply").read_bytes() == b"hi",
                       "the reply on the first machine")
        finally:
            second.close()
    finally:
        first.close()


@pytest.mark.parametrize(("options", "message"), [
    ("ca=/nonexistent/ca.crt", "ca, cert and cert_key together"),
    ("listen=not-an-address", "listen='not-an-address': expected HOST:PORT"),
    ("bootstrap=somehost:port", "bootstrap='somehost:port': port must be a number"),
    ("fold_interval=0", "fold_interval=0: must be more than 0"),
])
def test_bad_swarm_options_are_one_line_errors(tmp_path: Path, options: str,
                                               message: str) -> None:
    (tmp_path / "mnt").mkdir()
    res = subprocess.run([MOUNT, str(tmp_path / "mnt"), "-o", f"state={tmp_path / 's'},{options}"],
                         env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_taken_listen_address_is_a_one_line_error(tmp_path: Path) -> None:
    first = Mount(tmp_path / "one", tmp_path / "one-state", ["listen=127.0.0.22:0"]).start()
    try:
        address = control(first.state, "status")["listen"]
        (tmp_path / "mnt").mkdir()
        res = subprocess.run(
            [MOUNT, str(tmp_path / "mnt"), "-o", f"state={tmp_path / 's'},listen={address}"],
            env=ENV, capture_output=True, text=True, timeout=60)
        assert res.returncode == 1
        assert f"cannot listen on {address}: Address already in use" in res.stderr
    finally:
        first.close()


def test_a_node_without_bootstrap_rejoins_through_remembered_peers(tmp_path: Path) -> None:
    """The first node of a swarm has no bootstrap address; after a restart it finds the
    others again through the peers it remembered, and catches up."""
    first = Mount(tmp_path / "one", tmp_path / "one-state", ["listen=127.0.0.23:0"]).start()
    swarm_dir = first.state / "swarm"
    address = control(first.state, "status")["listen"]
    second = Mount(tmp_path / "two", tmp_path / "two-state", [
        *member_options(swarm_dir, "other", tmp_path / "other"),
        "listen=127.0.0.24:0", f"bootstrap={address}",
    ]).start()
    try:
        assert first.stop() == 0  # remembers its peers on the way out
        (second.mountpoint / "while-away").write_bytes(b"made while the first was down")
        first.start()  # no bootstrap option
        assert (first.mountpoint / "while-away").read_bytes() == b"made while the first was down"
    finally:
        second.close()
        first.close()


def test_a_node_that_could_not_join_works_alone_then_merges(tmp_path: Path) -> None:
    """Mounted while its bootstrap address is down: it mounts anyway (no hang), keeps its
    changes unfolded (it belongs to a swarm it has not met), joins when the address comes
    up, and the two trees merge."""
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    with socket.socket() as probe:  # a port nothing listens on, for now
        probe.bind(("127.0.0.25", 0))
        port = probe.getsockname()[1]
    lonely = Mount(tmp_path / "lonely", tmp_path / "lonely-state", [
        *member_options(ca, "lonely", tmp_path / "l"), "listen=127.0.0.26:0",
        f"bootstrap=127.0.0.25:{port}", "fold_interval=0.2"]).start()
    seed = None
    try:
        (lonely.mountpoint / "made-alone").write_bytes(b"while the swarm was away")
        wait_until(lambda: control(lonely.state, "status")["ops"] >= 2, "the ops")
        # Asserting that something does not happen takes a wait: two anti-entropy rounds at
        # least (each 0.5-1.5 s; a fold is tried in every one).
        time.sleep(3.0)
        assert control(lonely.state, "oplog")["unfolded"] >= 2
        seed = Mount(tmp_path / "seed", tmp_path / "seed-state", [
            *member_options(ca, "seed", tmp_path / "s"), f"listen=127.0.0.25:{port}",
            "fold_interval=0.2"]).start()
        (seed.mountpoint / "made-by-seed").write_bytes(b"seed")
        for m in (lonely, seed):  # the lonely node rejoins by itself within seconds
            wait_until(lambda m=m: (m.mountpoint / "made-alone").exists()
                       and (m.mountpoint / "made-by-seed").exists(), "both trees merged", 60)
        wait_converged([lonely.state, seed.state])
    finally:
        if seed is not None:
            seed.close()
        lonely.close()
