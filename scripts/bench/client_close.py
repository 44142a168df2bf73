#!/usr/bin/env python3
"""What a client-only mount's small files cost: close() latency, and how soon a storage node
shows and reads them.

Usage (as root, from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/bench/client_close.py [--files F] [--changes C] [--runs N]

Per run, on a fresh swarm of 2 storage nodes (``dhtfs swarm up --nodes 2``) and a client
mount (``storage=false``) joined to both, prints ``figure: NAME=VALUE UNIT`` lines (medians
over runs; each run first as a ``# `` line):

* ``close_p50`` / ``close_p90``: open + write 4 KiB + close of a new file on the client, F
  files one after the other, ms; ``files_per_s``: the same F files, files/s;
* ``fsync_close_p50``: the same with an fsync before close (which waits for the file's blocks
  on their replicas: what a close that waited for placement would cost), ms;
* ``visible_p50`` / ``visible_p95``: C files written one at a time on the client, each timed
  from just before its open until ``stat`` on a storage mount shows its size (polled), ms;
* ``readable_p50`` / ``readable_p95``: from then until a read of it there returns its bytes,
  ms (a read that found no copy yet waits for one: this is that wait).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from testkit import swarmctl  # noqa: E402
from testkit.mounting import Mount  # noqa: E402
from testkit.observe import control, member_options  # noqa: E402
from testkit.wait import wait_until  # noqa: E402

SIZE = 4096


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def one_run(tmp: Path, files: int, changes: int) -> dict[str, float]:
    root = tmp / "swarm"
    with swarmctl.running_swarm(root, 2) as nodes:
        seeds = "bootstrap=" + "+".join(n.address for n in nodes)
        client = Mount(tmp / "client-mnt", tmp / "client-state", options=[
            *member_options(root / "ca", "client", tmp / "client"),
            "listen=127.0.0.70:0", seeds, "storage=false"])
        try:
            client.start()
            wait_until(lambda: control(client.state, "status")["peers"] >= 2, "the swarm")
            out: dict[str, float] = {}
            d = client.mountpoint / "burst"
            d.mkdir()
            times = []
            began = time.perf_counter()
            for i in range(files):
                t0 = time.perf_counter()
                with open(d / f"f{i}", "wb") as fh:
                    fh.write(os.urandom(SIZE))
                times.append(time.perf_counter() - t0)
            out["files_per_s"] = files / (time.perf_counter() - began)
            out["close_p50"] = 1000 * statistics.median(times)
            out["close_p90"] = 1000 * pct(times, 0.9)
            d = client.mountpoint / "synced"
            d.mkdir()
            times = []
            for i in range(min(files, 100)):
                t0 = time.perf_counter()
                with open(d / f"f{i}", "wb") as fh:
                    fh.write(os.urandom(SIZE))
                    fh.flush()
                    os.fsync(fh.fileno())
                times.append(time.perf_counter() - t0)
            out["fsync_close_p50"] = 1000 * statistics.median(times)
            wait_until(lambda: control(client.state, "status")["replication"]["pending"] == 0,
                       "the client's backlog to drain", 120)
            seen, readable = [], []
            other = nodes[0].mountpoint / "one"
            (client.mountpoint / "one").mkdir()
            wait_until(other.exists, "the directory on the storage node")
            for i in range(changes):
                data = os.urandom(SIZE)
                there = other / f"f{i}"
                t0 = time.perf_counter()
                with open(client.mountpoint / "one" / f"f{i}", "wb") as fh:
                    fh.write(data)
                while True:
                    with contextlib.suppress(OSError):
                        if there.stat().st_size == SIZE:
                            break
                    time.sleep(0.0002)
                t1 = time.perf_counter()
                assert there.read_bytes() == data
                t2 = time.perf_counter()
                seen.append(t1 - t0)
                readable.append(t2 - t1)
                time.sleep(0.05)
            out["visible_p50"] = 1000 * statistics.median(seen)
            out["visible_p95"] = 1000 * pct(seen, 0.95)
            out["readable_p50"] = 1000 * statistics.median(readable)
            out["readable_p95"] = 1000 * pct(readable, 0.95)
            return out
        finally:
            client.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="dhtfs-bench-") as tmp:
            r = one_run(Path(tmp), args.files, args.changes)
        print("# " + " ".join(f"{k}={v:.2f}" for k, v in r.items()), flush=True)
        runs.append(r)
    units = {"files_per_s": "files/s"}
    for key in runs[0]:
        print(f"figure: {key}={statistics.median(r[key] for r in runs):.2f} "
              f"{units.get(key, 'ms')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
