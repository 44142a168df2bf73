"""The loopback proof: 16 real ``dhtfs node`` processes on 127.0.0.x (one each, port 0).

Driven through each node's control socket (``dhtfs.net.control``), plus, where a test needs a
misbehaving peer, an in-test trio node on the real TLS transport that joins the swarm.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from dhtfs.base.errors import AuthError, BlockCorrupt, RemoteError
from dhtfs.blocks.node import BlockNode
from dhtfs.net import wire
from dhtfs.net.control import ControlClient
from dhtfs.net.network import Contact
from dhtfs.net.transport import Transport
from dhtfs.store.blockstore import BlockStore, block_id_of
from dhtfs.store.masterkey import load_master_key
from dhtfs.trust.pki import Identity
from testkit.nodehelpers import draw_garbage, make_identity, make_self_signed, raw_session, rejected
from testkit.nodeproc import NodeProc, Swarm
from testkit.wait import wait_until_async

N_NODES = 16
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swarm(swarm_ca: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("swarm")
    s = Swarm(root)
    try:
        seed = s.start(make_identity(swarm_ca, root), "127.0.0.10", [])
        Swarm.wait([seed])
        rest = [
            s.start(make_identity(swarm_ca, root), f"127.0.0.{11 + i}", [seed.address])
            for i in range(N_NODES - 1)
        ]
        Swarm.wait(rest, timeout=90)
        yield s
    finally:
        s.close()


async def control(node: NodeProc, method: str, timeout: float = 60, **args: object) -> dict:
    client = await ControlClient.connect(node.control)
    try:
        return await client.call(method, args, timeout=timeout)
    finally:
        await client.aclose()


async def test_blocks_put_anywhere_are_fetched_everywhere(swarm: Swarm) -> None:
    nodes = swarm.nodes[:N_NODES]
    assert all(n.proc.poll() is None for n in nodes)
    # every node knows a decent part of the swarm
    for n in nodes:
        assert (await control(n, "status"))["peers"] >= 3
    blobs = [os.urandom(1024 * 1024), os.urandom(1024), os.urandom(64 * 1024 + 7)]
    ids = []
    for i, blob in enumerate(blobs):
        ans = await control(nodes[(5 * i + 3) % N_NODES], "put", data=blob)
        assert ans["id"] == block_id_of(blob) and ans["complete"] and ans["elapsed"] > 0
        ids.append(ans["id"])

    async def quiet() -> bool:  # announcements go on after a put returns, then stop
        return [(await control(n, "pending"))["background"] for n in nodes] == [0] * N_NODES

    await wait_until_async(quiet, "every node's background work to finish", 30)
    for n in nodes:
        for cid, blob in zip(ids, blobs, strict=True):
            got = await control(n, "get", id=cid)
            assert got["data"] == blob, f"{n.name} returned different bytes"
            assert got["elapsed"] > 0
    await wait_until_async(quiet, "fetched blocks to be cached", 30)
    for n in nodes:  # every reader keeps what it fetched
        assert (await control(n, "status"))["chunks"] == len(blobs)
    missing = os.urandom(32)
    with pytest.raises(RemoteError, match="BlockMissing"):
        await control(nodes[1], "get", id=missing)


async def test_foreign_and_self_signed_nodes_refused(
    swarm: Swarm, swarm_ca: Path, foreign_ca: Path, tmp_path: Path
) -> None:
    seed = swarm.nodes[0]
    peer = Contact(seed.node_id, seed.host, seed.port)
    trust = swarm_ca / "ca.crt"
    before = seed.log().count("refused peer")
    intruders = [
        make_identity(foreign_ca, tmp_path, trust=trust),  # same CA name, other key
        make_self_signed(tmp_path, trust),
    ]
    # `dhtfs node` itself will not start with them: one line, status 1, no traceback
    for i, ident in enumerate(intruders):
        x = swarm.start(ident, f"127.0.0.{100 + i}", [seed.address])
        assert x.proc.wait(30) == 1
        assert "dhtfs: error: certificate" in x.log() and "Traceback" not in x.log()
    # a hostile implementation that skips that check is refused by the swarm
    for i, ident in enumerate(intruders):
        transport = Transport(ident, f"127.0.0.{100 + i}", 0)
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.serve)
            with pytest.raises(AuthError):
                await transport.call(peer, "FIND_NODE", {"target": os.urandom(32)}, timeout=5)
            with pytest.raises(AuthError):
                await transport.contact_at(seed.host, seed.port, timeout=5)
            nursery.cancel_scope.cancel()

    async def refused_logged() -> bool:
        return seed.log().count("refused peer") >= before + 4

    await wait_until_async(refused_logged, "the seed to log the refusals", 10)
    log = seed.log()
    assert "refused peer 127.0.0.100: unable to get local issuer certificate" in log
    assert "refused peer 127.0.0.101:" in log
    known = {p[0] for p in (await control(seed, "peers"))["peers"]}
    assert not known & {x.node_id for x in intruders}


@asynccontextmanager
async def joined_node(ident: Identity, host: str, store: object, seed: NodeProc
                    ) -> AsyncIterator[tuple[BlockNode, Transport]]:
    """An in-test node on the real transport that has joined the swarm through ``seed``."""
    transport = Transport(ident, host, 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve)
        node = BlockNode(transport, store)
        transport.handler = node.handle
        assert await node.join_addresses([(seed.host, seed.port)]) > 3
        yield node, transport
        nursery.cancel_scope.cancel()


async def test_malformed_frames_leave_process_serving(
    swarm: Swarm, swarm_ca: Path, tmp_path: Path
) -> None:
    target = swarm.nodes[1]
    peer = Contact(target.node_id, target.host, target.port)
    ident = make_identity(swarm_ca, tmp_path)
    hello = wire.encode_hello("127.0.0.1", 9)
    payloads = draw_garbage(30)
    for p in payloads:
        await raw_session(ident, peer, hello + p, tls=True)
        await raw_session(ident, peer, p, tls=False)
    log = target.log()
    assert log.count("refused peer") + log.count("aborted") >= len(payloads)
    assert log.count("closing connection") >= sum(rejected(hello + p) for p in payloads) // 2
    assert target.proc.poll() is None
    # still serving: the control socket, and a real authenticated RPC from a new peer
    assert (await control(target, "status"))["node_id"] == target.node_id
    transport = Transport(make_identity(swarm_ca, tmp_path), "127.0.0.102", 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve)
        assert await transport.call(peer, "PING", {}, timeout=5) == {}
        nursery.cancel_scope.cancel()


async def test_silent_peers_do_not_stall_lookups(
    swarm: Swarm, swarm_ca: Path, tmp_path: Path
) -> None:
    """Two peers join, then go silent: one keeps its TLS connections and reads requests but
    never answers; the other is replaced by a bare TCP listener that accepts and says nothing
    (so dialing it hangs in the TLS handshake). Every node's lookups must still be quick."""
    nodes = swarm.nodes[:N_NODES]
    blob = os.urandom(4096)
    cid = (await control(nodes[2], "put", data=blob))["id"]
    idents = [make_identity(swarm_ca, tmp_path), make_identity(swarm_ca, tmp_path)]
    hosts = ["127.0.0.200", "127.0.0.201"]
    stopped = trio.Event()
    mute_scope = trio.CancelScope()

    async def run_node(i: int, task_status: trio.TaskStatus[Transport]) -> None:
        store = BlockStore(tmp_path / f"chunks{i}", load_master_key("ephemeral", tmp_path))
        try:
            with mute_scope if i == 1 else trio.CancelScope():
                async with joined_node(idents[i], hosts[i], store, nodes[0]) as (_, transport):
                    task_status.started(transport)
                    await trio.sleep_forever()
        finally:
            if i == 1:
                stopped.set()

    held: list[trio.SocketStream] = []
    async with trio.open_nursery() as nursery:
        quiet = await nursery.start(run_node, 0)
        mute = await nursery.start(run_node, 1)

        async def known_widely() -> bool:
            counts = [0, 0]
            for n in nodes:
                peers = {p[0] for p in (await control(n, "peers"))["peers"]}
                for i in (0, 1):
                    counts[i] += idents[i].node_id in peers
            return min(counts) >= N_NODES // 2

        await wait_until_async(known_widely, "the silent nodes to be in most routing tables", 20)

        async def never_answer(caller: Contact, method: str, args: dict) -> dict:
            await trio.sleep_forever()
            raise AssertionError

        quiet.handler = never_answer
        port = mute.local.port
        mute_scope.cancel()
        await stopped.wait()
        listener = (await trio.open_tcp_listeners(port, host=hosts[1]))[0]

        async def accept_and_ignore() -> None:
            while True:
                held.append(await listener.accept())

        nursery.start_soon(accept_and_ignore)
        for n in nodes:
            t0 = time.monotonic()
            provs = (await control(n, "providers", id=os.urandom(32)))["providers"]
            assert provs == []
            got = await control(n, "get", id=cid)
            elapsed = time.monotonic() - t0
            assert got["data"] == blob
            # the node's hard RPC timeout is 5 s; a stalled lookup would take at least that
            assert elapsed < 4.5, f"{n.name}: lookups took {elapsed:.1f}s with silent peers"
        assert held, "nobody dialed the mute address: that half proved nothing"
        nursery.cancel_scope.cancel()
    for stream in held:
        await trio.aclose_forcefully(stream)
    await trio.aclose_forcefully(listener)


class TamperingStore:
    """A block store that serves every block with one bit flipped."""

    root = None  # no files to stat: sizes and reads go through ``get``

    def __init__(self, inner: BlockStore) -> None:
        self.inner = inner

    def path_of(self, cid: bytes) -> Path:
        return self.inner.path_of(cid)

    def has(self, cid: bytes) -> bool:
        return self.inner.has(cid)

    def put(self, cid: bytes, data: bytes) -> bool:
        return self.inner.put(cid, data)

    def touch(self, cid: bytes) -> bool:
        return self.inner.touch(cid)

    def sync(self, cids: Iterable[bytes]) -> None:
        self.inner.sync(cids)

    def get(self, cid: bytes) -> bytes:
        data = bytearray(self.inner.get(cid))
        data[0] ^= 1
        return bytes(data)

    def put_verified(self, cid: bytes, data: bytes, *, durable: bool = False) -> bool:
        if block_id_of(data) != cid:
            raise BlockCorrupt(cid, "content does not hash to its id")
        return self.inner.put(cid, data)

    def remove(self, cid: bytes) -> bool:
        return self.inner.remove(cid)

    def ids(self) -> Iterator[bytes]:
        return self.inner.ids()


async def test_tampered_bytes_are_detected_and_penalized(
    swarm: Swarm, swarm_ca: Path, tmp_path: Path
) -> None:
    nodes = swarm.nodes[:N_NODES]
    reader = nodes[7]
    blob = os.urandom(100_000)
    cid = block_id_of(blob)
    inner = BlockStore(tmp_path / "chunks", load_master_key("ephemeral", tmp_path))
    ident = make_identity(swarm_ca, tmp_path)
    async with joined_node(ident, "127.0.0.202", TamperingStore(inner), nodes[0]) as (node, _):
        inner.put(cid, blob)
        assert await node.announce(cid) > 0  # the liar is the only provider
        with pytest.raises(RemoteError, match="BlockMissing"):
            await control(reader, "get", id=cid)
        assert "do not hash" in reader.log()
        liar = [p for p in (await control(reader, "peers"))["peers"] if p[0] == ident.node_id]
        assert liar and liar[0][4] >= 1, "the liar was not penalized"
        # an honest copy appears: the reader now gets the right bytes despite the liar
        assert (await control(nodes[3], "put", data=blob))["complete"]
        assert (await control(reader, "get", id=cid))["data"] == blob


def test_sigterm_exits_cleanly(swarm: Swarm) -> None:
    """Runs last: every node stops on SIGTERM with status 0."""
    running = [n for n in swarm.nodes if n.proc.poll() is None]
    assert len(running) == N_NODES
    assert [swarm.stop(n) for n in running] == [0] * N_NODES
