#!/usr/bin/env python3
"""DHT lookups at scale in the simulator (real Node code, virtual clock, 50 ms ± 20 ms links).

Prints ``figure: NAME=VALUE UNIT`` lines. For each network size N:

1. N nodes; routing tables oracle-seeded (``Swarm.seed_tables``: the table each node would
   hold after joining and refreshing its buckets in a stable network); then blocks are put by
   random nodes with the real ``put_block`` (lookup, PUT_CHUNK to R=3, ADD_PROVIDER to k=20).
2. Without churn: value lookups and FIND_NODE lookups from random nodes.
3. With churn: 30% of the nodes replaced per simulated minute (a random live node dies
   silently; a fresh node joins through 3 random live nodes by the real protocol), maintenance
   running on every node. After a warm-up (default 20 simulated seconds, i.e. 10% replaced),
   blocks keep being put and looked up (open-loop, every simulated second) while churn goes on
   (default 10 simulated seconds, plus up to GRACE for the last lookups to finish).

Cost: at 10,000 nodes churn means 50 real joins per simulated second (each ~300 RPCs); on
this 2-core machine, shared, that is ~15 s of real time per simulated second, which is why
the default windows are short. ``--quick`` (300 and 1,000 nodes) takes ~20 s here, the full
run (1,000 and 10,000) ~4 min.

Usage: dht_sim.py [--quick] [--sizes 1000,10000] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dhtfs.base.ids import random_id, to_int
from dhtfs.blocks.node import BlockNode
from dhtfs.sim.network import SimWorld
from dhtfs.sim.swarm import Swarm

DEFINITIONS = """\
# lookup success: a FIND_PROVIDERS lookup (stopping early as Node.find_providers does), from a
#   random live node, for a block put earlier that some live node still holds, returns at least
#   one provider that is alive and holds the block (checked against the simulator's ground truth).
# findnode success: a FIND_NODE lookup for a random ID returns, first, the live node
#   XOR-closest to that ID.
# hops: the level of the query that produced the answer: a contact from the initiator's own
#   table is asked at hop 1, one it learned from a hop-h answer at hop h+1 (dhtfs/dht/lookup.py).
# time: simulated seconds from the start of the lookup to its result.
# churn30: 30% of nodes replaced per simulated minute (silent deaths, real joins); measured
#   after a warm-up of churn, while churn continues."""


@dataclass
class Tally:
    ok: int = 0
    total: int = 0
    hops: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def emit(self, prefix: str) -> None:
        if not self.total or not self.hops:
            return
        hops = sorted(self.hops)
        p99 = hops[min(len(hops) - 1, int(0.99 * len(hops)))]
        print(f"figure: {prefix}_success={self.ok / self.total:.3f} fraction")
        print(f"figure: {prefix}_hops_median={statistics.median(hops):g} hops")
        print(f"figure: {prefix}_hops_p99={p99} hops")
        print(f"figure: {prefix}_time_median={statistics.median(self.times):.3f} s")
        print(f"figure: {prefix}_count={self.total} lookups")
        if len(self.hops) < self.total:
            print(f"figure: {prefix}_unfinished={self.total - len(self.hops)} lookups")


GRACE = 30.0
"""Simulated seconds that lookups started during the measurement may take after it ends."""


def blob(rng: random.Random) -> bytes:
    return rng.randbytes(1024)


class Bench:
    def __init__(self, swarm: Swarm, rng: random.Random) -> None:
        self.sw = swarm
        self.rng = rng
        self.blocks: list[bytes] = []

    def holders(self, cid: bytes) -> set[bytes]:
        return {nid for nid, n in self.sw.nodes.items() if n.store.has(cid)}

    async def put(self) -> None:
        node = self.rng.choice(list(self.sw.nodes.values()))
        self.blocks.append(await node.put_block(blob(self.rng)))

    async def value_lookup(self, tally: Tally, recent: int | None = None) -> None:
        pool = self.blocks[-recent:] if recent else self.blocks
        cid = self.rng.choice(pool)
        if not self.holders(cid):
            return                          # nobody alive holds it: not a lookup we can judge
        node = self.rng.choice(list(self.sw.nodes.values()))
        if node.store.has(cid):
            return
        t0 = trio.current_time()
        tally.total += 1            # counted when started: an unfinished lookup is a failure
        res = await node.lookup(cid, providers=True)
        provs = {c.node_id for f in res.found for c in f}
        ok = bool(provs & self.holders(cid))
        tally.ok += ok
        tally.hops.append(res.hops)
        tally.times.append(trio.current_time() - t0)

    async def findnode_lookup(self, tally: Tally) -> None:
        node: BlockNode = self.rng.choice(list(self.sw.nodes.values()))
        target = random_id(self.rng)
        t0 = trio.current_time()
        tally.total += 1
        res = await node.lookup(target)
        t = to_int(target)
        best = min((nid for nid in self.sw.nodes if nid != node.id), key=lambda i: to_int(i) ^ t)
        tally.ok += bool(res.closest) and res.closest[0].node_id == best
        tally.hops.append(res.hops)
        tally.times.append(trio.current_time() - t0)


async def run_batches(fn, count: int, concurrency: int, *args) -> None:  # type: ignore[no-untyped-def]
    done = 0
    while done < count:
        n = min(concurrency, count - done)
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(fn, *args)
        done += n


async def bench_size(
    n: int, lookups: int, churn_seconds: float, warmup: float, seed: int
) -> None:
    world = SimWorld(seed=seed)
    rng = random.Random(seed)
    t_real = time.monotonic()
    async with trio.open_nursery() as nursery:
        sw = Swarm(world, nursery, seed=seed, maintenance=False)
        for _ in range(n):
            await sw.spawn()
        sw.seed_tables()
        b = Bench(sw, rng)
        await run_batches(b.put, max(50, lookups // 5), 10)
        print(f"# n={n}: built and seeded in {time.monotonic() - t_real:.1f} s real", flush=True)

        vt, ft = Tally(), Tally()
        await run_batches(b.value_lookup, lookups, 20, vt)
        await run_batches(b.findnode_lookup, lookups, 20, ft)
        vt.emit(f"sim_n{n}_lookup")
        ft.emit(f"sim_n{n}_findnode")
        print(f"# n={n}: no-churn lookups done at {time.monotonic() - t_real:.1f} s real",
              flush=True)
        nursery.cancel_scope.cancel()

    if churn_seconds <= 0:
        return
    await bench_churn(n, lookups, churn_seconds, warmup, seed)


async def bench_churn(
    n: int, lookups: int, churn_seconds: float, warmup: float, seed: int
) -> None:
    world = SimWorld(seed=seed + 1)
    rng = random.Random(seed + 1)
    t_real = time.monotonic()
    async with trio.open_nursery() as nursery:
        sw = Swarm(world, nursery, seed=seed + 1, maintenance=True)
        for _ in range(n):
            await sw.spawn()
        sw.seed_tables()
        b = Bench(sw, rng)
        await run_batches(b.put, 50, 10)
        per_second = 0.30 * n / 60.0
        replaced = 0

        async def churn() -> None:
            nonlocal replaced
            owed = 0.0
            async with trio.open_nursery() as joins:
                while True:
                    await trio.sleep(1.0)
                    owed += per_second
                    while owed >= 1:
                        owed -= 1
                        sw.kill(rng.choice(list(sw.nodes)))
                        new = await sw.spawn()
                        joins.start_soon(sw.join, new)
                        replaced += 1

        async with trio.open_nursery() as inner:
            inner.start_soon(churn)
            await trio.sleep(warmup)
            print(f"# n={n} churn: warm-up done, {replaced} replaced, "
                  f"{time.monotonic() - t_real:.1f} s real", flush=True)
            vt, ft = Tally(), Tally()
            rate = max(1, round(lookups / churn_seconds))
            # Open-loop load: every simulated second start a put and ``rate`` lookups of
            # each kind, without waiting for earlier ones; then wait for the stragglers.
            async with trio.open_nursery() as load:
                for sec in range(int(churn_seconds)):
                    load.start_soon(b.put)
                    for _ in range(rate):
                        load.start_soon(b.value_lookup, vt, 100)
                        load.start_soon(b.findnode_lookup, ft)
                    await trio.sleep(1.0)
                    if sec % 10 == 9:
                        print(f"# n={n} churn: {sec + 1} s measured, "
                              f"{time.monotonic() - t_real:.1f} s real", flush=True)
                # Stragglers get GRACE simulated seconds; unfinished lookups count as failures.
                load.cancel_scope.deadline = trio.current_time() + GRACE
            inner.cancel_scope.cancel()
        vt.emit(f"sim_n{n}_churn30_lookup")
        ft.emit(f"sim_n{n}_churn30_findnode")
        print(f"figure: sim_n{n}_churn30_replaced={replaced} nodes")
        print(f"# n={n} churn: done, {time.monotonic() - t_real:.1f} s real", flush=True)
        nursery.cancel_scope.cancel()


async def main(args: argparse.Namespace) -> None:
    print(DEFINITIONS)
    for n in args.sizes:
        await bench_size(n, args.lookups, args.churn_seconds, args.warmup, args.seed)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few lookups (~20 s)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--lookups", type=int)
    p.add_argument("--churn-seconds", type=float, help="simulated seconds measured under churn")
    p.add_argument("--warmup", type=float, default=20.0, help="simulated seconds of churn first")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    if a.sizes is None:
        a.sizes = [300, 1000] if a.quick else [1000, 10000]
    if a.lookups is None:
        a.lookups = 100 if a.quick else 200
    if a.churn_seconds is None:
        a.churn_seconds = 20.0 if a.quick else 10.0
    return a


if __name__ == "__main__":
    args = parse()
    t0 = time.monotonic()
    trio.run(main, args, clock=trio.testing.MockClock(autojump_threshold=0))
    print(f"figure: sim_bench_real_time={time.monotonic() - t0:.1f} s")
