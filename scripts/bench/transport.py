#!/usr/bin/env python3
"""Transport benchmark: CPU per MB of a block crossing one TLS connection, both ends in one
process, beside what the hardware needs for the same bytes.

Usage (from the repo root, with the venv's interpreter; no root needed)::

    .venv/bin/python scripts/bench/transport.py [--quick] [--runs N] [--blocks B]

Two ``dhtfs.net.transport.Transport``s on 127.0.0.2 and 127.0.0.3 (certificates of a fresh
swarm CA), 4 calls in flight, blocks of 1 MiB; per run:

* ``transport_put`` / ``transport_put_cpu``: B requests carrying a block (PUT_CHUNK's shape:
  ``{"id", "data"}``, answered ``{"stored": true}``), MB/s and CPU ms per MB (user + system of
  the process: sender and receiver together: framing, TLS, kernel, copies);
* ``transport_get`` / ``transport_get_cpu``: B requests answered with a block (GET_CHUNK's
  shape);
* the reference, same run: ``floor_cpu``, the CPU per MB of what the same bytes need at
  least: AES-256-GCM encryption and decryption (TLS 1.3's cipher here; ``cryptography``'s
  AESGCM) plus a plain TCP send and receive over loopback (``sendall`` / ``recv_into``, one
  thread each).

Prints ``figure: NAME=VALUE UNIT`` lines (medians over runs; each run first as a ``# `` line).
``--quick``: 3 runs of 64 blocks. The process tunes malloc as a daemon does.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from dhtfs.base.malloc import tune_malloc  # noqa: E402
from dhtfs.net.network import Contact, Message  # noqa: E402
from dhtfs.net.transport import Transport  # noqa: E402
from dhtfs.trust import pki  # noqa: E402
from testkit.nodehelpers import make_identity  # noqa: E402

MIB = 1 << 20
IN_FLIGHT = 4
BLOCK = os.urandom(MIB)


def cpu() -> float:
    t = os.times()
    return t.user + t.system


async def handler(caller: Contact, method: str, args: Message) -> Message:
    return {"data": BLOCK} if method == "GET" else {"stored": True}


async def transport_run(work: Path, blocks: int) -> dict[str, float]:
    ca = work / "ca"
    pki.init_ca(ca)
    a = Transport(make_identity(ca, work / "a"), "127.0.0.2", 0, handler=handler)
    b = Transport(make_identity(ca, work / "b"), "127.0.0.3", 0, handler=handler)
    fig: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        await a.call(b.local, "PING", {}, timeout=10)
        for method in ("PUT", "GET"):
            args: Message = {"id": bytes(32), "data": BLOCK} if method == "PUT" else {
                "id": bytes(32)}

            async def worker(count: int, method: str = method, args: Message = args) -> None:
                for _ in range(count):
                    ans = await a.call(b.local, method, args, timeout=60)
                    if method == "GET" and len(ans["data"]) != MIB:
                        raise RuntimeError("short block")

            used, began = cpu(), time.perf_counter()
            async with trio.open_nursery() as calls:
                for _ in range(IN_FLIGHT):
                    calls.start_soon(worker, blocks // IN_FLIGHT)
            mb = (blocks // IN_FLIGHT) * IN_FLIGHT * MIB / 1e6
            name = f"transport_{method.lower()}"
            fig[name] = mb / (time.perf_counter() - began)
            fig[f"{name}_cpu"] = (cpu() - used) / mb * 1e3
        nursery.cancel_scope.cancel()
    return fig


def floor_cpu(blocks: int) -> float:
    """CPU ms per MB of AES-256-GCM both ways plus a loopback TCP send and receive."""
    aead = AESGCM(os.urandom(32))
    nonce, sealed = os.urandom(12), bytearray(MIB + 16)
    srv = socket.create_server(("127.0.0.1", 0))
    got = bytearray(256 * 1024)

    def receive(conn: socket.socket) -> None:
        left = blocks * MIB
        while left > 0:
            left -= conn.recv_into(got)

    used = cpu()
    for _ in range(blocks):
        aead.encrypt_into(nonce, BLOCK, None, sealed)
        aead.decrypt(nonce, sealed, None)
    with socket.create_connection(srv.getsockname()) as out:
        conn, _ = srv.accept()
        rx = threading.Thread(target=receive, args=(conn,))
        rx.start()
        for _ in range(blocks):
            out.sendall(BLOCK)
        rx.join()
        conn.close()
    srv.close()
    return (cpu() - used) / (blocks * MIB / 1e6) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int)
    p.add_argument("--blocks", type=int)
    args = p.parse_args(argv)
    runs = args.runs or 3
    blocks = args.blocks or (64 if args.quick else 256)
    tune_malloc()
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="dhtfs-bench-transport-") as tmp:
        for run in range(runs):
            work = Path(tmp) / f"run{run}"
            work.mkdir()
            fig = trio.run(transport_run, work, blocks)
            fig["floor_cpu"] = floor_cpu(blocks)
            line = " ".join(f"{k}={v:.3g}" for k, v in fig.items())
            print(f"# run {run + 1}: {line}", flush=True)
            results.append(fig)
    for key in results[0]:
        value = statistics.median(r[key] for r in results)
        print(f"figure: {key}={value:.4g} {'ms/MB' if key.endswith('cpu') else 'MB/s'}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
