"""Forgetting a member that is gone, on a simulated swarm running the real replicator: the
record reaches every live node, and what every live member holds becomes stable everywhere
(``TimedLogStore.trim``), where without it nothing made after the member died ever does."""

from __future__ import annotations

from collections.abc import Callable

import trio
from trio.testing import MockClock

from dhtfs.sim.oplog import OpLogSim, TimedLogStore
from dhtfs.sim.swarm import Swarm

MakeSwarm = Callable[..., Swarm]


async def small_sim(make_swarm: MakeSwarm, n: int) -> OpLogSim:
    sw = make_swarm(maintenance=True)
    await sw.grow(n)
    sim = OpLogSim(sw, seed=4)
    await sim.attach_all()
    await trio.sleep(3.0)
    return sim


def stable_everywhere(sim: OpLogSim) -> bool:
    """Every live node found every op held by every live node stable."""
    want = sim.expected_vector()
    for rep in sim.alive.values():
        store = rep.store
        assert isinstance(store, TimedLogStore)
        if any(store.trimmed.get(o, 0) < s for o, s in want.items()):
            return False
    return True


async def test_forgetting_a_dead_member_lets_every_node_fold(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    sim = await small_sim(make_swarm, 20)
    ids = sorted(sim.alive)
    dead, forgetter = ids[3], ids[7]
    for node in ids[:10]:
        sim.make_op(node)  # the dead one is an origin too
    assert await sim.wait_delivered(60.0)
    sim.kill(dead)
    for node in ids[10:]:
        sim.make_op(node)
    assert await sim.wait_delivered(60.0)
    await trio.sleep(300.0)  # many fold intervals, every pair has synced
    assert not stable_everywhere(sim)  # the dead member holds folding back
    for rep in sim.alive.values():  # ... made after it died: never stable anywhere
        store = rep.store
        assert isinstance(store, TimedLogStore)
        assert all(store.trimmed.get(o, 0) == 0 for o in ids[10:])

    rec = sim.alive[forgetter].forget(dead, "test")
    assert rec is not None and rec[2] == 1  # it keeps the dead node's one op
    with trio.move_on_after(600.0):
        while not stable_everywhere(sim):
            await trio.sleep(5.0)
    assert stable_everywhere(sim)
    for rep in sim.alive.values():
        assert rep.membership.forgotten() == {dead: 1}
        assert dead not in rep.fold.required()


async def test_entries_past_the_cut_are_refused_until_the_node_rejoins(
    autojump_clock: MockClock, make_swarm: MakeSwarm
) -> None:
    """A forgotten node's entries that nobody saw are refused everywhere; once it marks
    itself rejoined (it has no folding store here: it rejoins at once), they spread."""
    sim = await small_sim(make_swarm, 10)
    ids = sorted(sim.alive)
    gone, forgetter = ids[2], ids[5]
    sim.make_op(gone)
    assert await sim.wait_delivered(60.0)
    sim.swarm.world.partition([{gone}, set(ids) - {gone}])
    late = sim.make_op(gone)  # nobody sees it
    sim.alive[forgetter].forget(gone, "test")
    await trio.sleep(30.0)
    assert all(rep.membership.is_forgotten(gone) for n, rep in sim.alive.items() if n != gone)
    entry = sim.alive[gone].store.entries_after(gone, 1, 1)  # unsigned: sign as a push would
    signed = sim.alive[gone].gossip.sign_last(entry)
    taker = sim.alive[forgetter]
    assert await taker.receive(None, signed, {}) == []
    assert taker.stats.refused_forgotten == 1
    sim.swarm.world.heal()
    with trio.move_on_after(120.0):
        while not sim.converged():
            await trio.sleep(1.0)
    assert sim.converged()  # the late op reached everyone, after the rejoin
    assert set(late.arrivals) == set(ids)
    for rep in sim.alive.values():
        assert not rep.membership.forgotten()  # rejoined everywhere
