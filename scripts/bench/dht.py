#!/usr/bin/env python3
"""DHT benchmark on loopback: real dhtfs nodes (TLS transport, encrypted stores) vs the PyPI
``kademlia`` library (bmuller, asyncio/UDP), same N, same operations.

Prints one line per figure: ``figure: NAME=VALUE UNIT`` (success rates: ``…_success=FRACTION``).

How it runs on a small machine: N nodes are hosted by W worker processes (W = N/32, at least
2; each worker one ``trio.run`` with N/W nodes, each node its own 127.0.x.y address, port 0,
own TLS identity and encrypted BlockStore, ephemeral key). The driver sends puts and gets to
random nodes through the workers' control sockets (``dhtfs.net.control``), CONCURRENCY at a
time. A get asks a node other than the one that put the block. Two timings per operation:

- ``dhtfs_nN_{put,get}_SIZE_p50/p95``: end to end as the driver sees it, including the
  control socket's round trip to the worker process;
- ``dhtfs_nN_{put,get}_SIZE_node_p50/p95``: inside the node (the control answer's
  ``elapsed``), measured the way the kademlia reference is: around the call, in-process.

A put returns once its R copies are stored; its provider announcements finish in the
background, and the driver waits for every node to be idle before the next phase (as the
kademlia reference's set returns after its STOREs). The kademlia reference hosts its N servers
in one asyncio process (it is light: no crypto, UDP) and does the same number of set/get of
1 KiB values from random servers, CONCURRENCY at a time. Throughput: two single-node
processes, 1 MiB GET/PUT-sized requests over one TLS connection.

    scripts/bench/dht.py            N=64,256; 200 ops per kind; every node refreshes its
                                    buckets once all are up (~2 min here, plus ~4 min for
                                    dht_sim.py at 1,000 and 10,000 nodes)
    scripts/bench/dht.py --quick    N=32,64; 40 ops per kind, no refresh (~35 s here,
                                    dht_sim.py --quick included)
    --sizes 16,64 --ops 20          for a smoke run; --no-sim skips dht_sim.py

Where the time goes (2 shared cores): starting N nodes costs a few dozen TLS 1.3 handshakes per
node (~1.7 ms of OpenSSL 3.0 CPU each, both ends) plus the joins' lookups; at N=256 with the
refresh that is 75-85 s here, so the quick mode stops at N=64. The per-operation figures are
measured after start-up. Beside the get figures, one ``#`` line per phase says how the gets
went (``BlockNode.get_block_detailed``): served locally, inline by FIND_VALUE or fetched by
GET_CHUNK; lookup RPCs, sequential hops and new connections (TLS handshakes) per get. On this
2-core machine a get's latency is mostly CPU queueing (4 at a time, driver and workers
sharing the cores), so fewer RPCs per get and fewer handshakes are what made gets faster.
Measured run times: full ~2 min (+ ~4 min simulator), ``--quick`` ~33 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from dhtfs.base.malloc import tune_malloc  # noqa: E402
from dhtfs.trust import pki  # noqa: E402

CONCURRENCY = 4
KIB, MIB = 1024, 1024 * 1024


def figure(name: str, value: float, unit: str = "") -> None:
    text = f"{value:.3f}" if unit in ("fraction", "") else f"{value:.1f}"
    print(f"figure: {name}={text} {unit}".rstrip(), flush=True)


def host_of(i: int) -> str:
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- worker: many dhtfs nodes in one process ---------------------------------------------------


async def worker_main(args: argparse.Namespace) -> None:
    from dhtfs.blocks.node import BlockNode
    from dhtfs.net.control import ControlServer
    from dhtfs.net.transport import Transport
    from dhtfs.store.blockstore import BlockStore
    from dhtfs.store.masterkey import load_master_key

    raise_fd_limit()
    tune_malloc()
    root = Path(args.dir)
    idents = []
    for line in Path(args.idents).read_text().split("\n"):
        if line:
            host, cert, key = line.split()
            idents.append((host, pki.Identity.load(Path(args.ca), Path(cert), Path(key))))
    nodes: list[BlockNode] = []
    async with trio.open_nursery() as nursery:
        for i, (host, ident) in enumerate(idents):
            transport = Transport(ident, host, 0)
            await nursery.start(transport.serve)
            store = BlockStore(root / f"chunks{i}", load_master_key("ephemeral", root))
            node = BlockNode(transport, store)
            transport.handler = node.handle
            nodes.append(node)
        own = f"{nodes[0].contact.host}:{nodes[0].contact.port}"
        seeds = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in (args.seed or own).split(","))]
        limiter = trio.CapacityLimiter(8)
        rng = random.Random(own)

        async def join(node: BlockNode) -> None:
            async with limiter:
                await node.join_addresses([rng.choice(seeds)])

        async with trio.open_nursery() as joins:
            for node in nodes if args.seed else nodes[1:]:
                joins.start_soon(join, node)
        control = root / "control.sock"
        await nursery.start(ControlServer(nodes).serve, control)
        for node in nodes:
            nursery.start_soon(node.run_maintenance)
        print(f"ready control={control} nodes={len(nodes)} seed={own}", flush=True)


# -- driver ------------------------------------------------------------------------------------


def workers_for(n: int) -> int:
    """Worker processes for N nodes: 32 nodes each, at least 2. Fewer processes than cores x 2
    means fewer cross-process wake-ups per RPC (measured at N=64: 2 workers used ~15% less
    CPU per get than 4)."""
    return max(2, n // 32)


def start_workers(n: int, workers: int, tmp: Path) -> list[tuple[subprocess.Popen, Path, int]]:
    ca_dir = tmp / "ca"
    pki.init_ca(ca_dir)
    procs: list[tuple[subprocess.Popen, Path, int]] = []
    per = [n // workers + (1 if w < n % workers else 0) for w in range(workers)]
    index = 0
    seeds: list[str] = []  # node 0 of every worker started so far: joins spread over them
    for w in range(workers):
        wdir = tmp / f"w{w}"
        wdir.mkdir()
        lines = []
        for _ in range(per[w]):
            cert, key, _ = pki.issue_node_cert(ca_dir, f"n{index}", wdir)
            lines.append(f"{host_of(index)} {cert} {key}")
            index += 1
        (wdir / "idents").write_text("\n".join(lines) + "\n")
        argv = [sys.executable, __file__, "--worker", "--dir", str(wdir), "--ca",
                str(ca_dir / "ca.crt"), "--idents", str(wdir / "idents")]
        if seeds:
            argv += ["--seed", ",".join(seeds)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
        procs.append((proc, wdir / "control.sock", per[w]))
        # one worker at a time: a 2-core machine cannot do hundreds of joins (each a few
        # lookups and dozens of fresh TLS handshakes) at once without RPCs timing out
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"worker {w} failed: {line!r}")
        seeds.append(line.split("seed=")[1].strip())
    return procs


async def refresh_all(procs: list[tuple[subprocess.Popen, Path, int]]) -> None:
    """Once all are up, every node refreshes every bucket (what the periodic refresh would do
    later): nodes that joined early learn of those that joined after them."""
    from dhtfs.net.control import ControlClient

    async def worker(path: Path, indexes: list[int]) -> None:
        client = await ControlClient.connect(path)
        try:
            for i in indexes:
                await client.call("refresh", {"node": i}, timeout=120)
        finally:
            await client.aclose()

    async with trio.open_nursery() as nursery:
        for _, path, count in procs:
            for lane in range(2):
                nursery.start_soon(worker, path, list(range(lane, count, 2)))


def stop_workers(procs: list[tuple[subprocess.Popen, Path, int]]) -> None:
    for proc, _, _ in procs:
        proc.kill()
    for proc, _, _ in procs:
        proc.wait()


def summarize(prefix: str, results: list[tuple[bool, float]], success: bool = True) -> None:
    ok = [t for good, t in results if good]
    if success:
        figure(f"{prefix}_success", len(ok) / max(1, len(results)), "fraction")
    if ok:
        figure(f"{prefix}_p50", statistics.median(ok) * 1000, "ms")
        figure(f"{prefix}_p95", sorted(ok)[min(len(ok) - 1, int(0.95 * len(ok)))] * 1000, "ms")


@dataclass
class Phase:
    """One size class of the dhtfs run: what was put where, and the timings (end to end as
    the driver saw them, and inside the node as the control answer's ``elapsed`` says)."""

    targets: list[tuple[Path, int]]
    blobs: list[bytes]
    putters: list[int]
    rng: random.Random
    ids: list[bytes | None] = field(default_factory=list)
    puts: list[tuple[bool, float]] = field(default_factory=list)
    gets: list[tuple[bool, float]] = field(default_factory=list)
    puts_node: list[tuple[bool, float]] = field(default_factory=list)
    gets_node: list[tuple[bool, float]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    # per get: where the bytes came from, lookup RPCs, sequential RPCs, connections dialed
    how: list[tuple[str, int, int, int]] = field(default_factory=list)


async def run_jobs(phase: Phase, jobs: list[int], op: str) -> None:
    """Do ``op`` (put/get) for ``jobs`` one after the other, timing each end to end."""
    from dhtfs.net.control import ControlClient

    clients: dict[Path, ControlClient] = {}
    try:
        for j in jobs:
            if op == "put":
                path, idx = phase.targets[phase.putters[j]]
            else:
                other = phase.rng.randrange(len(phase.targets) - 1)
                other += other >= phase.putters[j]
                path, idx = phase.targets[other]
            if path not in clients:
                clients[path] = await ControlClient.connect(path)
            t0 = time.perf_counter()
            inside = 0.0
            try:
                if op == "put":
                    ans = await clients[path].call(
                        "put", {"data": phase.blobs[j], "node": idx}, timeout=60)
                    phase.ids[j] = ans["id"]
                    good = bool(ans["complete"])
                elif phase.ids[j] is None:
                    good = False
                else:
                    ans = await clients[path].call(
                        "get", {"id": phase.ids[j], "node": idx}, timeout=60)
                    good = ans["data"] == phase.blobs[j]
                    phase.how.append((ans["source"], ans["queries"], ans["hops"], ans["dials"]))
                inside = ans["elapsed"]
            except Exception as exc:
                good = False
                what = f"{op}: {str(exc)[:40]}"
                phase.errors[what] = phase.errors.get(what, 0) + 1
                await clients.pop(path).aclose()
            elapsed = time.perf_counter() - t0
            (phase.puts if op == "put" else phase.gets).append((good, elapsed))
            (phase.puts_node if op == "put" else phase.gets_node).append((good, inside))
    finally:
        for c in clients.values():
            await c.aclose()


async def settle(procs: list[tuple[subprocess.Popen, Path, int]], limit: float = 60.0) -> None:
    """Wait (at most ``limit`` s) until no node has background work left: a put returns once
    its R copies are stored and announces the block afterwards, so the next phase starts on a
    quiet swarm, as it does after the kademlia reference's sets (which return after their
    STOREs)."""
    from dhtfs.net.control import ControlClient

    with trio.move_on_after(limit):
        for _, path, _ in procs:
            client = await ControlClient.connect(path)
            try:
                while (await client.call("pending", {}, timeout=10))["background"]:
                    await trio.sleep(0.05)
            finally:
                await client.aclose()


async def drive(procs: list[tuple[subprocess.Popen, Path, int]], n: int, ops: int) -> None:
    targets = [(path, i) for _, path, count in procs for i in range(count)]
    rng = random.Random(n)
    for size, label in ((KIB, "1KiB"), (MIB, "1MiB")):
        phase = Phase(targets, [os.urandom(size) for _ in range(ops)],
                      [rng.randrange(len(targets)) for _ in range(ops)], rng, [None] * ops)
        for op in ("put", "get"):
            async with trio.open_nursery() as nursery:
                for w in range(CONCURRENCY):
                    nursery.start_soon(run_jobs, phase, list(range(w, ops, CONCURRENCY)), op)
            await settle(procs)
        summarize(f"dhtfs_n{n}_put_{label}", phase.puts)
        summarize(f"dhtfs_n{n}_get_{label}", phase.gets)
        summarize(f"dhtfs_n{n}_put_{label}_node", phase.puts_node, success=False)
        summarize(f"dhtfs_n{n}_get_{label}_node", phase.gets_node, success=False)
        how = phase.how
        if how:
            sources = {s: sum(1 for h in how if h[0] == s) / len(how)
                       for s in ("local", "inline", "fetched")}
            print(f"# n={n} get {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in sources.items())
                  + f"; per get: {statistics.mean(h[1] for h in how):.2f} lookup RPCs, "
                  f"{statistics.mean(h[2] for h in how):.2f} hops, "
                  f"{statistics.mean(h[3] for h in how):.2f} new connections", flush=True)
        for what, count in sorted(phase.errors.items()):
            print(f"# n={n} {label} {count} x {what}", file=sys.stderr)


# -- the kademlia library reference -------------------------------------------------------------


async def kademlia_main(n: int, ops: int) -> None:
    import logging

    from kademlia.network import Server

    logging.getLogger("kademlia").setLevel(logging.CRITICAL)
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    servers = []
    for i in range(n):
        s = Server()
        await s.listen(0, interface=host_of(i))
        servers.append(s)
    seed = servers[0].transport.get_extra_info("sockname")[:2]
    sem = asyncio.Semaphore(16)

    async def join(s: Server) -> None:
        async with sem:
            await s.bootstrap([seed])

    await asyncio.gather(*(join(s) for s in servers[1:]))
    rng = random.Random(n)
    values = [os.urandom(KIB) for _ in range(ops)]
    setters = [rng.randrange(n) for _ in range(ops)]
    set_results: list[tuple[bool, float]] = []
    get_results: list[tuple[bool, float]] = []

    async def op(kind: str, j: int) -> None:
        async with limit:
            if kind == "set":
                t0 = time.perf_counter()
                ok = await servers[setters[j]].set(f"key{j}", values[j])
                set_results.append((bool(ok), time.perf_counter() - t0))
            else:
                other = (setters[j] + 1 + rng.randrange(n - 1)) % n
                t0 = time.perf_counter()
                got = await servers[other].get(f"key{j}")
                get_results.append((got == values[j], time.perf_counter() - t0))

    limit = asyncio.Semaphore(CONCURRENCY)
    await asyncio.gather(*(op("set", j) for j in range(ops)))
    await asyncio.gather(*(op("get", j) for j in range(ops)))
    summarize(f"kademlia_n{n}_set_1KiB", set_results)
    summarize(f"kademlia_n{n}_get_1KiB", get_results)
    for s in servers:
        s.stop()


# -- throughput between two nodes --------------------------------------------------------------


async def tput_server(args: argparse.Namespace) -> None:
    from dhtfs.net.transport import Transport

    tune_malloc()
    data = os.urandom(MIB)

    async def handler(caller, method, msg):  # type: ignore[no-untyped-def]
        return {"data": data} if method == "get" else {"n": len(msg.get("data", b""))}

    ident = pki.Identity.load(Path(args.ca), Path(args.cert), Path(args.key))
    t = Transport(ident, "127.0.0.1", 0, handler=handler)
    async with trio.open_nursery() as nursery:
        local = await nursery.start(t.serve)
        print(f"{local.node_id.hex()} {local.port}", flush=True)


async def tput_client(ca_dir: Path, peer_id: bytes, port: int, rounds: int) -> None:
    from dhtfs.net.network import Contact
    from dhtfs.net.transport import Transport

    cert, key, _ = pki.issue_node_cert(ca_dir, "client")
    ident = pki.Identity.load(ca_dir / "ca.crt", cert, key)
    t = Transport(ident, "127.0.0.1", 0)
    peer = Contact(peer_id, "127.0.0.1", port)
    payload = os.urandom(MIB)
    async with trio.open_nursery() as nursery:
        await nursery.start(t.serve)
        await t.call(peer, "get", {}, timeout=10)
        for method in ("get", "put"):
            for conc in (1, 4):
                t0 = time.perf_counter()

                async def worker(count: int, method: str = method) -> None:
                    for _ in range(count):
                        await t.call(peer, method, {"data": payload} if method == "put" else {},
                                     timeout=30)

                async with trio.open_nursery() as workers:
                    for _ in range(conc):
                        workers.start_soon(worker, rounds // conc)
                rate = (rounds // conc) * conc * MIB / (time.perf_counter() - t0) / 1e6
                figure(f"dhtfs_tls_1MiB_{method}_c{conc}_throughput", rate, "MB/s")
        nursery.cancel_scope.cancel()


def throughput(tmp: Path, rounds: int) -> None:
    tune_malloc()  # both ends as ``dhtfs node`` runs: megabyte buffers reused, not re-faulted
    ca_dir = tmp / "tput-ca"
    pki.init_ca(ca_dir)
    cert, key, _ = pki.issue_node_cert(ca_dir, "server")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--tput-server", "--ca", str(ca_dir / "ca.crt"),
         "--cert", str(cert), "--key", str(key)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        peer_hex, port = proc.stdout.readline().split()
        trio.run(tput_client, ca_dir, bytes.fromhex(peer_hex), int(port), rounds)
    finally:
        proc.kill()
        proc.wait()


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", help="comma-separated N values (default 64,256; quick 32,64)")
    p.add_argument("--no-sim", action="store_true", help="skip scripts/bench/dht_sim.py")
    p.add_argument("--ops", type=int, help="operations per kind (default 200, quick 40)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tput-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kademlia", type=int, help=argparse.SUPPRESS)
    for hidden in ("--dir", "--ca", "--idents", "--seed", "--cert", "--key"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    ops = args.ops or (40 if args.quick else 200)
    if args.worker:
        trio.run(worker_main, args)
        return 0
    if args.tput_server:
        trio.run(tput_server, args)
        return 0
    if args.kademlia:
        raise_fd_limit()
        asyncio.run(kademlia_main(args.kademlia, ops))
        return 0
    raise_fd_limit()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dhtfs-bench-dht-") as tmp_name:
        tmp = Path(tmp_name)
        throughput(tmp, 40 if args.quick else 200)
        sizes = args.sizes or ("32,64" if args.quick else "64,256")
        for n in (int(x) for x in sizes.split(",")):
            ndir = tmp / f"n{n}"
            ndir.mkdir()
            t0 = time.perf_counter()
            procs = start_workers(n, workers_for(n), ndir)
            try:
                if not args.quick:
                    trio.run(refresh_all, procs)
                figure(f"dhtfs_n{n}_startup", time.perf_counter() - t0, "s")
                trio.run(drive, procs, n, ops)
            finally:
                stop_workers(procs)
            subprocess.run([sys.executable, __file__, "--kademlia", str(n), "--ops", str(ops)],
                           check=False, cwd=REPO)
    figure("dht_bench_wall", time.perf_counter() - t_start, "s")
    sim = REPO / "scripts" / "bench" / "dht_sim.py"
    if sim.exists() and not args.no_sim:
        flags = ["--quick"] if args.quick else []
        out = subprocess.run([sys.executable, str(sim), *flags], capture_output=True, text=True,
                             cwd=REPO, check=False)
        for line in out.stdout.splitlines():
            if line.startswith("figure:"):
                print(line, flush=True)
        if out.returncode:
            print(f"# dht_sim.py exited {out.returncode}: {out.stderr[-500:]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
