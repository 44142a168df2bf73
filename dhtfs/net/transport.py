"""The real ``Network``: persistent, mutually authenticated TLS 1.3 connections over TCP.

One connection per peer pair (whoever dials first; a simultaneous dial may leave two, each
still correct), multiplexing requests by id with the ``dhtfs.net.wire`` codec.

Security invariants:
- both sides present a certificate; the TLS layer verifies it chains to the swarm CA and is
  within its validity, and proves key possession (TLS 1.3 CertificateVerify); we then re-check
  the certificate with ``pki.verify_node_cert`` and derive the peer's node ID from its key;
- a peer whose certificate the swarm's revocation list names (``revoked``) is refused there
  too, and ``drop_revoked`` closes the connections of peers a newer list revokes;
- no request is read, and no frame sent, before that succeeds; a refusal is logged with its
  reason (``refused peer ...``) and counted in ``Transport.refusals``;
- a dialer that expected a node ID gets ``AuthError`` if the key behind the address differs.

Robustness invariants:
- every ``call`` finishes within its ``timeout`` (connecting and handshaking included), raising
  a ``NetworkError`` subclass otherwise;
- a malformed, oversized or unexpected frame closes that connection only; pending calls on it
  fail with ``ProtocolError`` (or ``PeerUnreachable`` if it simply dropped);
- handler exceptions become ERROR answers; the server never dies of them;
- all tasks live in the ``serve`` nursery: connections end when ``serve`` is cancelled;
- a frame is encrypted and queued whole, synchronously (``TLSStream.write_nowait``), and
  one writer task per connection drains what the kernel did not take at once, so a caller
  cancelled by its deadline never cuts a TLS record in half (which would break the stream
  for every other call on it);
- idle connections (nothing pending either way) close after ``idle_timeout``, and the least
  recently used idle ones as soon as more than ``max_connections`` are open; a call whose
  pooled connection the peer closed under it retries once on a new connection (every RPC of
  ``dhtfs.net.rpc`` is idempotent);
- at most ``max_handlers_per_connection`` requests of one peer run at once; past that the
  connection stops reading (backpressure), other peers are unaffected. Handlers must not call
  back the same peer and wait for it (nothing in ``dhtfs.dht.node`` does);
- requests for ``inline_methods`` (default ``rpc.QUICK_METHODS``: answered from memory, or a
  small local read) are answered by the reader task itself, without a task of their own, and
  their answers are queued without waiting for the send backlog to drain (so two readers can
  never wait on each other). Their handlers must not block.

The TLS layer is ``dhtfs.net.tls.TLSStream`` (not ``trio.SSLStream``: see there, throughput).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import ssl
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from dhtfs.base.errors import (
    AuthError,
    CallTimeout,
    NetworkError,
    PeerUnreachable,
    ProtocolError,
    RemoteError,
)
from dhtfs.net import rpc, wire
from dhtfs.net.addresses import WILDCARD_HOSTS, describe
from dhtfs.net.network import Contact, Message, RequestHandler
from dhtfs.net.tls import TLSStream, tls_context
from dhtfs.trust import pki

log = logging.getLogger(__name__)

SEND_HIGH_WATER = 4 * 1024 * 1024
"""Bytes queued on one connection past which senders wait (see ``_Connection._send``)."""


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """The one deadline helper: run the block for at most ``seconds``, else ``CallTimeout``."""
    with trio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise CallTimeout(f"{what}: no answer within {seconds:.3g}s")


@dataclass
class _Pending:
    event: trio.Event = field(default_factory=trio.Event)
    answer: Message | None = None
    error: NetworkError | None = None


@dataclass
class _Dial:
    event: trio.Event = field(default_factory=trio.Event)
    conn: _Connection | None = None
    error: NetworkError | None = None


class _FrameStream:
    """Whole frames out of a byte stream (``wire.FrameReader`` over ``receive_some``)."""

    def __init__(self, stream: TLSStream, max_frame: int, transport: Transport) -> None:
        self.stream = stream
        self.reader = wire.FrameReader(max_frame)
        self.ready: deque[bytes] = deque()
        self.transport = transport  # counts the bytes received

    async def receive(self) -> wire.Frame | None:
        """The next frame, or None at a clean EOF between frames."""
        while not self.ready:
            try:
                pieces = await self.stream.receive_pieces()
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                raise PeerUnreachable(f"connection lost: {_tls_reason(exc)}") from None
            if not pieces:
                if self.reader.pending_bytes:
                    raise ProtocolError("connection closed in the middle of a frame")
                return None
            for piece in pieces:
                self.transport.bytes_received += len(piece)
                self.ready.extend(self.reader.feed(piece))
        return wire.decode_body(self.ready.popleft())


class _Connection:
    """One authenticated connection. ``run`` owns its reader, writer and handler tasks."""

    def __init__(
        self,
        transport: Transport,
        frames: _FrameStream,
        peer: Contact,
        outbound: bool,
        awaiting_hello: bool = False,
    ) -> None:
        self.transport = transport
        self.frames = frames
        self.peer = peer
        self.outbound = outbound
        self.awaiting_hello = awaiting_hello  # dialed: requests went out before its HELLO
        self.reason: NetworkError | None = None  # why it closed, once it has
        self.pending: dict[int, _Pending] = {}
        self.last_id = 0
        self.closed = False
        self.scope = trio.CancelScope()
        self.handler_slots = trio.Semaphore(transport.max_handlers_per_connection)
        self.last_active = trio.current_time()

    def idle(self) -> bool:
        """No call waiting for an answer and no request being handled."""
        return not self.pending and (
            self.handler_slots.value == self.transport.max_handlers_per_connection
        )

    async def request(self, method: str, args: Message) -> Message:
        """Send one request and wait for its answer (the caller holds the deadline)."""
        if self.closed:
            raise self._failure()
        self.last_id += 1
        rid = self.last_id
        self.last_active = trio.current_time()
        frame = wire.encode_request_parts(rid, method, args, self.transport.max_frame)
        pending = self.pending[rid] = _Pending()
        try:
            try:
                await self._send(frame)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise self._failure() from None
            await pending.event.wait()
        finally:
            self.pending.pop(rid, None)
        if pending.error is not None:
            raise pending.error
        assert pending.answer is not None
        return pending.answer

    def _failure(self, cause: object = "") -> NetworkError:
        """Why calls on this connection fail once it is gone."""
        if self.reason is not None:
            return type(self.reason)(str(self.reason))
        if self.awaiting_hello:
            # TLS 1.3: the server checks our certificate after our handshake completes.
            return AuthError(
                f"{self.peer.host}:{self.peer.port}: peer closed the connection during the "
                f"handshake (did it refuse our certificate? {cause})"
            )
        return PeerUnreachable(f"connection to {self.peer} is closed")

    async def _send(self, frame: bytes | list[bytes | bytearray]) -> None:
        """Queue ``frame`` (bytes, or a list of buffers: ``wire.encode_request_parts``) whole
        (never cut, whatever cancels us), then wait while more than ``SEND_HIGH_WATER`` bytes
        are queued on this connection (backpressure)."""
        stream = self.frames.stream
        stream.write_nowait(frame)
        self.transport.bytes_sent += (
            len(frame) if isinstance(frame, bytes | bytearray) else sum(map(len, frame)))
        if stream.backlog_bytes > SEND_HIGH_WATER:
            await stream.wait_drained(SEND_HIGH_WATER)

    async def run(self) -> None:
        """Serve the connection until EOF, error or cancellation; then fail pending calls."""
        reason: NetworkError = PeerUnreachable(f"connection to {self.peer} closed")
        self.transport._live.add(self)
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    try:
                        await self._reader(nursery)
                    except ProtocolError as exc:
                        log.warning("closing connection to %s: %s", self.peer, exc)
                        self.transport.protocol_errors += 1
                        reason = ProtocolError(f"{self.peer}: {exc}")
                    except PeerUnreachable as exc:
                        log.debug("connection to %s lost: %s", self.peer, exc)
                        reason = exc
                    nursery.cancel_scope.cancel()
        finally:
            if self.awaiting_hello and not isinstance(reason, ProtocolError):
                reason = self._failure(reason)
            self.reason = reason
            self.closed = True
            self.transport._live.discard(self)
            self.transport._forget(self)
            for pending in self.pending.values():
                pending.error = reason
                pending.event.set()
            self.frames.stream.close()

    async def _writer(self) -> None:
        try:
            await self.frames.stream.flusher()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            self.scope.cancel()

    async def _reader(self, nursery: trio.Nursery) -> None:
        while True:
            frame = await self.frames.receive()
            if frame is None:
                return
            self.last_active = trio.current_time()
            if self.awaiting_hello:
                if frame.kind != wire.HELLO:
                    raise ProtocolError("first frame is not HELLO")
                self.awaiting_hello = False
                continue
            if frame.kind == wire.REQUEST:
                if frame.method in self.transport.inline_methods:
                    self._send_nowait(await self._answer(frame))
                    continue
                await self.handler_slots.acquire()
                nursery.start_soon(self._serve_request, frame)
            elif frame.kind in (wire.RESPONSE, wire.ERROR):
                pending = self.pending.get(frame.request_id)
                if pending is None:
                    if frame.request_id > self.last_id:
                        raise ProtocolError(f"answer to request {frame.request_id} never sent")
                    continue  # late answer to a call that already timed out
                if frame.kind == wire.RESPONSE:
                    pending.answer = frame.payload
                else:
                    pending.error = RemoteError(f"{self.peer}: {frame.message}")
                pending.event.set()
            else:
                raise ProtocolError("unexpected HELLO after the handshake")

    async def _answer(self, frame: wire.Frame) -> bytes:
        """Run the handler for one request; the encoded answer (or error) frame.

        The test switches of ``Transport.set_faults`` act here: muted, the request gets no
        answer (an empty frame: nothing is sent); delayed, an answer of the reader task's own
        (``inline_methods``) is sent by a task of its own after the delay, the others wait in
        their task; tampering, a GET_CHUNK answer's ``data`` gets its first byte flipped."""
        transport = self.transport
        rid, max_frame = frame.request_id, transport.max_frame
        if transport.fault_mute:
            return b""
        delay, nursery = transport.fault_delay, transport._nursery
        send_late = delay > 0 and frame.method in transport.inline_methods and nursery is not None
        if delay > 0 and not send_late:
            await trio.sleep(delay)
        handler = transport.handler
        try:
            if handler is None:
                raise RemoteError("node is not ready")
            answer = await handler(self.peer, frame.method, frame.payload or {})
            if not isinstance(answer, dict):
                raise TypeError(f"handler returned {type(answer).__name__}, not a dict")
            if transport.fault_tamper and frame.method == rpc.GET_BLOCK and answer.get("data"):
                real = answer["data"]
                answer = {**answer, "data": bytes([real[0] ^ 0xFF]) + bytes(real[1:])}
            data = wire.encode_response(rid, answer, max_frame)
        except RemoteError as exc:
            data = wire.encode_error(rid, str(exc) or type(exc).__name__, max_frame)
        except Exception as exc:
            log.exception("handler for %s from %s failed", frame.method, self.peer)
            data = wire.encode_error(rid, f"{type(exc).__name__}: {exc}", max_frame)
        if send_late:
            assert nursery is not None

            async def late() -> None:
                await trio.sleep(delay)
                self._send_nowait(data)

            nursery.start_soon(late)
            return b""
        return data

    def _send_nowait(self, data: bytes) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self.frames.stream.write_nowait(data)
            self.transport.bytes_sent += len(data)

    async def _serve_request(self, frame: wire.Frame) -> None:
        try:
            data = await self._answer(frame)
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                await self._send(data)
        finally:
            self.handler_slots.release()

    def close(self) -> None:
        self.scope.cancel()


class Transport:
    """``Network`` over TLS. Construct, set ``handler``, then ``await nursery.start(serve)``."""

    def __init__(
        self,
        identity: pki.Identity,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        handler: RequestHandler | None = None,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        connect_timeout: float = 5.0,
        handshake_timeout: float = 5.0,
        max_handlers_per_connection: int = 64,
        inline_methods: Collection[str] = rpc.QUICK_METHODS,
        idle_timeout: float | None = 600.0,
        max_connections: int = 1024,
    ) -> None:
        self.identity = identity
        self.host = host
        self.port = port
        self.handler = handler
        self.max_frame = max_frame
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.max_handlers_per_connection = max_handlers_per_connection
        self.inline_methods = frozenset(inline_methods)
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._live: set[_Connection] = set()   # every running connection, registered or not
        self.closed_idle = 0
        self._server_ctx = tls_context(identity, server_side=True)
        self._client_ctx = tls_context(identity, server_side=False)
        self._ca = pki.load_cert(identity.ca_cert)
        self._conns: dict[bytes, _Connection] = {}
        self._dialing: dict[Any, _Dial] = {}
        self._nursery: trio.Nursery | None = None
        self._local: Contact | None = None
        self.refusals = 0
        # A client-only node (``-o storage=false``) advertises port 0 in its HELLO: peers
        # never put it in their routing tables (``Node._seen``), so it is never a replica.
        self.client = False
        self.bound: list[tuple[str, int]] = []
        """The listening sockets' addresses, once serving."""
        self.dials = 0          # outbound connections attempted (each a TLS handshake)
        self.aborted = 0
        self.protocol_errors = 0
        self.isolated = False   # test switch: see ``isolate``
        self.bytes_received = 0  # frame bytes in and out on peer connections (metrics)
        self.bytes_sent = 0
        # Revocation (dhtfs.trust.revocation): a peer whose certificate (DER) this refuses is
        # refused at the handshake; the certificates of peers met, by node ID.
        self.revoked: Callable[[bytes], bool] | None = None
        self._peer_certs: dict[bytes, bytes] = {}
        # Test switches (see ``set_faults``); all off by default.
        self.fault_delay = 0.0
        self.fault_tamper = False
        self.fault_mute = False
        self.fault_hold: frozenset[str] = frozenset()
        self._hold_lifted = trio.Event()
        self._hold_lifted.set()

    def set_faults(
        self,
        *,
        delay: float | None = None,
        tamper: bool | None = None,
        mute: bool | None = None,
        hold: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """Test switches, off by default, reachable only through the root-only control
        socket (``faults``), for tests of the read path against bad peers. Each argument
        left None keeps its setting; returns the settings now in force.

        ``delay``: every answer this node serves waits that many seconds first (the
        connection goes on reading meanwhile); ``tamper``: GET_CHUNK answers carry bytes
        that differ from the real ones (their hash no longer matches); ``mute``: requests
        are read but never answered (callers time out or hedge); ``hold``: this node's own
        outgoing calls of these methods (e.g. ``["PUT_CHUNK"]``) wait, within their deadline,
        until the hold is lifted (``hold=[]``), as if the network held them back: a call held
        past its deadline fails with ``CallTimeout``."""
        if hold is not None:
            if isinstance(hold, str | bytes) or not all(isinstance(m, str) for m in hold):
                raise ValueError(f"fault hold must be a list of method names, not {hold!r}")
            self.fault_hold = frozenset(hold)
            if self.fault_hold and self._hold_lifted.is_set():
                self._hold_lifted = trio.Event()
            elif not self.fault_hold:
                self._hold_lifted.set()
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, int | float) or not (
                0 <= delay < math.inf
            ):
                raise ValueError(f"fault delay must be a non-negative number, not {delay!r}")
            self.fault_delay = float(delay)
        if tamper is not None:
            self.fault_tamper = bool(tamper)
        if mute is not None:
            self.fault_mute = bool(mute)
        return {"delay": self.fault_delay, "tamper": self.fault_tamper, "mute": self.fault_mute,
                "hold": sorted(self.fault_hold)}

    def peer_cert(self, node_id: bytes) -> bytes | None:
        """The DER certificate a peer showed at its last handshake with this node, if any."""
        return self._peer_certs.get(node_id)

    def addresses(self) -> dict[str, Any]:
        """Where this node is bound and what its HELLO advertises (``dhtfs status``)."""
        return describe(self.bound, client=self.client)

    def isolate(self, on: bool) -> None:
        """Cut this node off the network (tests of partitions): while on, every call fails
        with ``PeerUnreachable``, inbound connections are dropped, and the open ones close."""
        self.isolated = on
        if on:
            for conn in list(self._live):
                conn.close()

    # -- Network ---------------------------------------------------------------------------------

    @property
    def local(self) -> Contact:
        if self._local is None:
            raise RuntimeError("transport is not serving yet")
        return self._local

    async def call(self, peer: Contact, method: str, args: Message, *, timeout: float) -> Message:
        # ``deadline()`` spelled out: this is the hot path, and a generator-based context
        # manager costs as much as the rest of the call's bookkeeping.
        if self.isolated:
            raise PeerUnreachable(f"{method} to {peer}: this node is isolated")
        with trio.move_on_after(timeout):
            if self.fault_hold and method in self.fault_hold:
                await self._hold_lifted.wait()  # test switch (``set_faults``)
            conn = self._conns.get(peer.node_id)
            if conn is not None and not conn.closed and not conn.awaiting_hello:
                try:
                    return await conn.request(method, args)
                except PeerUnreachable:
                    # A pooled connection can be closed by the peer (idle, or over its
                    # connection cap) just as we use it; every RPC is idempotent: once more,
                    # on a fresh connection.
                    pass
            if peer.port == 0:  # a client-only node: only the connections it opens reach it
                raise PeerUnreachable(f"{method} to {peer}: a client-only node, not connected")
            conn = await self._connection(peer.node_id, peer.host, peer.port)
            return await conn.request(method, args)
        raise CallTimeout(f"{method} to {peer}: no answer within {timeout:.3g}s")

    async def contact_at(self, host: str, port: int, *, timeout: float) -> Contact:
        if self.isolated:
            raise PeerUnreachable(f"contact at {host}:{port}: this node is isolated")
        with deadline(timeout, f"contact at {host}:{port}"):
            conn = await self._connection(None, host, port)
            return Contact(conn.peer.node_id, host, conn.peer.port)
        raise AssertionError("unreachable")

    # -- serving ---------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[Contact] = trio.TASK_STATUS_IGNORED):
        """Listen, accept and dial until cancelled; ``started`` with the real local contact."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host or None)
        try:
            sock = listeners[0].socket
            port = sock.getsockname()[1]
            self.bound = [tuple(ln.socket.getsockname()[:2]) for ln in listeners]
            host = self.host if self.host not in WILDCARD_HOSTS else "127.0.0.1"
            self._local = Contact(self.identity.node_id, host, port)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                if self.idle_timeout is not None:
                    nursery.start_soon(self._reaper)
                task_status.started(self._local)
        finally:  # synchronous: under cancellation every await raises Cancelled
            self._nursery = None
            for listener in listeners:
                listener.socket.close()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._inbound, stream)

    async def _inbound(self, tcp: trio.SocketStream) -> None:
        if self.isolated:
            await trio.aclose_forcefully(tcp)
            return
        try:
            remote_ip = tcp.socket.getpeername()[0]
        except OSError:
            await trio.aclose_forcefully(tcp)
            return
        conn = None
        tls: TLSStream | None = None
        with trio.move_on_after(self.handshake_timeout):
            try:
                tls = TLSStream(tcp, self._server_ctx, server_side=True)
                node_id = await self._handshake(tls)
                frames = _FrameStream(tls, self.max_frame, self)
                hello = await frames.receive()
                if hello is None or hello.kind != wire.HELLO:
                    raise ProtocolError("first frame is not HELLO")
                await tls.send_all(wire.encode_hello(self._advertised_host, self._advertised_port))
                host = hello.host if hello.host not in WILDCARD_HOSTS else remote_ip
                conn = _Connection(self, frames, Contact(node_id, host, hello.port), False)
            except (AuthError, ProtocolError, PeerUnreachable) as exc:
                self._refuse(remote_ip, str(exc))
            except ssl.SSLCertVerificationError as exc:
                self._refuse(remote_ip, _tls_reason(exc))
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                cause = exc.__cause__
                if isinstance(exc, ssl.SSLEOFError) or (
                    isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError)
                ):  # the peer hung up (its own deadline, a port scan): not a verdict on it
                    self.aborted += 1
                    log.info("handshake with %s aborted: %s", remote_ip, _tls_reason(exc))
                else:
                    self._refuse(remote_ip, _tls_reason(exc))
            except Exception as exc:  # anything a hostile peer can provoke: refuse, keep serving
                self._refuse(remote_ip, f"{type(exc).__name__}: {exc}")
        if conn is None:
            if tls is not None:
                tls.close()
            await trio.aclose_forcefully(tcp)
            return
        self._register(conn)
        await conn.run()

    def _refuse(self, who: str, reason: str) -> None:
        self.refusals += 1
        log.warning("refused peer %s: %s", who, reason)

    async def _handshake(self, tls: TLSStream, expected_id: bytes | None = None) -> bytes:
        """TLS handshake, then our own check of the peer certificate; returns its node ID."""
        await tls.handshake()
        der = tls.getpeercert_der()
        if not der:
            raise AuthError("peer presented no certificate")
        node_id = pki.verify_node_cert_der(der, self._ca, expected_id=expected_id)
        if self.revoked is not None and self.revoked(der):
            raise AuthError("certificate revoked by the swarm CA (its revocation list)")
        self._peer_certs[node_id] = der
        return node_id

    # -- dialing ---------------------------------------------------------------------------------

    async def _connection(self, node_id: bytes | None, host: str, port: int) -> _Connection:
        if node_id is not None:
            conn = self._conns.get(node_id)
            if conn is not None and not conn.closed:
                return conn
        if self._nursery is None:
            raise PeerUnreachable("transport is not serving")
        key = node_id if node_id is not None else (host, port)
        dial = self._dialing.get(key)
        if dial is None:
            dial = self._dialing[key] = _Dial()
            self._nursery.start_soon(self._dial, key, node_id, host, port, dial)
        await dial.event.wait()
        if dial.error is not None:
            raise type(dial.error)(str(dial.error))
        assert dial.conn is not None
        return dial.conn

    async def _dial(
        self, key: Any, node_id: bytes | None, host: str, port: int, dial: _Dial
    ) -> None:
        conn = None
        try:
            with trio.move_on_after(self.connect_timeout + self.handshake_timeout):
                conn = await self._open(node_id, host, port)
            if conn is None:
                raise CallTimeout(f"connect to {host}:{port}: timed out")
        except NetworkError as exc:
            dial.error = exc
        except OSError as exc:
            dial.error = PeerUnreachable(f"cannot connect to {host}:{port}: {exc.strerror or exc}")
        except Exception as exc:
            log.debug("dial %s:%s failed", host, port, exc_info=True)
            dial.error = PeerUnreachable(f"cannot connect to {host}:{port}: {exc!r}")
        finally:
            self._dialing.pop(key, None)
            if conn is not None:
                self._register(conn)
                dial.conn = conn
            dial.event.set()
        if conn is not None:
            await conn.run()

    async def _open(self, node_id: bytes | None, host: str, port: int) -> _Connection:
        self.dials += 1
        tcp = await self._connect_tcp(host, port)
        tls: TLSStream | None = None
        try:
            tls = TLSStream(tcp, self._client_ctx, server_side=False)
            try:
                peer_id = await self._handshake(tls, node_id)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                reason = _tls_reason(exc)
                raise AuthError(f"{host}:{port}: TLS handshake failed: {reason}") from None
            except AuthError as exc:
                raise AuthError(f"{host}:{port}: {exc}") from None
            frames = _FrameStream(tls, self.max_frame, self)
            hello_frame = wire.encode_hello(self._advertised_host, self._advertised_port)
            if node_id is not None:
                # A call: its request goes out right behind our HELLO, without waiting for the
                # peer's (one round trip less per new connection); a refusal of our
                # certificate then fails the pending calls with AuthError (see ``run``).
                tls.write_nowait(hello_frame)
                return _Connection(self, frames, Contact(peer_id, host, port), True,
                                   awaiting_hello=True)
            try:
                await tls.send_all(hello_frame)
                hello = await frames.receive()
            except (PeerUnreachable, trio.BrokenResourceError, ssl.SSLError) as exc:
                # TLS 1.3: the server checks our certificate after our handshake completes.
                raise AuthError(
                    f"{host}:{port}: peer closed the connection during the handshake "
                    f"(did it refuse our certificate? {exc})"
                ) from None
            if hello is None:
                raise AuthError(f"{host}:{port}: peer closed the connection during the handshake "
                                "(did it refuse our certificate?)")
            if hello.kind != wire.HELLO:
                raise ProtocolError(f"{host}:{port}: first frame is not HELLO")
        except BaseException:
            if tls is not None:
                tls.close()
            await trio.aclose_forcefully(tcp)
            raise
        # A client-only node listens (it must, to be dialed by a bootstrap address) but
        # advertises port 0: it stays a port-0 contact, which nobody routes or stores through,
        # even when dialed at its real port.
        return _Connection(self, frames, Contact(peer_id, host, 0 if hello.port == 0 else port),
                           True)

    @property
    def _advertised_port(self) -> int:
        return 0 if self.client else self.local.port

    @property
    def _advertised_host(self) -> str:
        """The host our HELLO names: empty when listening on a wildcard address, so the peer
        uses the address it sees us connect from."""
        return "" if self.host in WILDCARD_HOSTS else self.host

    async def _connect_tcp(self, host: str, port: int) -> trio.SocketStream:
        """TCP connect from our listening address. Numeric addresses (what routing holds) skip
        ``open_tcp_stream``'s resolver and happy-eyeballs nursery: joins open thousands."""
        local = None if self.host in WILDCARD_HOSTS else self.host
        try:
            family = ipaddress.ip_address(host).version
        except ValueError:
            return await trio.open_tcp_stream(host, port, local_address=local)
        sock = trio.socket.socket(
            trio.socket.AF_INET6 if family == 6 else trio.socket.AF_INET, trio.socket.SOCK_STREAM
        )
        try:
            if local is not None:
                await sock.bind((local, 0))
            await sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    # -- pool ------------------------------------------------------------------------------------

    def _register(self, conn: _Connection) -> None:
        current = self._conns.get(conn.peer.node_id)
        if current is None or current.closed:
            self._conns[conn.peer.node_id] = conn
        if len(self._live) >= self.max_connections:
            self.close_idle(room=1)     # ``conn`` joins ``_live`` when it starts running

    async def _reaper(self) -> None:
        assert self.idle_timeout is not None
        while True:
            await trio.sleep(self.idle_timeout / 4)
            self.close_idle()

    def close_idle(self, room: int = 0) -> int:
        """Close connections idle (no call pending, no request in hand) for ``idle_timeout``,
        and, past ``max_connections``, the least recently used idle ones. Returns how many.

        Either side may close an idle connection: a peer that was about to use it retries
        once on a new one (``call``)."""
        now = trio.current_time()
        idle = [c for c in self._live if not c.closed and c.idle()]
        limit = self.idle_timeout if self.idle_timeout is not None else math.inf
        closing = [c for c in idle if now - c.last_active >= limit]
        excess = len(self._live) + room - len(closing) - self.max_connections
        if excess > 0:
            rest = sorted((c for c in idle if now - c.last_active < limit),
                          key=lambda c: c.last_active)
            closing += rest[:excess]
        for c in closing:
            c.close()
        self.closed_idle += len(closing)
        return len(closing)

    def _forget(self, conn: _Connection) -> None:
        if self._conns.get(conn.peer.node_id) is conn:
            del self._conns[conn.peer.node_id]

    def connected_peers(self) -> list[Contact]:
        return [c.peer for c in self._conns.values() if not c.closed]

    def connected_contact(self, node_id: bytes) -> Contact | None:
        """The peer ``node_id`` as an open connection (dialed by either side) knows it, or
        None. A call to it goes over that connection: how a node asks a client-only node
        (which advertises port 0 and accepts none), as long as the client keeps it open."""
        conn = self._conns.get(node_id)
        if conn is None or conn.closed or conn.awaiting_hello:
            return None
        return conn.peer

    def drop_revoked(self) -> list[bytes]:
        """Close the connections to peers whose certificate ``revoked`` now refuses; returns
        their node IDs."""
        if self.revoked is None:
            return []
        gone = [n for n, der in self._peer_certs.items() if self.revoked(der)]
        for node_id in gone:
            del self._peer_certs[node_id]
            self.disconnect(node_id)
        return gone

    def disconnect(self, node_id: bytes) -> None:
        """Close the connection to ``node_id`` if any (tests, penalties)."""
        conn = self._conns.get(node_id)
        if conn is not None:
            conn.close()


def _tls_reason(exc: BaseException) -> str:
    cause = exc if isinstance(exc, ssl.SSLError) else (exc.__cause__ or exc.__context__)
    if isinstance(cause, ssl.SSLError):
        return (
            getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or str(cause)
        )
    return str(cause or exc) or type(exc).__name__


__all__ = ["Transport", "deadline", "tls_context"]
