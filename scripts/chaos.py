#!/usr/bin/env python3
"""Chaos runs against a real swarm on this machine (as root, from the repo root, with the
venv's interpreter)::

    .venv/bin/python scripts/chaos.py [--seed S | --seeds N] [--nodes 3] [--ops 400]
                                      [--faults kill=2,partition=2,disk=1] [--quick]

Each run: N mounts (node0..node{N-2} storage, the last client-only), each running its seeded
random ops on one small shared tree, with the faults injected mid-run (SIGKILL + remount, a
partition and its heal, a full disk), then the checks of ``testkit/chaos/checker.py``:
only race errnos, every mount converges to the identical tree, every fsynced file nobody
changed reads back exactly. Prints ``figure: NAME=VALUE UNIT`` lines per run, ``# `` lines
with every unexpected error, divergence and loss, and the command that replays the run.
Exit status 1 when any run failed a check.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# testkit.env (imported by the harness) keeps every daemon off mDNS on the host's network.

from testkit.chaos import ChaosConfig, run_chaos
from testkit.chaos.faults import KINDS


def parse_faults(text: str) -> dict[str, int]:
    """``kill=2,partition,disk=0`` -> counts (a bare kind is 1; ``none`` for no faults)."""
    counts = dict.fromkeys(KINDS, 0)
    for item in filter(None, (x.strip() for x in text.split(","))):
        if item == "none":
            continue
        kind, _, n = item.partition("=")
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"fault {kind!r}: expected one of {KINDS}")
        counts[kind] = int(n) if n else 1
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, action="append",
                    help="run this seed (repeatable); default: --seeds random ones")
    ap.add_argument("--seeds", type=int, default=3, help="random seeds to run (default 3)")
    ap.add_argument("--nodes", type=int, default=3, help="mounts, the last client-only")
    ap.add_argument("--ops", type=int, default=400, help="ops per node (default 400)")
    ap.add_argument("--faults", type=parse_faults, default=parse_faults("kill=2,partition=2,disk"),
                    help="fault counts, e.g. kill=2,partition=2,disk=1 (default)")
    ap.add_argument("--pace", type=float, default=0.08, help="mean pause between ops, s")
    ap.add_argument("--disk-fs", choices=("ext4", "tmpfs"), default="ext4")
    ap.add_argument("-o", dest="options", help="mount options for every node")
    ap.add_argument("--converge-timeout", type=float, default=120.0)
    ap.add_argument("--quick", action="store_true",
                    help="one seed, 100 ops per node, one fault of each kind")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("run as root (FUSE mounts, loop disks)")
    if args.quick:
        args.ops, args.seeds, args.faults = 100, 1, parse_faults("kill,partition,disk")
    seeds = args.seed or [random.SystemRandom().randrange(1 << 31) for _ in range(args.seeds)]
    failed = []
    for seed in seeds:
        config = ChaosConfig(seed=seed, nodes=args.nodes, ops=args.ops, faults=args.faults,
                             pace=args.pace, options=args.options, disk_fs=args.disk_fs,
                             converge_timeout=args.converge_timeout)
        work = Path(tempfile.mkdtemp(prefix=f"dhtfs-chaos-{seed}-"))
        print(f"# seed {seed}: {args.nodes} nodes x {args.ops} ops, faults "
              f"{','.join(f'{k}={v}' for k, v in args.faults.items())}, work dir {work}",
              flush=True)
        report = run_chaos(config, work)
        for line in report.details():
            print(line)
        for line in report.figures():
            print(line)
        faults = ",".join(f"{k}={v}" for k, v in args.faults.items())
        replay = (f".venv/bin/python scripts/chaos.py --seed {seed} --nodes {args.nodes} "
                  f"--ops {args.ops} --faults {faults} --pace {args.pace} "
                  f"--disk-fs {args.disk_fs}" + (f" -o {args.options}" if args.options else ""))
        print(f"# {'PASS' if report.ok else 'FAIL'} seed {seed}; replay: {replay}", flush=True)
        if not report.ok:
            failed.append(seed)
        if not args.keep and report.ok:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
    print(f"figure: chaos_runs={len(seeds)} runs")
    print(f"figure: chaos_runs_failed={len(failed)} runs")
    if failed:
        print(f"# failed seeds: {' '.join(map(str, failed))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
