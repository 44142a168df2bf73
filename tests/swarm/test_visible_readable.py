"""Visibility implies readability: a file version a node shows can be read there (real
processes on 127.0.0.x).

Two storage nodes (``dhtfs swarm up``) and one client-only mount (``-o storage=false``). The
client writes small files while its block placement is held back by a test switch on its
control socket (``faults``: ``{"hold": ["PUT_CHUNK", "ADD_PROVIDER"]}``: its own calls of
those methods wait, within their deadlines, until the hold is lifted), so the race of issue 16
(the content op on a storage node before any copy of its blocks can be fetched there) is
forced, not hoped for. A storage mount reads each file as soon as its name appears:

- the client still answers: the read asks the version's writer over the connection the
  client opened (nobody routes to a client) and gets the exact bytes;
- the client answers nothing (``mute``): the read waits (``reads.waiting`` in the status)
  until the hold is lifted and the blocks land, then returns the exact bytes;
- the client is SIGKILLed before placing anything (no copy anywhere): the read fails with
  EIO once ``read_deadline`` has passed, and does not hang.

And: a client writing without pause still places its blocks as it goes (a storage node's
small blocks wait for a pause); a read that meets a block file still being filled here reads
the block from the swarm instead of failing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testkit import swarmctl
from testkit.mounting import Mount
from testkit.observe import control, member_options
from testkit.wait import wait_until
from tests.swarm.test_read_path import READER

HOLD = ["PUT_CHUNK", "ADD_PROVIDER"]
SIZES = {"tiny": 3000, "small": 100 * 1024}
"""A block small enough to travel inline (FIND_VALUE, provider records), and one that is
fetched with GET_CHUNK; both below the size replication streams at once."""
BOUND_DEADLINE = 4.0
"""``read_deadline`` of the swarm in the bound test."""

READ_TIMEOUT = 120.0
"""The subprocess reading a file is killed past this (the test then fails, never hangs)."""


@dataclass
class Mixed:
    root: Path
    storage: list[swarmctl.NodeInfo]
    client: Mount


@contextlib.contextmanager
def mixed_swarm(tmp_path: Path, options: str) -> Iterator[Mixed]:
    """Two storage nodes (swarm ``options``) and a client-only mount joined to both; always
    torn down."""
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 2, options) as nodes:
        seeds = "bootstrap=" + "+".join(n.address for n in nodes)
        client = Mount(tmp_path / "client-mnt", tmp_path / "client-state", options=[
            *member_options(root / "ca", "client", tmp_path / "client"),
            "listen=127.0.0.70:0", seeds, "storage=false"])
        try:
            client.start()
            wait_until(lambda: control(client.state, "status")["peers"] >= 2,
                       "the client to know both storage nodes")
            yield Mixed(root, nodes, client)
        finally:
            client.close()


def start_read(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", READER, str(path)],
                            stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=READ_TIMEOUT)
    finally:
        proc.kill()
    got = json.loads(out)
    print(f"read: {got}")  # shown when a test fails
    return got


def holds(state: Path, block: str) -> bool:
    return (state / "chunks" / block[:2] / block[2:]).is_file()


def appeared(path: Path, size: int) -> bool:
    return path.exists() and path.stat().st_size == size


def waiting_reads(state: Path) -> int:
    return int(control(state, "status")["reads"].get("waiting", 0))


def write_held(s: Mixed, names: dict[str, int]) -> dict[str, bytes]:
    """Write each file on the client (write + close, no fsync) with its placement held."""
    contents = {}
    for name, size in names.items():
        data = os.urandom(size)
        (s.client.mountpoint / name).write_bytes(data)
        contents[name] = data
    return contents


def slow(fn: Any) -> Any:
    return pytest.mark.mount(pytest.mark.slow(fn))


@slow
@pytest.mark.parametrize("writer", ["answers", "silent"])
def test_a_name_that_appears_reads_its_exact_bytes(tmp_path: Path, writer: str) -> None:
    """The client's placement is held back (and, ``silent``, it answers no request): a
    storage mount reads each new small file the moment its name appears there, and gets
    exactly the bytes written, never EIO (``silent``: once the hold is lifted, within the
    read deadline)."""
    with mixed_swarm(tmp_path, "read_deadline=30") as s:
        faults: dict[str, Any] = {"hold": HOLD, "mute": writer == "silent"}
        assert control(s.client.state, "faults", faults)["hold"] == sorted(HOLD)
        contents = write_held(s, SIZES)
        reader = s.storage[0]
        procs = {}
        for name, data in contents.items():
            f, size = reader.mountpoint / name, len(data)
            wait_until(lambda f=f, n=size: appeared(f, n), f"{name} on a storage node")
            procs[name] = start_read(f)
        blocks = {name: json.loads(os.getxattr(reader.mountpoint / name, "user.dhtfs.chunks"))
                  for name in contents}
        # Nothing was placed: the client holds the only copy of every block.
        assert not [b for bs in blocks.values() for b in bs
                    if any(holds(n.state, b) for n in s.storage)]
        if writer == "silent":
            # Both reads are waiting for a copy (or, unfixed, have failed already).
            wait_until(lambda: waiting_reads(reader.state) >= len(procs)
                       or all(p.poll() is not None for p in procs.values()),
                       "the reads to wait for a copy")
        control(s.client.state, "faults", {"hold": [], "mute": False})
        for name, proc in procs.items():
            got = result(proc)
            assert got["errno"] is None, f"{name}: {got}"
            assert got["sha256"] == hashlib.sha256(contents[name]).hexdigest(), name
        assert waiting_reads(reader.state) == 0


@slow
def test_a_version_whose_blocks_are_nowhere_fails_with_eio_by_the_read_deadline(
    tmp_path: Path,
) -> None:
    """The client writes a small file with its placement held back, and is SIGKILLed once
    the name shows on a storage node: no copy of the block exists anywhere, so a read there
    fails with EIO, after waiting out ``read_deadline`` (a small one here), and never hangs;
    the node reads other files meanwhile and after."""
    with mixed_swarm(tmp_path, f"read_deadline={BOUND_DEADLINE:g}") as s:
        control(s.client.state, "faults", {"hold": HOLD})
        data = write_held(s, {"lost": SIZES["tiny"]})["lost"]
        reader = s.storage[0]
        f = reader.mountpoint / "lost"
        wait_until(lambda: appeared(f, len(data)), "the name on a storage node")
        (block,) = json.loads(os.getxattr(f, "user.dhtfs.chunks"))
        s.client.kill()
        assert not any(holds(n.state, block) for n in s.storage)
        other = os.urandom(5000)
        (s.storage[1].mountpoint / "other").write_bytes(other)
        got = result(start_read(f))
        assert got["errno"] == errno.EIO, got
        assert got["elapsed"] < 3 * BOUND_DEADLINE, got
        g = reader.mountpoint / "other"
        wait_until(lambda: appeared(g, len(other)), "another file on the reader")
        assert g.read_bytes() == other
        assert waiting_reads(reader.state) == 0
        assert "no copy" in reader.log.read_text(errors="replace")


@slow
def test_a_client_writing_without_pause_places_its_blocks_as_it_goes(tmp_path: Path) -> None:
    """A client-only mount that never pauses writing (a small file every few ms: a storage
    node would place such blocks only once writing pauses) still gets its first file's block
    onto the storage nodes while it goes on writing, so versions it publishes during a long
    copy are readable on nodes it has no connection with."""
    with mixed_swarm(tmp_path, "read_deadline=30") as s:
        d = s.client.mountpoint / "copy"
        d.mkdir()
        first = d / "f0"
        first.write_bytes(os.urandom(SIZES["tiny"]))
        (block,) = json.loads(os.getxattr(first, "user.dhtfs.chunks"))
        written = 1
        end = time.monotonic() + 20.0
        while time.monotonic() < end and not all(holds(n.state, block) for n in s.storage):
            (d / f"f{written}").write_bytes(os.urandom(SIZES["tiny"]))
            written += 1
        print(f"{written} files written before the first one's block was placed")
        assert all(holds(n.state, block) for n in s.storage), written


@slow
def test_a_block_file_still_being_filled_here_reads_from_the_swarm(tmp_path: Path) -> None:
    """A block file is created under its final name, then sealed and filled: a read on the
    node meanwhile (a replica's copy arriving as its version shows) finds a short file. That
    read returns the right bytes from the swarm, not EIO, and the file is not dropped as
    corrupt: it ends up whole. (The moment is made by cutting the file to zero bytes, as the
    store leaves it between creating and filling it.)"""
    with mixed_swarm(tmp_path, "read_deadline=30") as s:
        writer, reader = s.storage
        data = os.urandom(SIZES["small"])
        with open(writer.mountpoint / "f", "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # on both storage nodes
        f = reader.mountpoint / "f"
        wait_until(lambda: appeared(f, len(data)), "f on the other storage node")
        (block,) = json.loads(os.getxattr(f, "user.dhtfs.chunks"))
        path = reader.state / "chunks" / block[:2] / block[2:]
        size = path.stat().st_size
        os.truncate(path, 0)
        got = result(start_read(f))
        assert got["errno"] is None, got
        assert got["sha256"] == hashlib.sha256(data).hexdigest()
        wait_until(lambda: path.is_file() and path.stat().st_size == size,
                   "the block file to be whole again")
