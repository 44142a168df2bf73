"""Tier 5: the HTTP gateway (``-o http=127.0.0.1:0``) of one node of a 3-node swarm, the files
written on another node, every rule checked with Debian's curl: whole GETs byte-exact, HEAD,
single/suffix/multiple ranges (``multipart/byteranges`` parsed), 416, 304, a file changed
while a client holds its old ETag (If-None-Match and If-Range), percent-encoded names with
spaces and UTF-8, listings (HTML and JSON), ``/.blocks/<id>``, 404, 405, path escapes."""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit import swarmctl
from testkit.observe import blocks_of, control, write_fsynced
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]
MIB = 1 << 20


def curl(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """``curl -i`` (status, headers with lower-cased names, body)."""
    out = subprocess.run(["curl", "-sS", "-i", "--http1.1", "--max-time", "120", *args, url],
                         capture_output=True, check=True, timeout=180).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    msg = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert msg.is_multipart(), content_type
    return [(p["Content-Range"], p.get_payload(decode=True)) for p in msg.get_payload()]


def test_gateway_serves_the_swarm_tree(tmp_path: Path) -> None:
    with swarmctl.running_swarm(tmp_path / "swarm", 3, "replicas=2",
                                {"node1": "http=127.0.0.1:0,metrics=127.0.0.1:0"}) as nodes:
        writer, gateway = nodes[0], nodes[1]
        wait_until(lambda: control(gateway.state, "status")["http"].get("address"),
                   "the gateway's address in dhtfs status")
        base = "http://" + control(gateway.state, "status")["http"]["address"]
        big = os.urandom(5 * MIB + 12345)
        write_fsynced(writer.mountpoint / "big.bin", big)
        (writer.mountpoint / "a dir").mkdir()
        write_fsynced(writer.mountpoint / "a dir" / "é x.txt", b"hello, world\n")
        os.symlink("/etc/passwd", writer.mountpoint / "out")
        seen = gateway.mountpoint / "a dir" / "é x.txt"
        wait_until(lambda: seen.exists() and (gateway.mountpoint / "big.bin").exists()
                   and (gateway.mountpoint / "big.bin").stat().st_size == len(big)
                   and os.path.islink(gateway.mountpoint / "out"), "the files on the gateway")

        # whole GET, HEAD
        status, h, body = curl(f"{base}/big.bin")
        assert status == 200 and body == big
        assert h["accept-ranges"] == "bytes" and int(h["content-length"]) == len(big)
        etag = h["etag"]
        status, hh, body = curl(f"{base}/big.bin", "-I")
        assert status == 200 and body == b"" and hh["etag"] == etag
        assert hh["content-length"] == h["content-length"] and "last-modified" in hh

        # ranges: one across a chunk boundary, a suffix, several, unsatisfiable
        status, h, body = curl(f"{base}/big.bin", "-r", f"{MIB - 10}-{MIB + 9}")
        assert status == 206 and body == big[MIB - 10 : MIB + 10]
        assert h["content-range"] == f"bytes {MIB - 10}-{MIB + 9}/{len(big)}"
        status, _, body = curl(f"{base}/big.bin", "-H", "Range: bytes=-1000")
        assert status == 206 and body == big[-1000:]
        status, h, body = curl(f"{base}/big.bin", "-r", f"0-99,{3 * MIB}-{3 * MIB + 4999},-7")
        assert status == 206
        n = len(big)
        assert parts(h["content-type"], body) == [
            (f"bytes 0-99/{n}", big[:100]),
            (f"bytes {3 * MIB}-{3 * MIB + 4999}/{n}", big[3 * MIB : 3 * MIB + 5000]),
            (f"bytes {n - 7}-{n - 1}/{n}", big[-7:])]
        status, h, _ = curl(f"{base}/big.bin", "-r", f"{n}-")
        assert status == 416 and h["content-range"] == f"bytes */{n}"

        # validators, and a change on the writer while a client holds the old ETag
        status, _, body = curl(f"{base}/big.bin", "-H", f"If-None-Match: {etag}")
        assert status == 304 and body == b""
        new = os.urandom(2 * MIB + 1)
        write_fsynced(writer.mountpoint / "big.bin", new)
        wait_until(lambda: curl(f"{base}/big.bin", "-I")[1]["etag"] != etag,
                   "the new version on the gateway")
        status, h, body = curl(f"{base}/big.bin", "-H", f"If-None-Match: {etag}")
        assert status == 200 and body == new and h["etag"] != etag
        status, _, body = curl(f"{base}/big.bin", "-r", "0-9", "-H", f"If-Range: {etag}")
        assert status == 200 and body == new  # the old validator: the whole new version
        status, _, body = curl(f"{base}/big.bin", "-r", "0-9", "-H", f"If-Range: {h['etag']}")
        assert status == 206 and body == new[:10]

        # names with spaces and UTF-8, listings
        status, h, body = curl(f"{base}/a%20dir/%C3%A9%20x.txt")
        assert status == 200 and body == b"hello, world\n"
        assert h["content-type"].startswith("text/plain")
        status, h, body = curl(f"{base}/a%20dir/")
        assert status == 200 and h["content-type"].startswith("text/html")
        assert 'href="/a%20dir/%C3%A9%20x.txt"' in body.decode()
        status, h, body = curl(f"{base}/", "-H", "Accept: application/json")
        assert status == 200 and h["content-type"] == "application/json"
        entries = {e["name"]: e for e in json.loads(body)["entries"]}
        assert entries["big.bin"]["size"] == len(new) and entries["a dir"]["kind"] == "directory"

        # one block by its ID, verified
        block = blocks_of(writer.mountpoint / "big.bin")[0]
        status, h, body = curl(f"{base}/.blocks/{block}")
        assert status == 200 and hashlib.sha256(body).hexdigest() == block
        assert "immutable" in h["cache-control"]

        # errors
        status, h, body = curl(f"{base}/no-such-file")
        assert status == 404 and h["content-type"].startswith("text/plain")
        for method in ("PUT", "DELETE", "POST"):
            status, h, _ = curl(f"{base}/big.bin", "-X", method, "--data-binary", "x")
            assert status == 405 and h["allow"] == "GET, HEAD", method
        for path in ("/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                     "/a%20dir%2f..%2fbig.bin"):
            status, _, body = curl(f"{base}{path}", "--path-as-is")
            assert status == 400 and b"root:" not in body, path
        status, _, body = curl(f"{base}/out")
        assert status == 403 and b"root:" not in body
        stats = control(gateway.state, "status")["http"]
        assert stats["requests"]["200"] >= 5 and stats["bytes_sent"] >= len(big)
        assert stats["requests"]["405"] == 3 and stats["connections"] == 0
        shown = swarmctl.run_cli("status", "--state", str(gateway.state))
        assert shown.returncode == 0 and f"{base}/ (read-only)" in shown.stdout, shown.stdout
        samples = scrape(control(gateway.state, "status")["metrics"])
        assert samples[("dhtfs_http_requests_total", (("status", "405"),))] == 3
        assert samples[("dhtfs_http_sent_bytes_total", ())] >= len(big)
        assert samples[("dhtfs_http_first_byte_seconds_count", ())] >= 10


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


GIB = 1 << 30
READERS = 4
CACHE = 32 * MIB


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_concurrent_range_readers_of_a_large_file_stay_within_memory(tmp_path: Path) -> None:
    """4 readers stream a quarter each of a 1 GiB file at once from a gateway that holds
    about half of its blocks (R=1 on 2 nodes): every byte right, and the gateway's resident
    memory grows by less than its plaintext cache plus each reader's pieces and read-ahead
    plus the process-wide terms: the queue of fetched blocks waiting (at idle priority) to be
    written as cached copies, and the free heap glibc keeps for reuse
    (``dhtfs.base.malloc.TRIM_THRESHOLD``). Those two dominate; the gateway's own share is
    ``READ_BYTES`` per reader."""
    import random
    import threading

    from dhtfs.base.malloc import TRIM_THRESHOLD
    from dhtfs.blocks.node import CACHE_QUEUE
    from dhtfs.fs.reading import PREFETCH_CHUNKS
    from dhtfs.gateway.content import READ_BYTES

    rng = random.Random(19)
    data = b"".join(rng.randbytes(MIB) for _ in range(GIB // MIB))
    with swarmctl.running_swarm(tmp_path / "swarm", 2, "replicas=1",
                                {"node1": f"http=127.0.0.1:0,cache_size={CACHE}"}) as nodes:
        writer, gateway = nodes
        wait_until(lambda: control(gateway.state, "status")["http"].get("address"),
                   "the gateway's address")
        base = "http://" + control(gateway.state, "status")["http"]["address"]
        write_fsynced(writer.mountpoint / "large.bin", data)
        wait_until(lambda: (gateway.mountpoint / "large.bin").exists()
                   and (gateway.mountpoint / "large.bin").stat().st_size == GIB, "the file")
        assert gateway.pid is not None
        baseline = peak = rss(gateway.pid)
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.wait(0.02):
                peak = max(peak, rss(gateway.pid))

        watcher = threading.Thread(target=watch)
        watcher.start()
        quarter = GIB // READERS
        procs = [subprocess.Popen(
            ["curl", "-sS", "--fail", "-r", f"{i * quarter}-{(i + 1) * quarter - 1}",
             f"{base}/large.bin"], stdout=subprocess.PIPE) for i in range(READERS)]
        digests: list[str] = [""] * READERS

        def drain(i: int) -> None:
            h = hashlib.sha256()
            assert procs[i].stdout is not None
            while piece := procs[i].stdout.read(MIB):
                h.update(piece)
            digests[i] = h.hexdigest()

        drains = [threading.Thread(target=drain, args=(i,)) for i in range(READERS)]
        for t in drains:
            t.start()
        for t in drains:
            t.join(600)
        for p in procs:
            assert p.wait(60) == 0
        done.set()
        watcher.join()
        want = [hashlib.sha256(data[i * quarter : (i + 1) * quarter]).hexdigest()
                for i in range(READERS)]
        assert digests == want
        chunk = MIB
        bound = (CACHE + READERS * (READ_BYTES + (PREFETCH_CHUNKS + 1) * chunk)
                 + CACHE_QUEUE * chunk + TRIM_THRESHOLD + 64 * MIB)
        print(f"gateway RSS: baseline {baseline / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB, "
              f"growth {(peak - baseline) / MIB:.0f} MiB, bound {bound / MIB:.0f} MiB")
        assert peak - baseline < bound


def test_a_token_file_guards_the_gateway(tmp_path: Path) -> None:
    """``http_token``: every request needs ``Authorization: Bearer`` with the file's token
    (401 otherwise, and nothing of the tree)."""
    token = tmp_path / "token"
    token.write_text("a-token-of-the-swarm-1234\n")
    token.chmod(0o600)
    with swarmctl.running_swarm(tmp_path / "swarm", 2, None,
                                {"node1": f"http=127.0.0.1:0,http_token={token}"}) as nodes:
        writer, gateway = nodes
        wait_until(lambda: control(gateway.state, "status")["http"].get("address"),
                   "the gateway's address")
        base = "http://" + control(gateway.state, "status")["http"]["address"]
        write_fsynced(writer.mountpoint / "f", b"guarded")
        wait_until(lambda: (gateway.mountpoint / "f").exists(), "f on the gateway")
        status, h, body = curl(f"{base}/f")
        assert status == 401 and b"guarded" not in body and h["www-authenticate"]
        status, _, body = curl(f"{base}/f", "-H", "Authorization: Bearer wrong-token-12345")
        assert status == 401 and b"guarded" not in body
        status, _, body = curl(f"{base}/f", "-H",
                               "Authorization: Bearer a-token-of-the-swarm-1234")
        assert (status, body) == (200, b"guarded")
        assert control(gateway.state, "status")["http"]["denied"] == 2
