#!/usr/bin/env python3
"""CPU per ``getattr`` and per ``lookup`` in the FUSE handlers, driven directly (no kernel):
this code and a reference checkout side by side, in one run.

Usage (from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/bench/stat_cost.py [--quick] [--runs N] [--files F] [--ref PATH]
        [--state-root DIR]

Per run and target, in a fresh state directory under ``--state-root`` (default /var/tmp, the
real disk): F files (``--quick``: 500, else 2,000) of 4 KiB, 100 per directory, are created
and written through ``Operations`` (create, write, release), committed; then every file is
looked up once (untimed: the kernel's first sight, which also warms the row cache), and the
timed passes follow, each over every file: ``getattr`` of its inode (what ``stat`` costs once
the kernel's attributes expired) and ``lookup`` of its name (a path walk once the entry
expired). Figures: CPU microseconds per call (``time.process_time``: the load of other
processes does not count), the median of the runs; ``figure: NAME=VALUE UNIT``, each run
printed first as a ``# `` line. ``--ref PATH``: a checkout of the reference code, run with
``PYTHONPATH=PATH`` (figures prefixed ``ref_``; this code's ``dhtfs_``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from ab_runs import run_side_by_side

UNITS = {"getattr_cpu_us": "us", "lookup_cpu_us": "us"}
CTX = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)
PER_DIR = 100


async def measure(state: Path, files: int) -> dict[str, float]:
    import trio

    from dhtfs.base.config import Config
    from dhtfs.runtime.localfs import open_state

    lfs = open_state(Config(state=state))
    ops = lfs.operations
    try:
        async with trio.open_nursery() as nursery:
            lfs.contents.nursery = nursery
            names: list[tuple[int, bytes, int]] = []
            for d in range(-(-files // PER_DIR)):
                dino = (await ops.mkdir(1, b"d%d" % d, 0o755, CTX)).st_ino
                for i in range(min(PER_DIR, files - d * PER_DIR)):
                    name = b"f%05d" % i
                    info, attrs = await ops.create(dino, name, 0o644, os.O_WRONLY, CTX)
                    await ops.write(info.fh, 0, os.urandom(4096))
                    await ops.release(info.fh)
                    names.append((dino, name, attrs.st_ino))
            lfs.namespace.commit()
            for dino, name, _ino in names:
                await ops.lookup(dino, name, CTX)
            t0 = time.process_time()
            for _dino, _name, ino in names:
                await ops.getattr(ino, CTX)
            t1 = time.process_time()
            for dino, name, _ino in names:
                await ops.lookup(dino, name, CTX)
            t2 = time.process_time()
            nursery.cancel_scope.cancel()
        return {"getattr_cpu_us": (t1 - t0) * 1e6 / files,
                "lookup_cpu_us": (t2 - t1) * 1e6 / files}
    finally:
        lfs.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--files", type=int)
    p.add_argument("--ref", type=Path)
    p.add_argument("--state-root", type=Path, default=Path("/var/tmp"))
    p.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    files = args.files or (500 if args.quick else 2000)
    if args.one_run:
        import trio

        state = Path(tempfile.mkdtemp(prefix="stat-cost-", dir=args.state_root))
        try:
            print(json.dumps(trio.run(measure, state / "state", files)))
        finally:
            shutil.rmtree(state, ignore_errors=True)
        return 0
    return run_side_by_side(__file__, ["--files", str(files), "--state-root",
                                       str(args.state_root)], args.ref, args.runs, UNITS)

if __name__ == "__main__":
    sys.exit(main())
