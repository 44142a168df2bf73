"""The local control socket of a running node: how the ``dhtfs`` CLI (and tests, benchmarks)
ask a node to do things.

A Unix stream socket (mode 0600, in the 0700 state directory: root only), speaking the same
``dhtfs.net.wire`` frames as the network (REQUEST/RESPONSE/ERROR; no HELLO, no TLS: the
kernel vouches for the caller). One process may host several nodes (benchmarks); requests then
carry ``"node": index``.

Methods (args → answer):
    status     {}                    → {"node_id", "listen", "peers", "chunks"}
    put        {"data": bytes}        → {"id", "replicas", "complete", "elapsed"}
    get        {"id": bytes}          → {"data": bytes, "elapsed", "source", "queries",
                                        "hops", "dials"}  (see ``GetResult``; error: block
                                        missing)
    providers  {"id": bytes}          → {"providers": [[node_id, host, port], ...]}
    peers      {}                    → {"peers": [[node_id, host, port, rtt|None, penalties,
                                        seconds since it last answered or called|None]]}
    refresh    {}                    → {"buckets": n}   (refresh every bucket now)
    pending    {}                    → {"background": n}  (jobs still running in the
                                        background, e.g. announcements after a put, summed
                                        over every node of the process)

``put``, ``get`` and ``providers`` are about blocks (``id``: a block ID); ``status``'s
``chunks`` is the number of blocks stored (the key keeps its old name: formats are frozen).

Mounts and headless nodes add theirs through ``extra`` (status, oplog, ...; ``forget`` and
``members`` from ``dhtfs.oplog.membership``).

``elapsed``: seconds the node spent on the operation itself (``time.perf_counter``), without
the control socket's round trip: benchmarks compare it with libraries timed in-process.

Invariants: every request runs under ``REQUEST_TIMEOUT``; a bad request gets an ERROR answer
and the connection stays open; a malformed frame closes that client only.

Both ends move bytes with ``_UnixStream`` (non-blocking socket calls, waiting on the socket
only when the kernel cannot take or give bytes now), not trio's socket wrappers, which yield
to the scheduler on every send and receive (``dhtfs.net.tls`` does the same for the
network): an answer is one ``send`` as soon as it is ready.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import trio

from dhtfs.base.errors import DhtfsError, NetworkError, ProtocolError, RemoteError
from dhtfs.base.sockaddr import socket_address
from dhtfs.net import wire
from dhtfs.net.network import Contact, Message

log = logging.getLogger(__name__)

CONTROL_SOCKET_NAME = "control.sock"
REQUEST_TIMEOUT = 120.0


class _UnixStream:
    """A connected Unix stream socket, read and written with non-blocking calls; waits on
    the socket (``trio.lowlevel.wait_readable/writable``) only when the kernel has no bytes
    or no room. At most one task receives and one sends at a time (callers hold a lock for
    sending). ``receive_some`` returns ``b""`` at EOF; a reset raises
    ``trio.BrokenResourceError``, use after ``close`` ``trio.ClosedResourceError``."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = socket.socket(fileno=sock.detach())
        self._sock.setblocking(False)

    def _check_open(self) -> None:
        if self._sock.fileno() < 0:
            raise trio.ClosedResourceError("control connection closed")

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._check_open()
            try:
                view = view[self._sock.send(view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
            except OSError as exc:
                raise trio.BrokenResourceError(f"control send failed: {exc}") from exc
        await trio.lowlevel.checkpoint_if_cancelled()

    async def receive_some(self, max_bytes: int) -> bytes:
        while True:
            self._check_open()
            try:
                data = self._sock.recv(max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"control receive failed: {exc}") from exc
            await trio.lowlevel.checkpoint_if_cancelled()
            return data

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class PeerStats(Protocol):
    """What a node measured about one peer."""

    rtt_ewma: float | None
    penalties: int


class PeerTable(Protocol):
    """A node's routing table, as far as ``peers`` and ``status`` read it."""

    def __len__(self) -> int: ...
    def contacts(self) -> list[Contact]: ...
    def stats(self, node_id: bytes) -> PeerStats | None: ...


class BlockIds(Protocol):
    """A node's block store, as far as ``status`` reads it."""

    def ids(self) -> Iterable[bytes]: ...


class Placement(Protocol):
    """Where ``put`` placed a block (``dhtfs.dht.results.PutResult``)."""

    block_id: bytes

    @property
    def copies(self) -> int: ...
    @property
    def complete(self) -> bool: ...


class Fetched(Protocol):
    """What ``get`` did (``dhtfs.dht.results.GetResult``)."""

    data: bytes
    source: str
    queries: int
    hops: int
    dials: int


class ControlledNode(Protocol):
    """What the control server needs of a node (``dhtfs.dht.node.Node`` is one).

    ``seen_at``: when (``trio.current_time``) each peer last answered or called this node."""

    @property
    def contact(self) -> Contact: ...
    @property
    def routing(self) -> PeerTable: ...
    @property
    def store(self) -> BlockIds: ...
    @property
    def background_jobs(self) -> int: ...
    @property
    def seen_at(self) -> Mapping[bytes, float]: ...
    async def put_block_detailed(self, data: bytes) -> Placement: ...
    async def get_block_detailed(self, block_id: bytes) -> Fetched: ...
    async def find_providers(self, key: bytes, *, stop_early: bool = True) -> list[Contact]: ...
    async def refresh_buckets(self, max_age: float | None = None) -> int: ...


class ControlServer:
    """Answers control requests for ``nodes`` (``dhtfs.blocks.node.BlockNode`` instances)."""

    def __init__(
        self,
        nodes: Sequence[ControlledNode],
        extra: dict[str, Callable[[Message], Awaitable[Message]]] | None = None,
    ) -> None:
        """``extra``: more methods (a mount's: status with its file side, oplog, isolate,
        sync, digest), by name; they take precedence over the node methods."""
        self.nodes = list(nodes)
        self.extra = dict(extra or {})

    def _node(self, args: Message) -> ControlledNode:
        index = args.get("node", 0)
        if type(index) is not int or not 0 <= index < len(self.nodes):
            raise RemoteError(f"no node {index!r} here")
        return self.nodes[index]

    async def handle(self, method: str, args: Message) -> Message:
        if method in self.extra:
            return await self.extra[method](args)
        if method == "pending":
            return {"background": sum(n.background_jobs for n in self.nodes)}
        node = self._node(args)
        if method == "status":
            c = node.contact
            return {
                "node_id": c.node_id,
                "listen": f"{c.host}:{c.port}",
                "peers": len(node.routing),
                "chunks": await trio.to_thread.run_sync(lambda: sum(1 for _ in node.store.ids())),
            }
        if method == "put":
            data = args.get("data")
            if not isinstance(data, bytes):
                raise RemoteError("put: data must be bytes")
            t0 = time.perf_counter()
            res = await node.put_block_detailed(data)
            return {"id": res.block_id, "replicas": res.copies, "complete": res.complete,
                    "elapsed": time.perf_counter() - t0}
        if method == "get":
            cid = _block_id(args)
            t0 = time.perf_counter()
            got = await node.get_block_detailed(cid)
            return {"data": got.data, "elapsed": time.perf_counter() - t0,
                    "source": got.source, "queries": got.queries, "hops": got.hops,
                    "dials": got.dials}
        if method == "providers":
            provs = await node.find_providers(_block_id(args), stop_early=False)
            return {"providers": [[p.node_id, p.host, p.port] for p in provs]}
        if method == "peers":
            out = []
            now, seen = trio.current_time(), node.seen_at
            for c in node.routing.contacts():
                st = node.routing.stats(c.node_id)
                ago = now - seen[c.node_id] if c.node_id in seen else None
                out.append([c.node_id, c.host, c.port, st.rtt_ewma if st else None,
                            st.penalties if st else 0, ago])
            return {"peers": out}
        if method == "refresh":
            return {"buckets": await node.refresh_buckets(max_age=0.0)}
        raise RemoteError(f"unknown control method {method!r}")

    async def serve(
        self, path: Path, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``path`` (replacing a stale socket) until cancelled."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            with socket_address(path) as address:
                await sock.bind(address)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(64)
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(path)
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._client, _UnixStream(stream.socket))
        finally:  # synchronous first: under cancellation every await raises Cancelled
            with contextlib.suppress(OSError):
                path.unlink()
            listener.socket.close()

    async def _client(self, stream: _UnixStream) -> None:
        reader = wire.FrameReader()
        try:
            async with trio.open_nursery() as nursery:
                send_lock = trio.Lock()
                while True:
                    data = await stream.receive_some(256 * 1024)
                    if not data:
                        break
                    for body in reader.feed(data):
                        frame = wire.decode_body(body)
                        if frame.kind != wire.REQUEST:
                            raise ProtocolError("control: only requests are accepted")
                        nursery.start_soon(self._answer, stream, send_lock, frame)
        except ProtocolError as exc:
            log.warning("control client dropped: %s", exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            stream.close()

    async def _answer(self, stream: _UnixStream, lock: trio.Lock, frame: wire.Frame) -> None:
        rid = frame.request_id
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                answer = await self.handle(frame.method, frame.payload or {})
            out = wire.encode_response(rid, answer)
        except DhtfsError as exc:  # RemoteError, BlockMissing, NetworkError, ...
            out = wire.encode_error(rid, f"{type(exc).__name__}: {exc}")
        except trio.TooSlowError:
            out = wire.encode_error(rid, f"timed out after {REQUEST_TIMEOUT}s")
        except Exception as exc:
            log.exception("control %s failed", frame.method)
            out = wire.encode_error(rid, f"internal error: {type(exc).__name__}: {exc}")
        async with lock:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(out)




def _block_id(args: Message) -> bytes:
    cid = args.get("id")
    if not isinstance(cid, bytes) or len(cid) != 32:
        raise RemoteError("id must be 32 bytes")
    return cid


class ControlClient:
    """A connection to a node's control socket; ``call`` is one request under a deadline."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = _UnixStream(stream.socket)
        self.reader = wire.FrameReader()
        self.next_id = 0
        self.lock = trio.Lock()

    @classmethod
    async def connect(cls, path: Path) -> ControlClient:
        try:
            with socket_address(path) as address:
                stream = await trio.open_unix_socket(address)
        except OSError as exc:
            raise NetworkError(
                f"cannot reach the node's control socket {path}: {exc.strerror or exc}"
            ) from None
        return cls(stream)

    async def call(self, method: str, args: Message | None = None, *,
                   timeout: float = REQUEST_TIMEOUT) -> Message:
        """One request at a time per client (open more clients for concurrency)."""
        async with self.lock:
            self.next_id += 1
            with trio.move_on_after(timeout) as scope:
                await self.stream.send_all(wire.encode_request(self.next_id, method, args or {}))
                while True:
                    data = await self.stream.receive_some(256 * 1024)
                    if not data:
                        raise NetworkError("the node closed its control connection")
                    bodies = self.reader.feed(data)
                    if bodies:
                        frame = wire.decode_body(bodies[0])
                        break
            if scope.cancelled_caught:
                self.stream.close()
                raise NetworkError(f"control {method}: no answer within {timeout}s")
        if frame.kind == wire.ERROR:
            raise RemoteError(frame.message)
        assert frame.payload is not None
        return frame.payload

    async def aclose(self) -> None:
        await self.stream.aclose()
