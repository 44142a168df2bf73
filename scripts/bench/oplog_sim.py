#!/usr/bin/env python3
"""The replicated op log at scale in the simulator (real Node and LogReplicator code, virtual
clock, 50 ms ± 20 ms links; harness: ``dhtfs.sim.oplog``).

Prints ``figure: NAME=VALUE UNIT`` lines for two scenarios on N nodes (routing tables
oracle-seeded, a replicator on every node, 5 simulated seconds of warm-up):

1. no churn: ops made one every 0.5 simulated seconds at random nodes;
2. churn: 30% of the nodes replaced per simulated minute (silent deaths; newcomers join by
   the real protocol and catch up by anti-entropy) for one minute while ops are made, spread
   over that minute; then churn stops.

In both, the run ends once every live node holds every op. Figures (definitions in
``dhtfs.sim.oplog``): messages (LOG_PUSH + LOG_PULL calls) per op per node; median over ops
of the time until 99% / 100% of the nodes alive throughout held an op; whether every live
node's version vector ended identical and complete.

Measured here (2 cores, shared with other work): ``--quick`` (200 nodes, 20 ops) 16 s
(5 s without churn, 11 s with); the default (1,000 nodes, 30 ops) 3 min 11 s (47 s without
churn, 142 s with). Without churn a run repeats exactly; with churn figures vary a little
(see ``dhtfs.sim.oplog``).

Measured at 1,000 nodes (seed 1, 30 ops, LogReplicator defaults fanout=6, sync_interval=1 s,
rpc_timeout=10 s): 6.50 messages/op/node (6.04 pushes, 0.47 pulls), t99 506 ms, t100 895 ms
(p95 1.49 s), converged; with churn 8.16 messages/op/node, t99 768 ms, t100 2.31 s (p95
5.45 s), 300 replaced, converged.

Usage: oplog_sim.py [--quick] [--nodes N] [--ops N] [--seed N] [--fanout F]
                    [--sync-interval S]
Import: ``run(nodes, ops, churn, seed) -> dict`` (one scenario; ``churn`` is the fraction
replaced per simulated minute, 0 for none).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dhtfs.sim.oplog import simulate

CHURN = 0.30
CHURN_SECONDS = 60.0


def run(
    nodes: int,
    ops: int,
    churn: float,
    seed: int,
    *,
    fanout: int = 6,
    sync_interval: float = 1.0,
    verbose: bool = False,
) -> dict[str, Any]:
    """One scenario under a fresh virtual clock; the ``OpLogResult`` fields as a dict."""
    op_interval = CHURN_SECONDS / ops if churn > 0 else 0.5

    async def main() -> dict[str, Any]:
        res = await simulate(
            nodes, ops, churn=churn, seed=seed, fanout=fanout, sync_interval=sync_interval,
            op_interval=op_interval, churn_seconds=CHURN_SECONDS,
            progress=(lambda m: print(f"# {m}", flush=True)) if verbose else None,
        )
        return res.as_dict()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _ms(seconds: float) -> str:
    return "inf" if math.isinf(seconds) else f"{seconds * 1000:.0f}"


def emit(prefix: str, r: dict[str, Any]) -> None:
    print(f"figure: {prefix}_nodes={r['nodes']} nodes")
    print(f"figure: {prefix}_ops={r['ops']} ops")
    print(f"figure: {prefix}_msgs_per_op_per_node={r['msgs_per_op_per_node']:.2f} msgs")
    print(f"figure: {prefix}_pushes_per_op_per_node={r['pushes_per_op_per_node']:.2f} msgs")
    print(f"figure: {prefix}_pulls_per_op_per_node={r['pulls_per_op_per_node']:.2f} msgs")
    print(f"figure: {prefix}_t99_ms={_ms(r['t99_median'])} ms")
    print(f"figure: {prefix}_t99_p95_ms={_ms(r['t99_p95'])} ms")
    print(f"figure: {prefix}_t100_ms={_ms(r['t100_median'])} ms")
    print(f"figure: {prefix}_t100_p95_ms={_ms(r['t100_p95'])} ms")
    if r["churn"]:
        print(f"figure: {prefix}_replaced={r['replaced']} nodes")
        print(f"figure: {prefix}_newcomers_alive={r['newcomers_alive']} nodes")
    print(f"figure: {prefix}_converged={int(r['converged'])} bool")
    print(f"figure: {prefix}_real_time={r['wall']:.1f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 nodes, fewer ops (~30 s)")
    p.add_argument("--nodes", type=int)
    p.add_argument("--ops", type=int)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fanout", type=int, default=6)
    p.add_argument("--sync-interval", type=float, default=1.0)
    p.add_argument("--no-churn", action="store_true", help="skip the churn scenario")
    a = p.parse_args()
    nodes = a.nodes or (200 if a.quick else 1000)
    ops = a.ops or (20 if a.quick else 30)
    t0 = time.monotonic()

    def scenario(churn: float, seed: int) -> dict[str, Any]:
        return run(nodes, ops, churn, seed, fanout=a.fanout, sync_interval=a.sync_interval,
                   verbose=True)

    r = scenario(0.0, a.seed)
    emit("oplog_sim", r)
    converged = r["converged"]
    if not a.no_churn:
        rc = scenario(CHURN, a.seed + 1)
        emit("oplog_sim_churn", rc)
        converged = converged and rc["converged"]
    print(f"figure: oplog_sim_converged={int(converged)} bool")
    print(f"figure: oplog_sim_bench_real_time={time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
