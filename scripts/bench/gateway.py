#!/usr/bin/env python3
"""The HTTP gateway (``-o http``) against reading the same files through the mount, and
against nginx serving copies of them from the same disk, side by side in one run.

Usage (as root, from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/bench/gateway.py [--quick] [--runs N] [--size-mib M]
                                              [--files F] [--rounds R]

Per run, on a fresh swarm of 2 storage nodes (state under /var/tmp, the real disk) holding a
SIZE MiB file and F files of 4 KiB written on node0, and two fresh client-only mounts
(``storage=false``: they hold nothing), G (with the gateway) and M:

* ``get_cold`` / ``mount_read_cold``: the large file by one GET from G's gateway (every block
  fetched from the storage nodes), and read (1 MiB reads) through M's mount, MB/s;
  ``get_cold_ratio`` = get / mount read (target >= 0.8);
* ``get_warm`` / ``mount_read_warm``: the same again on G, by GET and through G's own
  mount (its blocks are now cached there), MB/s; ``get_warm_ratio``;
* ``..._cpu``: CPU time (user + system, all threads) the serving mount used meanwhile, ms/MB;
* ``small_gets`` / ``nginx_small_gets``: F x R GETs of the 4 KiB files, 100 at a time
  (``curl --parallel --parallel-max 100``), from G's gateway and from nginx serving copies of
  the same files from a directory on the same disk, requests/s; ``small_gets_ratio``
  (target >= 0.5); ``small_gets_cpu``: G's CPU per request, ms. nginx figures are left out
  (with a note) when nginx is not installed.

``--quick``: 1 run, 64 MiB, 100 files, 5 rounds. Every mount and daemon it starts is removed
in ``finally`` blocks. Figures measured while other jobs share the machine move with them:
the CPU per unit of work moves less.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from testkit import swarmctl  # noqa: E402
from testkit.mounting import Mount  # noqa: E402
from testkit.observe import control, member_options, write_fsynced  # noqa: E402
from testkit.wait import wait_until  # noqa: E402

MIB = 1 << 20
SMALL = 4096
PARALLEL = 100


def note(text: str) -> None:
    print(f"# {text}", flush=True)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_drain(source: Callable[[], Any], what: str, size: int) -> float:
    """Seconds to read everything ``source()`` opens (1 MiB reads); it must be ``size``."""
    t0 = time.perf_counter()
    got = 0
    with source() as fh:
        while piece := fh.read(MIB):
            got += len(piece)
    seconds = time.perf_counter() - t0
    if got != size:
        raise RuntimeError(f"{what}: {got} bytes, expected {size}")
    return seconds


def parallel_gets(urls: list[str], work: Path) -> float:
    """Seconds for curl to GET every URL, ``PARALLEL`` at a time; each must be 4 KiB."""
    config = work / "curl.conf"
    config.write_text("".join(f'url = "{u}"\noutput = "/dev/null"\n' for u in urls))
    t0 = time.perf_counter()
    res = subprocess.run(["curl", "-sS", "--fail", "--parallel", "--parallel-max",
                          str(PARALLEL), "-K", str(config), "-w", "%{size_download}\n"],
                         capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - t0
    sizes = res.stdout.split()
    if res.returncode != 0 or len(sizes) != len(urls) or set(sizes) != {str(SMALL)}:
        raise RuntimeError(f"curl: exit {res.returncode}, {res.stderr[-300:]}")
    return seconds


class Nginx:
    """nginx serving ``root`` on a loopback port, as this user, with its own prefix."""

    def __init__(self, root: Path, work: Path, port: int) -> None:
        self.work = work
        self.port = port
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.conf = work / "nginx.conf"
        self.conf.write_text(
            f"daemon off; user root; worker_processes 1; pid {work}/nginx.pid;\n"
            f"error_log {work}/error.log;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{ access_log off; sendfile on; keepalive_requests 100000;\n"
            f"  client_body_temp_path {work}/b; proxy_temp_path {work}/p;\n"
            f"  fastcgi_temp_path {work}/f; uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;\n"
            f"  server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Nginx:
        self.proc = subprocess.Popen(["nginx", "-c", str(self.conf), "-p", str(self.work)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _answers(f"http://127.0.0.1:{self.port}/"), "nginx")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def client(tmp: Path, root: Path, nodes: list[swarmctl.NodeInfo], name: str, host: str,
           extra: list[str]) -> Mount:
    seeds = "bootstrap=" + "+".join(n.address for n in nodes)
    mount = Mount(tmp / f"{name}-mnt", tmp / f"{name}-state", options=[
        *member_options(root / "ca", name, tmp / name), f"listen={host}:0", seeds,
        "storage=false", *extra])
    mount.start()
    wait_until(lambda: control(mount.state, "status")["peers"] >= 2, f"{name} joined")
    return mount


def one_run(tmp: Path, size: int, files: int, rounds: int) -> dict[str, float]:
    root = tmp / "swarm"
    out: dict[str, float] = {}
    with swarmctl.running_swarm(root, 2) as nodes:
        data = os.urandom(size)
        write_fsynced(nodes[0].mountpoint / "big.bin", data)
        small = nodes[0].mountpoint / "small"
        small.mkdir()
        copies = tmp / "nginx-root" / "small"
        copies.mkdir(parents=True)
        for i in range(files):
            blob = os.urandom(SMALL)
            write_fsynced(small / f"f{i}", blob)
            (copies / f"f{i}").write_bytes(blob)
        g = client(tmp, root, nodes, "gw", "127.0.0.80", ["http=127.0.0.1:0"])
        m = client(tmp, root, nodes, "reader", "127.0.0.81", [])
        try:
            for mount in (g, m):
                wait_until(lambda mount=mount: (mount.mountpoint / "big.bin").exists()
                           and (mount.mountpoint / "big.bin").stat().st_size == size
                           and len(os.listdir(mount.mountpoint / "small")) == files,
                           "the files on the clients")
            base = "http://" + control(g.state, "status")["http"]["address"]
            mb = size / 1e6
            for phase, reader, target in (("cold", m, m.mountpoint / "big.bin"),
                                          ("warm", g, g.mountpoint / "big.bin")):
                c0 = cpu_seconds(g.proc.pid)
                seconds = timed_drain(
                    lambda: urllib.request.urlopen(f"{base}/big.bin", timeout=600), "GET", size)
                out[f"get_{phase}"] = mb / seconds
                out[f"get_{phase}_cpu"] = 1000 * (cpu_seconds(g.proc.pid) - c0) / mb
                c0 = cpu_seconds(reader.proc.pid)
                seconds = timed_drain(lambda t=target: open(t, "rb", buffering=0),  # noqa: SIM115
                                      str(target),
                                      size)
                out[f"mount_read_{phase}"] = mb / seconds
                out[f"mount_read_{phase}_cpu"] = 1000 * (cpu_seconds(reader.proc.pid) - c0) / mb
                out[f"get_{phase}_ratio"] = out[f"get_{phase}"] / out[f"mount_read_{phase}"]
            urls = [f"{base}/small/f{i}" for i in range(files)] * rounds
            parallel_gets(urls[:files], tmp)  # warm: every file read once
            c0 = cpu_seconds(g.proc.pid)
            seconds = parallel_gets(urls, tmp)
            out["small_gets"] = len(urls) / seconds
            out["small_gets_cpu"] = 1000 * (cpu_seconds(g.proc.pid) - c0) / len(urls)
            if shutil.which("nginx"):
                with Nginx(tmp / "nginx-root", tmp / "nginx", 18080 + os.getpid() % 1000):
                    nurls = [f"http://127.0.0.1:{18080 + os.getpid() % 1000}/small/f{i}"
                             for i in range(files)] * rounds
                    parallel_gets(nurls[:files], tmp)
                    out["nginx_small_gets"] = len(nurls) / parallel_gets(nurls, tmp)
                out["small_gets_ratio"] = out["small_gets"] / out["nginx_small_gets"]
        finally:
            g.close()
            m.close()
    return out


UNITS = {"cpu": "ms/MB", "ratio": "x", "small_gets": "req/s", "small_gets_cpu": "ms/req"}


def unit_of(key: str) -> str:
    if key in UNITS:
        return UNITS[key]
    return UNITS.get(key.rsplit("_", 1)[-1], "MB/s" if "gets" not in key else "req/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.size_mib, args.files, args.rounds = 1, 64, 100, 5
    if not shutil.which("nginx"):
        note("nginx is not installed (apt-get install nginx): its figures are left out")
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="dhtfs-bench-gw-", dir="/var/tmp") as tmp:
            result = one_run(Path(tmp), args.size_mib * MIB, args.files, args.rounds)
        note(f"run {i + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.items())))
        runs.append(result)
    for key in sorted(runs[0]):
        value = statistics.median(r[key] for r in runs)
        print(f"figure: {key}={value:.4g} {unit_of(key)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
