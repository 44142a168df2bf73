"""The gateway served in-process over a real socket on 127.0.0.1 (port 0) from a real
``LocalFilesystem``: files, ranges, validators, listings, blocks, errors, path escapes; a
fuzzed request stream and clients that leave early or stop reading never end the server,
and leave no connection task behind."""

from __future__ import annotations

import email.parser
import json
import os
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace

import h11
import pyfuse3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhtfs.base.config import Config
from dhtfs.gateway.routes import Routes
from dhtfs.gateway.server import MAX_HEAD, HttpServer
from dhtfs.runtime.localfs import LocalFilesystem, open_state
from testkit.wait import wait_until_async

ROOT = pyfuse3.ROOT_INODE
CTX = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)
MOUNT = b"/mnt/gw"


async def put(fs: LocalFilesystem, parent: int, name: bytes, data: bytes) -> int:
    """A file ``name`` in directory inode ``parent`` holding ``data``; its inode."""
    info, attrs = await fs.operations.create(parent, name, 0o644, os.O_RDWR, CTX)
    if data:
        await fs.operations.write(info.fh, 0, data)
    await fs.operations.release(info.fh)
    return attrs.st_ino


async def rewrite(fs: LocalFilesystem, ino: int, data: bytes) -> None:
    info = await fs.operations.open(ino, os.O_RDWR | os.O_TRUNC, CTX)
    await fs.operations.write(info.fh, 0, data)
    await fs.operations.release(info.fh)


async def request(addr: tuple[str, int], target: str | bytes, *, method: str = "GET",
                  headers: list[tuple[str, str | bytes]] | None = None,
                  ) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request on its own connection: (status, headers, body)."""
    stream = await trio.open_tcp_stream(*addr)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        await stream.send_all(conn.send(h11.Request(
            method=method, target=target, headers=[("host", "gw"), *(headers or [])])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        status, head, body = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status, head = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, head, bytes(body)


async def raw(addr: tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` as is, return all that comes back until the server closes."""
    stream = await trio.open_tcp_stream(*addr)
    out = bytearray()
    async with stream:
        with trio.fail_after(20):
            try:
                await stream.send_all(data)
            except trio.BrokenResourceError:
                pass
            try:
                while chunk := await stream.receive_some(65536):
                    out += chunk
            except trio.BrokenResourceError:
                pass  # a reset after the answer
    return bytes(out)


@pytest.fixture
async def gw(fs: LocalFilesystem, nursery: trio.Nursery) -> HttpServer:
    server = HttpServer(Routes(fs.tree, fs.contents, MOUNT), "127.0.0.1", 0)
    await nursery.start(server.serve)
    return server


def addr_of(gw: HttpServer) -> tuple[str, int]:
    assert gw.address is not None
    return gw.address


async def test_files_ranges_and_validators(fs: LocalFilesystem, gw: HttpServer) -> None:
    addr = addr_of(gw)
    data = os.urandom(3 * 4096 + 123)
    ino = await put(fs, ROOT, b"video.mp4", data)
    status, head, body = await request(addr, "/video.mp4")
    assert (status, body) == (200, data)
    assert head[b"content-type"] == b"video/mp4"
    assert head[b"accept-ranges"] == b"bytes" and head[b"content-length"] == b"%d" % len(data)
    etag = head[b"etag"]
    status, hhead, hbody = await request(addr, "/video.mp4", method="HEAD")
    assert (status, hbody) == (200, b"") and hhead[b"content-length"] == head[b"content-length"]
    assert hhead[b"etag"] == etag and b"last-modified" in hhead
    # single, suffix, open, multiple
    status, h, body = await request(addr, "/video.mp4", headers=[("range", "bytes=4000-4200")])
    assert (status, body) == (206, data[4000:4201])
    assert h[b"content-range"] == b"bytes 4000-4200/%d" % len(data)
    status, _, body = await request(addr, "/video.mp4", headers=[("range", "bytes=-100")])
    assert (status, body) == (206, data[-100:])
    status, _, body = await request(addr, "/video.mp4", headers=[("range", "bytes=12000-")])
    assert (status, body) == (206, data[12000:])
    status, h, body = await request(addr, "/video.mp4",
                                    headers=[("range", "bytes=0-9,5000-9000,-5")])
    assert status == 206
    assert parse_multipart(h[b"content-type"], body) == [
        (b"bytes 0-9/%d" % len(data), data[0:10]),
        (b"bytes 5000-9000/%d" % len(data), data[5000:9001]),
        (b"bytes %d-%d/%d" % (len(data) - 5, len(data) - 1, len(data)), data[-5:])]
    assert int(h[b"content-length"]) == len(body)
    status, h, _ = await request(addr, "/video.mp4", headers=[("range", "bytes=99999-")])
    assert status == 416 and h[b"content-range"] == b"bytes */%d" % len(data)
    # validators: 304, then a new version: new ETag, the old one no longer matches
    status, _, body = await request(addr, "/video.mp4", headers=[("if-none-match", etag)])
    assert (status, body) == (304, b"")
    new = os.urandom(5000)
    await rewrite(fs, ino, new)
    status, h, body = await request(addr, "/video.mp4", headers=[("if-none-match", etag)])
    assert (status, body) == (200, new) and h[b"etag"] != etag
    status, _, body = await request(addr, "/video.mp4",
                                    headers=[("range", "bytes=0-9"), ("if-range", etag)])
    assert (status, body) == (200, new)  # the old validator: the whole new version
    status, _, body = await request(addr, "/video.mp4",
                                    headers=[("range", "bytes=0-9"), ("if-range", h[b"etag"])])
    assert (status, body) == (206, new[:10])


def parse_multipart(content_type: bytes, body: bytes) -> list[tuple[bytes, bytes]]:
    """(Content-Range, bytes) of each part of a multipart/byteranges body."""
    assert content_type.startswith(b"multipart/byteranges; boundary=")
    msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type + b"\r\n\r\n"
                                                 + body)
    assert msg.is_multipart()
    return [(part["Content-Range"].encode(), part.get_payload(decode=True))
            for part in msg.get_payload()]


async def test_names_listings_blocks_and_errors(fs: LocalFilesystem, gw: HttpServer) -> None:
    addr = addr_of(gw)
    d = (await fs.operations.mkdir(ROOT, "dir é".encode(), 0o755, CTX)).st_ino
    await put(fs, d, b"a b&<c>.txt", b"hello")
    await put(fs, d, b"\xff\xfe", b"raw")
    status, h, body = await request(addr, "/dir%20%C3%A9/a%20b%26%3Cc%3E.txt")
    assert (status, body) == (200, b"hello")
    assert h[b"content-type"] == b"text/plain; charset=utf-8"
    status, h, body = await request(addr, "/dir%20%C3%A9/")
    assert status == 200 and h[b"content-type"].startswith(b"text/html")
    assert b"a b&amp;&lt;c&gt;.txt" in body and b"<c>" not in body
    assert b'href="/dir%20%C3%A9/a%20b%26%3Cc%3E.txt"' in body
    status, h, body = await request(addr, "/dir%20%C3%A9", headers=[("accept",
                                                                       "application/json")])
    listing = json.loads(body)
    assert status == 200 and h[b"content-type"] == b"application/json"
    assert {e["href"]: e["size"] for e in listing["entries"]} == {
        "/dir%20%C3%A9/a%20b%26%3Cc%3E.txt": 5, "/dir%20%C3%A9/%FF%FE": 3}
    assert (await request(addr, "/dir%20%C3%A9/%FF%FE"))[2] == b"raw"
    # a block by its ID
    data = os.urandom(4096)
    await put(fs, ROOT, b"blk", data)
    import hashlib
    block = hashlib.sha256(data).hexdigest()
    status, h, body = await request(addr, f"/.blocks/{block}")
    assert (status, body) == (200, data) and b"immutable" in h[b"cache-control"]
    assert (await request(addr, f"/.blocks/{'0' * 64}"))[0] == 404
    assert (await request(addr, "/.blocks/xyz"))[0] == 400
    # errors: plain text, no traceback
    status, h, body = await request(addr, "/missing")
    assert status == 404 and h[b"content-type"].startswith(b"text/plain")
    assert b"Traceback" not in body
    for method in ("PUT", "DELETE", "POST", "PATCH", "MKCOL"):
        status, h, _ = await request(addr, "/blk", method=method)
        assert status == 405 and h[b"allow"] == b"GET, HEAD"
    assert (await request(addr, "/blk/"))[0] == 404  # a file is no directory


async def test_paths_never_leave_the_tree(fs: LocalFilesystem, gw: HttpServer) -> None:
    addr = addr_of(gw)
    d = (await fs.operations.mkdir(ROOT, b"d", 0o755, CTX)).st_ino
    await put(fs, ROOT, b"top", b"top bytes")
    for name, target in ((b"out", b"/etc/passwd"), (b"up", b"../../etc/passwd"),
                         (b"in", b"../top"), (b"abs", MOUNT + b"/top"), (b"loop", b"loop")):
        await fs.operations.symlink(d, name, target, CTX)
    assert await request(addr, "/d/in") == (200, ANY, b"top bytes")
    assert (await request(addr, "/d/abs"))[2] == b"top bytes"
    assert (await request(addr, "/d/out"))[0] == 403
    assert (await request(addr, "/d/up"))[0] == 403
    assert (await request(addr, "/d/loop"))[0] == 404
    for target in (b"/../etc/passwd", b"/d/%2e%2e/%2e%2e/etc/passwd", b"/d%2f..%2ftop",
                   b"/top%00", b"/d/..%2F..%2Fetc"):
        reply = await raw(addr, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\n"
                          b"connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400 "), (target, reply[:80])
        assert b"passwd" not in reply.split(b"\r\n\r\n", 1)[1]


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY = _Any()


async def test_malformed_requests(fs: LocalFilesystem, gw: HttpServer) -> None:
    addr = addr_of(gw)
    assert (await raw(addr, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    huge = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (MAX_HEAD * 2) + b"\r\n\r\n"
    assert (await raw(addr, huge)).startswith(b"HTTP/1.1 431 ")
    assert (await raw(addr, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400 ")  # no host
    # keep-alive: two requests on one connection, pipelined
    both = await raw(addr, b"GET /nothing HTTP/1.1\r\nhost: x\r\n\r\n"
                     b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert both.startswith(b"HTTP/1.1 404 ") and b"HTTP/1.1 200 " in both
    assert gw.stats.by_status[400] >= 2


async def test_head_of_a_directory_and_http_1_0(fs: LocalFilesystem, gw: HttpServer) -> None:
    addr = addr_of(gw)
    await put(fs, ROOT, b"f", b"x")
    status, h, body = await request(addr, "/", method="HEAD")
    assert (status, body) == (200, b"") and h[b"content-type"].startswith(b"text/html")
    reply = await raw(addr, b"GET / HTTP/1.0\r\n\r\n")  # no length: the close ends the body
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"</html>\n")


async def test_slow_and_too_many_clients(fs: LocalFilesystem, nursery: trio.Nursery) -> None:
    gw = HttpServer(Routes(fs.tree, fs.contents, MOUNT), "127.0.0.1", 0, max_connections=2,
                    head_seconds=0.5)
    await nursery.start(gw.serve)
    addr = addr_of(gw)
    slow = [await trio.open_tcp_stream(*addr) for _ in range(2)]
    for s in slow:
        await s.send_all(b"GET / HTT")  # and nothing more: a slow loris
    await wait_until_async(lambda: gw.stats.connections == 2, "both slow clients in")
    assert (await raw(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")).startswith(
        b"HTTP/1.1 503 ")  # over the limit
    for s in slow:  # closed by the server once their head is late
        with trio.fail_after(10):
            assert await s.receive_some(100) == b""
        await s.aclose()
    await wait_until_async(lambda: gw.stats.connections == 0, "slow clients closed")
    assert gw.stats.timed_out == 2 and gw.stats.refused == 1
    assert (await request(addr, "/"))[0] == 200


PIECES = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"GET / HTTP/1.1\r\n", b"host: x\r\n", b"\r\n", b"HEAD /f HTTP/1.0\r\n",
                     b"range: bytes=0-1,-2\r\n", b"GET /%zz HTTP/1.1\r\n", b"\x00\xff",
                     b"transfer-encoding: chunked\r\n", b"content-length: 99999\r\n",
                     b"x: " + b"y" * 5000 + b"\r\n", b"GET /../x HTTP/1.1\r\n",
                     b"GET /f HTTP/1.1\r\nhost: x\r\nrange: bytes=1-3\r\n\r\n"]))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(clients=st.lists(st.tuples(st.lists(PIECES, max_size=10), st.booleans()),
                        min_size=1, max_size=4))
def test_a_fuzzed_request_stream_never_ends_the_server(
        tmp_path: Path, clients: list[tuple[list[bytes], bool]]) -> None:
    """Each example: a fresh filesystem and gateway, then several connections at once, each
    sending its pieces (then leaving at once, or reading what comes back for a moment)."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as state:
        fs = open_state(Config(state=Path(state), chunk_size=4096))
        try:
            trio.run(_fuzz, fs, clients)
        finally:
            fs.close()


async def _fuzz(fs: LocalFilesystem, clients: list[tuple[list[bytes], bool]]) -> None:
    async with trio.open_nursery() as nursery:
        fs.contents.nursery = nursery
        await put(fs, ROOT, b"f", b"0123456789")
        gw = HttpServer(Routes(fs.tree, fs.contents, MOUNT), "127.0.0.1", 0)
        await nursery.start(gw.serve)
        addr = addr_of(gw)

        async def client(pieces: list[bytes], close_early: bool) -> None:
            stream = await trio.open_tcp_stream(*addr)
            async with stream:
                with trio.move_on_after(5):
                    try:
                        for piece in pieces:
                            await stream.send_all(piece)
                        if not close_early:
                            with trio.move_on_after(0.2):
                                while await stream.receive_some(65536):
                                    pass
                    except trio.BrokenResourceError:
                        pass

        async with trio.open_nursery() as clients_nursery:
            for pieces, close_early in clients:
                clients_nursery.start_soon(client, pieces, close_early)
        # the server still answers, and every connection's task is gone
        assert (await request(addr, "/f"))[2] == b"0123456789"
        await wait_until_async(lambda: gw.stats.connections == 0, "connections closed")
        nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_stops_the_reading(fs: LocalFilesystem,
                                                            gw: HttpServer) -> None:
    """Backpressure, and a body cut when its file changes while being sent."""
    addr = addr_of(gw)
    size = 16 << 20
    ino = await put(fs, ROOT, b"big", os.urandom(size))
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(addr)
    stream = trio.SocketStream(sock)
    async with stream:
        await stream.send_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        got = len(await stream.receive_some(65536))

        def reads() -> int:
            return fs.contents.reads["local"] + fs.contents.reads["memory"]

        await trio.sleep(1)  # the client does not read: the server's sends block
        sent, before = gw.stats.bytes_sent, reads()
        assert sent < size // 2, sent
        await trio.sleep(1)
        assert gw.stats.bytes_sent == sent  # stalled on the client, and so is the reading
        assert reads() - before <= 1, (before, reads())
        # the file changes while its body is under way: the rest is never the new bytes
        await rewrite(fs, ino, b"new content")
        got_rest = 0
        with trio.fail_after(30):
            while chunk := await stream.receive_some(1 << 20):
                got_rest += len(chunk)
        assert got + got_rest < size  # cut: the client sees a short body
    await wait_until_async(lambda: gw.stats.cut >= 1 and gw.stats.connections == 0, "cut")
