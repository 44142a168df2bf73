#!/usr/bin/env python3
"""The issue's proof of forgetting: with an absent member forgotten, N files created and
deleted leave the state directories back near their start size; remembered, it grows.

Usage (as root, from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/forget_figure.py [--files 20000] [--dir DIR]

On a fresh 3-node swarm (``dhtfs swarm up --nodes 3 -o fold_interval=1``, in a temporary
directory or DIR): node2 is SIGKILLed (the absent member); node0 creates N files of ~70 bytes
in one directory and deletes them all; once node0 and node1 agree, each folds and collects
(``fold``, ``gc`` with no grace) while node2 is still remembered, and their state directories
are measured (``remembered``); then ``dhtfs swarm forget node2`` on node1, both fold and
collect again, and are measured (``forgotten``). Prints ``figure: NAME=VALUE UNIT`` lines:
sizes in KiB (``st_blocks``) of node0's and node1's state directories at the start, while
remembered, once forgotten, and the seconds from ``forget`` until both had folded everything.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testkit import swarmctl  # noqa: E402
from testkit.forgetting import (  # noqa: E402
    collect,
    create_and_delete,
    cut_off_last,
    fold_and_collect,
)
from testkit.observe import unfolded, wait_converged  # noqa: E402
from testkit.wait import wait_until  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--dir", type=Path, help="where to make the swarm (default: a temp dir)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="dhtfs-forget-"))
    root = base / "swarm"
    print(f"# swarm in {root}, {args.files} files", flush=True)
    with swarmctl.running_swarm(root, 3, options="fold_interval=1") as (a, b, c):
        live = [a.state, b.state]
        start = cut_off_last(root, [a, b, c])
        t0 = time.monotonic()
        create_and_delete(a.mountpoint / "many", args.files)
        print(f"# created and deleted in {time.monotonic() - t0:.1f} s", flush=True)
        wait_converged(live, timeout=600)
        kept = fold_and_collect(live)
        unfolded_kept = [unfolded(s) for s in live]
        t1 = time.monotonic()
        res = swarmctl.run_cli("swarm", "forget", c.name, "--state", str(b.state))
        if res.returncode != 0:
            print(f"dhtfs swarm forget failed: {res.stderr.strip()}", file=sys.stderr)
            return 1
        print(f"# {res.stdout.strip()}", flush=True)
        wait_until(lambda: all(unfolded(s) == 0 for s in live), "both to fold", 600)
        folded_after = time.monotonic() - t1
        end = collect(live)
    print(f"figure: forget_files={args.files} files")
    for name, i in (("node0", 0), ("node1", 1)):
        print(f"figure: {name}_state_start={start[i] // 1024} KiB")
        print(f"figure: {name}_state_remembered={kept[i] // 1024} KiB "
              f"({unfolded_kept[i]} ops unfolded)")
        print(f"figure: {name}_state_forgotten={end[i] // 1024} KiB")
    print(f"figure: forget_to_folded={folded_after:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
