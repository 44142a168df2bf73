"""Placement from the routing table (``Node.table_closest``), real node code in the simulator:
a swarm small enough for every table to hold every node places most blocks without a lookup,
and still on their true R closest, also right after a node joins; a large swarm keeps looking
each block up."""

from __future__ import annotations

import random
from collections.abc import Callable

from trio.testing import MockClock

from dhtfs.blocks.node import BlockNode
from dhtfs.dht.node import TABLE_CHECK_EVERY, TABLE_TRUST_AFTER
from dhtfs.dht.results import PutResult
from dhtfs.sim.swarm import Swarm

MakeSwarm = Callable[..., Swarm]


def holders(node: BlockNode, res: PutResult) -> set[bytes]:
    return {c.node_id for c in res.replicas} | ({node.id} if res.local_slot else set())


async def put_checked(sw: Swarm, writer: BlockNode, rng: random.Random, count: int) -> None:
    """``count`` puts from ``writer``, each on the true R closest live nodes."""
    for _ in range(count):
        res = await writer.put_block_detailed(rng.randbytes(5000))
        await res.placed.wait()
        truth = {c.node_id for c in sw.true_closest(res.block_id, writer.replicas)}
        assert holders(writer, res) == truth


async def test_small_swarm_places_from_the_table(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    sw = make_swarm()
    await sw.grow(12)
    writer = next(iter(sw.nodes.values()))
    rng = random.Random(3)
    puts = 64
    await put_checked(sw, writer, rng, puts)
    trusted = puts - TABLE_TRUST_AFTER
    assert writer.table_placements >= trusted - trusted // TABLE_CHECK_EVERY - 1
    # A newcomer: it calls (nearly) every node while it joins, so tables change size and
    # the writer looks up again until its table agrees once more; placements stay exact.
    before = writer.table_placements
    newcomer = await sw.spawn()
    await sw.join(newcomer)
    assert newcomer.id in writer.routing
    await put_checked(sw, writer, rng, TABLE_TRUST_AFTER)
    assert writer.table_placements == before
    await put_checked(sw, writer, rng, 16)
    assert writer.table_placements > before


async def test_large_swarm_keeps_looking_up(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    sw = make_swarm(k=8)
    await sw.grow(120)
    writer = next(iter(sw.nodes.values()))
    await put_checked(sw, writer, random.Random(4), 40)
    assert writer.table_placements == 0
