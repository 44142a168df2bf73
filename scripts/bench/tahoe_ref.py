#!/usr/bin/env python3
"""Tahoe-LAFS reference for the swarm benchmark: put and get of one file on a loopback grid.

Usage (from the repo root; root is not needed)::

    .venv/bin/python scripts/bench/tahoe_ref.py [--quick] [--runs N] [--size-mib M]

or, in the same invocation as the dhtfs figures, ``scripts/bench/swarm.py --with-tahoe``
(same file size as ``replicated_write``). Prints ``# `` lines per run, then::

    figure: tahoe_put=VALUE MB/s
    figure: tahoe_get=VALUE MB/s

VALUE: the median over the runs; MB = 10^6 bytes. The grid, made fresh per invocation in a
temporary directory: one introducer, 4 storage nodes and one client-only node
(``tahoe create-client``), every listener and every advertised location on 127.0.0.1 with a
free port found at start, the client's ``[client]`` encoding 2-of-4 (``shares.needed = 2``,
``shares.happy = 4``, ``shares.total = 4``: one share per storage node, expansion 2x). The
measurement starts only once the client reports all 4 storage servers connected. Per run:

* ``tahoe_put``: SIZE bytes of fresh random data (distinct per run, so convergent encryption
  never finds the shares already stored) sent in 1 MiB pieces to the client's web API,
  ``PUT /uri`` (an immutable CHK file), timed from the request until the response carrying
  the file's read cap, i.e. until every share is placed. The data is generated before the
  timer starts. Checked afterwards: the cap says 2-of-4 and SIZE, and each of the 4 storage
  nodes' share files grew by at least SIZE/2 bytes (one share on every node). Tahoe never
  fsyncs its shares (1.20's storage server has no ``fsync``) and its node directories are
  on TMPDIR, so the put ends in the storage nodes' page cache; dhtfs's ``replicated_write``
  ends in an fsync on 3 nodes (whose state is on a tmpfs there).
* ``tahoe_get``: ``GET /uri/CAP`` of that file on the same client, read in 1 MiB pieces,
  timed from the request to the last byte. Cold: the client keeps no cache of file
  contents, so the shares are fetched from the storage nodes and decoded. The sha256 of the
  bytes received must equal that of the bytes put, or the run fails.

The figures include Tahoe's own costs: encryption (AES), erasure coding and hashing in
Python/C on the client, HTTP between this process and the client node, and HTTPS between
the client and the storage nodes (1.20's default storage protocol; Foolscap is the fallback).

Invariants: tahoe-lafs (pinned, ``TAHOE_VERSION``) lives in its own virtualenv outside the
repository (``$XDG_CACHE_HOME/dhtfs-bench/tahoe-lafs-VERSION``, default under ``~/.cache``;
``DHTFS_BENCH_TAHOE_VENV`` overrides it), installed with pip on first use (about 30 s) and
never into the project's ``.venv``. All traffic stays on 127.0.0.1: every configured
listener is bound to 127.0.0.1 and every advertised location is 127.0.0.1 (Tahoe 1.20 also
opens, unconditionally, an unused furl-protected ``flogtool`` log port on all interfaces;
nothing connects to it). Every tahoe process is stopped (SIGTERM to its process group, then
SIGKILL after 10 s) and the temporary directory removed in ``finally`` blocks, also on
failure, Ctrl-C or SIGTERM; each node's stdin is a pipe from this process, so ``tahoe run``
exits on its own should this process die without cleaning up. Every wait has a deadline.
Progress goes to stderr, ``# `` and ``figure:`` lines to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TAHOE_VERSION = "1.20.0"  # the newest on PyPI; installs and runs on CPython 3.11.7 here
STORAGE_NODES = 4
SHARES_NEEDED = 2
SHARES_TOTAL = 4
PIECE = 1 << 20
STARTUP_TIMEOUT = 120.0
TRANSFER_TIMEOUT = 1800.0


def progress(text: str) -> None:
    print(f"tahoe_ref: {text}", file=sys.stderr, flush=True)


def note(text: str) -> None:
    print(f"# {text}", flush=True)


def venv_dir() -> Path:
    override = os.environ.get("DHTFS_BENCH_TAHOE_VENV")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dhtfs-bench" / f"tahoe-lafs-{TAHOE_VERSION}"


def ensure_tahoe() -> Path:
    """The ``tahoe`` executable of the pinned version, installed into its own venv if need be.

    A venv counts as ready only once ``.installed`` (written after pip succeeded) exists; a
    half-made one is removed and made again.
    """
    venv = venv_dir()
    tahoe = venv / "bin" / "tahoe"
    marker = venv / ".installed"
    if marker.exists() and tahoe.exists():
        return tahoe
    if venv.exists():
        progress(f"removing incomplete venv {venv}")
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    # The base interpreter, not the project's venv, so nothing leaks between the two.
    base = getattr(sys, "_base_executable", None) or sys.executable
    progress(f"creating venv {venv} ({base})")
    subprocess.run([base, "-m", "venv", str(venv)], check=True, stdout=sys.stderr)
    progress(f"installing tahoe-lafs=={TAHOE_VERSION} from PyPI (about 30 s)")
    try:
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "--quiet",
             f"tahoe-lafs=={TAHOE_VERSION}"],
            check=True, stdout=sys.stderr,
        )
        version = subprocess.run([str(tahoe), "--version"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        if TAHOE_VERSION not in version:
            raise RuntimeError(f"installed tahoe reports {version!r}")
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    marker.write_text(version + "\n")
    progress(f"installed {version} in {time.perf_counter() - began:.0f} s")
    return tahoe


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 just now (all held open until all found)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def wait_for(condition: Callable[[], bool], what: str, timeout: float,
             alive: Callable[[], None] = lambda: None) -> None:
    """Poll ``condition`` every 0.1 s until true; ``alive`` raises if a node died."""
    end = time.monotonic() + timeout
    while not condition():
        alive()
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


class Grid:
    """A loopback grid in ``root``: introducer, storage nodes, one client. Use as a context."""

    def __init__(self, tahoe: Path, root: Path) -> None:
        self.tahoe = tahoe
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.client_port = 0

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Grid:
        try:
            self._start()
        except BaseException:
            self._show_logs()
            self.close()
            raise
        return self

    def _show_logs(self) -> None:
        """The last lines of every node's log, on stderr (after a failed start)."""
        for log in sorted(self.root.glob("*/run.log")):
            lines = log.read_text(errors="replace").splitlines()
            noise = ("ing factory", "GET /?t=json")  # connection churn, our own polling
            tail = [line for line in lines if not any(n in line for n in noise)][-8:]
            progress(f"--- {log.parent.name}:\n" + "\n".join(tail))

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self, *args: str) -> None:
        proc = subprocess.run([str(self.tahoe), *args], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"tahoe {' '.join(args)} failed: "
                               f"{(proc.stderr or proc.stdout).strip()[-800:]}")

    def _listen(self, port: int) -> list[str]:
        return ["--listen=tcp", f"--port=tcp:{port}:interface=127.0.0.1",
                f"--location=tcp:127.0.0.1:{port}"]

    def _run(self, name: str) -> None:
        node = self.root / name
        with open(node / "run.log", "wb") as log:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(
                [str(self.tahoe), "run", str(node)], stdin=subprocess.PIPE, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.root / name / "run.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"tahoe node {name} exited ({proc.returncode}):\n{tail}")

    def _start(self) -> None:
        began = time.perf_counter()
        intro_port, client_web, *storage_ports = free_ports(2 + STORAGE_NODES)
        self.client_port = client_web
        progress(f"creating introducer in {self.root}")
        self._create("create-introducer", *self._listen(intro_port),
                     str(self.root / "introducer"))
        self._run("introducer")
        furl_file = self.root / "introducer" / "private" / "introducer.furl"
        wait_for(furl_file.exists, "the introducer's furl", STARTUP_TIMEOUT, self._alive)
        furl = furl_file.read_text().strip()
        progress(f"creating {STORAGE_NODES} storage nodes and the client")
        creating = [
            subprocess.Popen(
                [str(self.tahoe), "create-node", f"--nickname=storage{i}", f"--introducer={furl}",
                 "--webport=none", *self._listen(port), str(self.root / f"storage{i}")],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            for i, port in enumerate(storage_ports)
        ]
        creating.append(subprocess.Popen(
            [str(self.tahoe), "create-client", "--nickname=client", f"--introducer={furl}",
             f"--webport=tcp:{client_web}:interface=127.0.0.1",
             f"--shares-needed={SHARES_NEEDED}", f"--shares-happy={SHARES_TOTAL}",
             f"--shares-total={SHARES_TOTAL}", str(self.root / "client")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        ))
        failed = []
        for proc in creating:
            out, _ = proc.communicate(timeout=STARTUP_TIMEOUT)
            if proc.returncode != 0:
                failed.append(out.decode(errors="replace").strip()[-800:])
        if failed:
            raise RuntimeError("tahoe create-node/create-client failed: " + "\n".join(failed))
        self._check_encoding()
        for i in range(STORAGE_NODES):
            self._run(f"storage{i}")
        self._run("client")
        wait_for(lambda: self.connected_servers() >= STORAGE_NODES,
                 f"the client to connect to {STORAGE_NODES} storage servers", STARTUP_TIMEOUT,
                 self._alive)
        progress(f"grid up: {STORAGE_NODES} storage servers connected "
                 f"({time.perf_counter() - began:.1f} s)")

    def _check_encoding(self) -> None:
        cfg = (self.root / "client" / "tahoe.cfg").read_text()
        for key, value in (("shares.needed", SHARES_NEEDED), ("shares.happy", SHARES_TOTAL),
                           ("shares.total", SHARES_TOTAL)):
            if f"{key} = {value}\n" not in cfg:
                raise RuntimeError(f"client tahoe.cfg lacks '{key} = {value}'")

    def share_bytes(self) -> list[int]:
        """Bytes of share files each storage node holds (``storage/shares``, not incoming)."""
        sizes = []
        for i in range(STORAGE_NODES):
            shares = self.root / f"storage{i}" / "storage" / "shares"
            sizes.append(sum(f.stat().st_size for f in shares.rglob("*")
                             if f.is_file() and "incoming" not in f.relative_to(shares).parts))
        return sizes

    def close(self) -> None:
        """Stop every node: SIGTERM to its process group, SIGKILL after 10 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.stdin:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        self.procs.clear()

    # -- client web API --------------------------------------------------------------------

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.client_port,
                                          timeout=TRANSFER_TIMEOUT)

    def connected_servers(self) -> int:
        conn = self._conn()
        conn.timeout = 5
        try:
            conn.request("GET", "/?t=json")
            resp = conn.getresponse()
            body = resp.read()
        except OSError:
            return 0  # web port not up yet
        finally:
            conn.close()
        if resp.status != 200:
            return 0
        servers = json.loads(body)["servers"]
        return sum(1 for s in servers if s["connection_status"].lower().startswith("connected"))

    def put(self, data: memoryview) -> tuple[str, float]:
        """(read cap, seconds) of ``PUT /uri`` of ``data``."""
        conn = self._conn()
        try:
            began = time.perf_counter()
            conn.putrequest("PUT", "/uri")
            conn.putheader("Content-Length", str(len(data)))
            conn.endheaders()
            for offset in range(0, len(data), PIECE):
                conn.send(data[offset : offset + PIECE])
            resp = conn.getresponse()
            body = resp.read()
            seconds = time.perf_counter() - began
        finally:
            conn.close()
        if resp.status not in (200, 201):
            raise RuntimeError(f"PUT /uri: {resp.status} {body.decode(errors='replace')[:500]}")
        return body.decode().strip(), seconds

    def get(self, cap: str) -> tuple[bytes, int, float]:
        """(sha256 digest, length, seconds) of ``GET /uri/CAP``."""
        conn = self._conn()
        digest = hashlib.sha256()
        length = 0
        try:
            began = time.perf_counter()
            conn.request("GET", f"/uri/{cap}")
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"GET /uri/CAP: {resp.status} {resp.read()[:500]!r}")
            while data := resp.read(PIECE):
                digest.update(data)
                length += len(data)
            seconds = time.perf_counter() - began
        finally:
            conn.close()
        return digest.digest(), length, seconds


@contextlib.contextmanager
def grid(tahoe: Path) -> Iterator[Grid]:
    """A fresh grid in a temporary directory, removed (with every node stopped) afterwards."""
    root = Path(tempfile.mkdtemp(prefix="dhtfs-bench-tahoe-"))
    try:
        with Grid(tahoe, root) as g:
            yield g
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(size: int, runs: int) -> dict[str, float]:
    """Median ``tahoe_put`` / ``tahoe_get`` in MB/s over ``runs`` files of ``size`` bytes."""
    tahoe = ensure_tahoe()
    results: list[dict[str, float]] = []
    mb = size / 1e6
    with grid(tahoe) as g:
        for run in range(runs):
            data = memoryview(os.urandom(size))
            want = hashlib.sha256(data).digest()
            progress(f"run {run + 1}/{runs}: put {size >> 20} MiB")
            before = g.share_bytes()
            cap, put_s = g.put(data)
            if not cap.endswith(f":{SHARES_NEEDED}:{SHARES_TOTAL}:{size}"):
                raise RuntimeError(f"unexpected cap for a {SHARES_NEEDED}-of-{SHARES_TOTAL} "
                                   f"file of {size} bytes: {cap}")
            grown = [b - a for a, b in zip(before, g.share_bytes(), strict=True)]
            if min(grown) < size // SHARES_NEEDED:
                raise RuntimeError(f"not one share per storage node: bytes added {grown}")
            progress(f"run {run + 1}/{runs}: get")
            got, length, get_s = g.get(cap)
            if length != size or got != want:
                raise RuntimeError(f"tahoe get returned {length} bytes that differ from the put")
            fig = {"tahoe_put": mb / put_s, "tahoe_get": mb / get_s}
            note(f"run {run + 1}: " + " ".join(f"{k}={v:.3g}" for k, v in fig.items())
                 + f" (put {put_s:.2f} s, get {get_s:.2f} s, {size} bytes)")
            results.append(fig)
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def figure_lines(figures: dict[str, float]) -> list[str]:
    return [f"figure: {key}={value:.4g} MB/s" for key, value in figures.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 run of 64 MiB")
    p.add_argument("--runs", type=int, help="default 3 (1 with --quick)")
    p.add_argument("--size-mib", type=int, help="default 256 (64 with --quick)")
    args = p.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    size = (args.size_mib or (64 if args.quick else 256)) << 20

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # so the finally blocks stop the nodes

    signal.signal(signal.SIGTERM, on_term)
    try:
        figures = measure(size, runs)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"tahoe_ref.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tahoe_ref.py: interrupted (grid stopped, temporary directory removed)",
              file=sys.stderr)
        return 130
    for line in figure_lines(figures):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
