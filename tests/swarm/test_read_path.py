"""Tier 5: the read path against slow, silent, lying and vanished providers (real processes
on 127.0.0.x).

Two storage nodes (``dhtfs swarm up``, ``replicas=2``) hold every block; a client mount
(``storage=false``) writes and fsyncs a file, another client mount, which holds nothing,
reads it cold. The writer being a client, its node ID (the read's hint) is in nobody's
routing table, so every read goes through the lookup and the RTT-ranked, hedged fetch
(``BlockNode.get_block_detailed`` / ``_fetch``). Blocks are 1 MiB, too large to travel inline,
so each is fetched with GET_CHUNK from a provider. The faults are the transport's test
switches, set over the control socket (``faults``: ``delay``, ``mute``, ``tamper``), or
signals to a storage node's process.

Ranking is made deterministic by the reader's RTT EWMAs: a provider answering ``delay``
late is polled (bucket refreshes: lookups through both providers) until the reader ranks it
behind the other, so the faulty provider is the one tried first in tests b and c.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from dhtfs.base.config import Config
from dhtfs.base.errors import CallTimeout
from dhtfs.net import rpc
from dhtfs.net.network import Contact, Message
from dhtfs.net.transport import Transport
from dhtfs.trust import pki
from testkit import swarmctl
from testkit.mounting import Mount
from testkit.observe import control, member_options
from testkit.wait import wait_until

F = TypeVar("F", bound=Callable[..., Any])
MIB = 1 << 20
DELAY = 0.4
"""Seconds the slow provider waits before each answer."""
READ_DEADLINE = Config().read_deadline
"""A read that no provider serves fails with EIO within this (``-o read_deadline``)."""
SHORT_DEADLINE = 5.0
"""The reader's ``read_deadline`` where no copy is left (test d)."""
READ_TIMEOUT = 3 * READ_DEADLINE
"""The subprocess reading a file is killed past this (the test then fails, never hangs)."""

READER = r"""
import hashlib, json, sys, time
began = time.monotonic()
try:
    with open(sys.argv[1], "rb") as fh:
        out = {"sha256": hashlib.sha256(fh.read()).hexdigest(), "errno": None}
except OSError as exc:
    out = {"sha256": None, "errno": exc.errno}
out["elapsed"] = time.monotonic() - began
print(json.dumps(out))
"""


def swarm_test(fn: F) -> F:
    """The marks of the tests on real processes (as the other swarm tests)."""
    return pytest.mark.mount(pytest.mark.slow(fn))


@dataclass
class ReadSwarm:
    root: Path
    storage: list[swarmctl.NodeInfo]
    writer: Mount
    reader: Mount


@contextlib.contextmanager
def read_swarm(tmp_path: Path, reader_options: tuple[str, ...] = ()) -> Iterator[ReadSwarm]:
    """Two storage nodes (replicas=2) and two client mounts (writer, reader; the reader
    with ``reader_options`` too) joined to them; always torn down (storage nodes continued
    and their faults cleared first)."""
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 2, "replicas=2") as nodes:
        seeds = "bootstrap=" + "+".join(n.address for n in nodes)
        clients = [
            Mount(tmp_path / f"{name}-mnt", tmp_path / f"{name}-state", options=[
                *member_options(root / "ca", name, tmp_path / name),
                f"listen=127.0.0.{60 + i}:0", seeds, "storage=false", "replicas=2",
                *(reader_options if name == "reader" else ())])
            for i, name in enumerate(("writer", "reader"))
        ]
        try:
            for client in clients:
                client.start()
            for client in clients:
                wait_until(lambda c=client: control(c.state, "status")["peers"] >= 2,
                           f"{client.mountpoint.name} to know both storage nodes")
            yield ReadSwarm(root, nodes, *clients)
        finally:
            for node in nodes:
                if node.pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(node.pid, signal.SIGCONT)
                with contextlib.suppress(Exception):
                    control(node.state, "faults", {"delay": 0, "mute": False, "tamper": False})
            for client in clients:
                client.close()


def holds(state: Path, block: str) -> bool:
    return (state / "chunks" / block[:2] / block[2:]).is_file()


def blocks_of(path: Path) -> list[str]:
    return sorted({e[2] for e in json.loads(os.getxattr(path, "user.dhtfs.extents"))})


def shared_file(s: ReadSwarm, name: str, size: int) -> tuple[Path, str, list[str]]:
    """A file of ``size`` random bytes written and fsynced by the writer (so on both storage
    nodes), once the reader sees it whole: its path on the reader, sha256, blocks."""
    data = os.urandom(size)
    path = s.writer.mountpoint / name
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    blocks = blocks_of(path)
    assert len(blocks) == size // MIB
    for block in blocks:
        assert all(holds(n.state, block) for n in s.storage), block[:12]
        assert not holds(s.reader.state, block), block[:12]
    f = s.reader.mountpoint / name
    # A client pulls the ops it lacks (nobody pushes to it): wait for this version.
    wait_until(lambda: f.exists() and f.stat().st_size == size, f"{name} on the reader")
    return f, hashlib.sha256(data).hexdigest(), blocks


def timed_read(path: Path) -> dict[str, Any]:
    """Read ``path`` whole in a subprocess: {"sha256" | "errno", "elapsed" (seconds the
    open and read took)}; killed (test failure) past ``READ_TIMEOUT``."""
    res = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True,
                         text=True, timeout=READ_TIMEOUT, check=True)
    out = json.loads(res.stdout)
    print(f"read {path}: {out}")  # shown when a test fails
    return out


def peer_stats(state: Path) -> dict[str, tuple[float | None, int]]:
    """The node's routing contacts: node ID (hex) → (RTT EWMA in seconds, penalties)."""
    return {bytes(p[0]).hex(): (p[3], p[4]) for p in control(state, "peers")["peers"]}


def reads(state: Path) -> dict[str, Any]:
    return control(state, "status")["reads"]


def rank_behind(reader: Mount, slow: str, fast: str) -> dict[str, tuple[float | None, int]]:
    """Wait until ``reader`` ranks ``slow`` (answering ``DELAY`` late) behind ``fast`` by
    RTT: refresh its buckets (lookups that ask both) until its EWMA of ``slow`` is over half
    the delay and that of ``fast`` under a quarter. Returns the stats seen then."""
    seen: dict[str, tuple[float | None, int]] = {}

    def ranked() -> bool:
        nonlocal seen
        control(reader.state, "refresh")
        seen = peer_stats(reader.state)
        slow_rtt, fast_rtt = seen.get(slow, (None, 0))[0], seen.get(fast, (None, 0))[0]
        return (slow_rtt is not None and fast_rtt is not None
                and slow_rtt >= DELAY / 2 and fast_rtt < DELAY / 4)

    wait_until(ranked, "the reader's RTT ranking to see the delay", 90)
    return seen


@swarm_test
def test_reads_come_from_the_faster_provider(tmp_path: Path) -> None:
    """a. Both providers hold every block; one answers ``DELAY`` late. Once the reader's RTT
    EWMAs show it, a cold read takes every block from the fast provider."""
    with read_swarm(tmp_path) as s:
        f, digest, blocks = shared_file(s, "f", 6 * MIB)
        slow, fast = s.storage
        assert control(slow.state, "faults", {"delay": DELAY}) == {
            "delay": DELAY, "tamper": False, "mute": False, "hold": []}
        rank_behind(s.reader, slow.node_id, fast.node_id)
        got = timed_read(f)
        assert got["sha256"] == digest
        r = reads(s.reader.state)
        assert r["remote"] == len(blocks) and r["local"] == 0
        assert r["by_source"] == {fast.node_id: len(blocks)}


@swarm_test
@pytest.mark.parametrize("silence", ["mute", "sigstop"])
def test_a_silent_provider_is_hedged_past(tmp_path: Path, silence: str) -> None:
    """b. The provider the reader ranks first stops answering (muted: requests read, never
    answered; or SIGSTOPped): the read still returns the right bytes, every block served by
    the other provider, well before the fetch deadline (no wait for the silent one's
    timeout)."""
    with read_swarm(tmp_path) as s:
        f, digest, blocks = shared_file(s, "f", 4 * MIB)
        silent, honest = s.storage
        # The honest provider is made the slower one, so the silent one ranks first.
        control(honest.state, "faults", {"delay": DELAY})
        rank_behind(s.reader, honest.node_id, silent.node_id)
        if silence == "mute":
            assert control(silent.state, "faults", {"mute": True})["mute"] is True
        else:
            assert silent.pid is not None
            os.kill(silent.pid, signal.SIGSTOP)
        got = timed_read(f)
        assert got["sha256"] == digest
        assert got["elapsed"] < READ_DEADLINE / 2, got
        r = reads(s.reader.state)
        assert r["by_source"] == {honest.node_id: len(blocks)}


@swarm_test
def test_tampered_bytes_are_refused_and_their_provider_penalized(tmp_path: Path) -> None:
    """c. The provider the reader ranks first serves altered bytes: the read still returns
    what was written (SHA-256 verified), every block served by the honest provider, and the
    tamperer is penalized in the reader's routing statistics (control ``peers``)."""
    with read_swarm(tmp_path) as s:
        f, digest, blocks = shared_file(s, "f", 4 * MIB)
        tamperer, honest = s.storage
        control(honest.state, "faults", {"delay": DELAY})
        before = rank_behind(s.reader, honest.node_id, tamperer.node_id)
        assert before[tamperer.node_id][1] == before[honest.node_id][1] == 0
        assert control(tamperer.state, "faults", {"tamper": True})["tamper"] is True
        got = timed_read(f)
        assert got["sha256"] == digest
        r = reads(s.reader.state)
        assert r["by_source"] == {honest.node_id: len(blocks)}
        after = peer_stats(s.reader.state)
        assert after[tamperer.node_id][1] >= 1
        assert after[honest.node_id][1] == 0
        assert "served bytes that do not hash" in s.reader.log_text()
        # The tamperer's own copies are intact: only its answers lie.
        assert all(holds(tamperer.state, b) for b in blocks)


@swarm_test
@pytest.mark.parametrize("how", ["sigkill", "mute"])
def test_no_provider_left_fails_with_eio_in_bounded_time(tmp_path: Path, how: str) -> None:
    """d. Every storage node SIGKILLed (or muted): a cold read on the client fails with EIO
    by the read deadline (``-o read_deadline``, a short one here: a read that finds no copy
    waits for one until then), and never hangs (the read runs in a subprocess under a
    timeout)."""
    with read_swarm(tmp_path, (f"read_deadline={SHORT_DEADLINE:g}",)) as s:
        f, _, _ = shared_file(s, "f", 2 * MIB)
        for node in s.storage:
            if how == "sigkill":
                swarmctl.kill(s.root, node.name)
            else:
                control(node.state, "faults", {"mute": True})
        got = timed_read(f)
        assert got["errno"] == errno.EIO, got
        assert got["elapsed"] < 2 * SHORT_DEADLINE, got
        assert reads(s.reader.state)["by_source"] == {}


@swarm_test
def test_slow_providers_are_slow_not_missing(tmp_path: Path) -> None:
    """e. Both providers answer every request ``DELAY`` late (past the lookup's soft
    timeouts): the read is slower, and still succeeds (a swarm of slow peers is not empty)."""
    with read_swarm(tmp_path) as s:
        f, digest, blocks = shared_file(s, "f", 2 * MIB)
        for node in s.storage:
            control(node.state, "faults", {"delay": DELAY})
        got = timed_read(f)
        assert got["sha256"] == digest, got
        assert sum(reads(s.reader.state)["by_source"].values()) == len(blocks)


@swarm_test
def test_a_silent_hinted_writer_costs_a_hedge_not_a_timeout(tmp_path: Path) -> None:
    """f. The file is written on a storage node, so a read asks that writer first (the
    hint); the writer then goes silent: the read still succeeds from the other holder, well
    before the read deadline (the lookup path starts after the writer's hedge delay)."""
    with read_swarm(tmp_path) as s:
        writer, other = s.storage
        data = os.urandom(3 * MIB)
        with open(writer.mountpoint / "f", "wb") as fh:
            fh.write(data)
            os.fsync(fh.fileno())
        f = s.reader.mountpoint / "f"
        wait_until(lambda: f.exists() and f.stat().st_size == len(data), "f on the reader")
        control(writer.state, "faults", {"mute": True})
        got = timed_read(f)
        assert got["sha256"] == hashlib.sha256(data).hexdigest(), got
        assert got["elapsed"] < READ_DEADLINE / 2, got
        assert reads(s.reader.state)["by_source"] == {other.node_id: 3}


# -- the switches themselves, in process (no mount) ---------------------------------------------


async def test_fault_switches_act_on_answers_only_while_on(tmp_path: Path) -> None:
    """``Transport.set_faults``: off by default; ``mute`` leaves requests unanswered (the
    caller times out) and the same connection answers again once it is off; ``delay`` holds
    every answer back (inline ones too, the connection reading on meanwhile); ``tamper``
    alters GET_CHUNK's ``data`` (same length, other bytes) and nothing else."""
    pki.init_ca(tmp_path / "ca")

    def identity(name: str) -> pki.Identity:
        cert, key, node_id = pki.issue_node_cert(tmp_path / "ca", name, tmp_path)
        return pki.Identity(tmp_path / "ca" / pki.CA_CERT_NAME, cert, key, node_id)

    async def handler(caller: Contact, method: str, args: Message) -> Message:
        return {"data": args["data"]} if method == rpc.GET_BLOCK else {"method": method}

    server = Transport(identity("server"), "127.0.0.1", 0, handler=handler)
    client = Transport(identity("client"), "127.0.0.1", 0, handler=handler)
    data = os.urandom(4096)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        await nursery.start(client.serve)
        peer = server.local
        assert server.set_faults() == {"delay": 0.0, "tamper": False, "mute": False,
                                     "hold": []}
        assert await client.call(peer, rpc.PING, {}, timeout=10) == {"method": rpc.PING}
        server.set_faults(mute=True)
        for method, args in ((rpc.PING, {}), (rpc.GET_BLOCK, {"data": data})):
            with pytest.raises(CallTimeout):
                await client.call(peer, method, args, timeout=0.3)
        server.set_faults(mute=False, delay=0.3)
        for method, args in ((rpc.PING, {}), (rpc.GET_BLOCK, {"data": data})):
            with pytest.raises(CallTimeout):  # the answer comes, but after the deadline
                await client.call(peer, method, args, timeout=0.05)
            began = trio.current_time()
            assert await client.call(peer, method, args, timeout=10)
            assert trio.current_time() - began >= 0.3
        server.set_faults(delay=0, tamper=True)
        tampered = await client.call(peer, rpc.GET_BLOCK, {"data": data}, timeout=10)
        assert len(tampered["data"]) == len(data) and tampered["data"] != data
        assert await client.call(peer, rpc.PING, {}, timeout=10) == {"method": rpc.PING}
        assert server.set_faults(tamper=False) == {"delay": 0.0, "tamper": False, "mute": False,
                                                   "hold": []}
        assert await client.call(peer, rpc.GET_BLOCK, {"data": data}, timeout=10) == {
            "data": data}
        with pytest.raises(ValueError):
            server.set_faults(delay=-1)
        nursery.cancel_scope.cancel()
