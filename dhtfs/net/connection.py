"""One authenticated connection: whole frames in and out, requests multiplexed by id.

A ``Connection`` is made by ``dhtfs.net.handshake`` once the peer is authenticated and run by
``dhtfs.net.pool``; ``dhtfs.net.transport`` states the invariants of the whole (the ones that
live here: a frame is queued whole, one writer task per connection, backpressure past
``SEND_HIGH_WATER`` and ``max_handlers``, inline methods answered by the reader task, a bad
frame closes this connection only and fails its pending calls).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from dhtfs.base.errors import AuthError, NetworkError, PeerUnreachable, ProtocolError, RemoteError
from dhtfs.net import wire
from dhtfs.net.faults import Faults
from dhtfs.net.network import Contact, Message, RequestHandler
from dhtfs.net.tls import TLSStream

log = logging.getLogger("dhtfs.net.transport")  # one logger for the whole transport

T = TypeVar("T")

SEND_HIGH_WATER = 4 * 1024 * 1024
"""Bytes queued on one connection past which senders wait (see ``Connection._send``)."""


@dataclass
class Counters:
    """What one transport counts (metrics, ``dhtfs status``, tests), shared by its parts."""

    bytes_received: int = 0  # frame bytes in and out on peer connections
    bytes_sent: int = 0
    protocol_errors: int = 0  # connections closed for a malformed or unexpected frame
    refusals: int = 0  # inbound peers refused at the handshake
    aborted: int = 0  # inbound handshakes the peer hung up in the middle of
    dials: int = 0  # outbound connections attempted (each a TLS handshake)
    closed_idle: int = 0  # connections closed for being idle


@dataclass(frozen=True)
class ConnectionSettings:
    """What every connection of one transport shares.

    ``handler`` answers a request (raising ``RemoteError`` for an ERROR answer); at most
    ``max_handlers`` requests of one connection run at once; ``inline_methods`` are answered
    by the reader task itself; ``faults`` are the transport's test switches."""

    handler: RequestHandler
    max_frame: int
    max_handlers: int
    inline_methods: frozenset[str]
    counters: Counters
    faults: Faults


@dataclass
class Outcome(Generic[T]):
    """What one task waits for another to settle (an answer, a dial): a value or an error,
    then ``event`` is set."""

    event: trio.Event = field(default_factory=trio.Event)
    value: T | None = None
    error: NetworkError | None = None


class FrameStream:
    """Whole frames out of a byte stream (``wire.FrameReader`` over ``receive_some``)."""

    def __init__(self, stream: TLSStream, max_frame: int, counters: Counters) -> None:
        self.stream = stream
        self.reader = wire.FrameReader(max_frame)
        self.ready: deque[bytes] = deque()
        self.counters = counters  # counts the bytes received

    async def receive(self) -> wire.Frame | None:
        """The next frame, or None at a clean EOF between frames."""
        reader = self.reader
        while not self.ready:
            direct = reader.direct_view()
            try:
                if direct is not None:  # a large body: decrypted straight into its buffer
                    n = await self.stream.receive_into(direct)
                    pieces = [direct[:n]] if n else []
                else:
                    pieces = await self.stream.receive_pieces()
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                raise PeerUnreachable(f"connection lost: {tls_reason(exc)}") from None
            if not pieces:
                if reader.pending_bytes:
                    raise ProtocolError("connection closed in the middle of a frame")
                return None
            if direct is not None:
                self.counters.bytes_received += n
                self.ready.extend(reader.filled(n))
                continue
            for piece in pieces:
                self.counters.bytes_received += len(piece)
                self.ready.extend(reader.feed(piece))
        return wire.decode_body(self.ready.popleft())


class Connection:
    """One authenticated connection. ``run`` owns its reader, writer and handler tasks."""

    def __init__(
        self,
        settings: ConnectionSettings,
        frames: FrameStream,
        peer: Contact,
        outbound: bool,
        awaiting_hello: bool = False,
    ) -> None:
        self.settings = settings
        self.frames = frames
        self.peer = peer
        self.outbound = outbound
        self.awaiting_hello = awaiting_hello  # dialed: requests went out before its HELLO
        self.reason: NetworkError | None = None  # why it closed, once it has
        self.pending: dict[int, Outcome[Message]] = {}  # the answers awaited, by request id
        self.last_id = 0
        self.closed = False
        self.scope = trio.CancelScope()
        self.handler_slots = trio.Semaphore(settings.max_handlers)
        self.last_active = trio.current_time()

    def idle(self) -> bool:
        """No call waiting for an answer and no request being handled."""
        return not self.pending and self.handler_slots.value == self.settings.max_handlers

    async def request(self, method: str, args: Message) -> Message:
        """Send one request and wait for its answer (the caller holds the deadline)."""
        if self.closed:
            raise self._failure()
        self.last_id += 1
        rid = self.last_id
        self.last_active = trio.current_time()
        frame = wire.encode_request_parts(rid, method, args, self.settings.max_frame)
        pending = self.pending[rid] = Outcome[Message]()
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
        assert pending.value is not None
        return pending.value

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
        self.settings.counters.bytes_sent += (
            len(frame) if isinstance(frame, bytes | bytearray) else sum(map(len, frame)))
        if stream.backlog_bytes > SEND_HIGH_WATER:
            await stream.wait_drained(SEND_HIGH_WATER)

    async def run(self) -> None:
        """Serve the connection until EOF, error or cancellation; then fail pending calls."""
        reason: NetworkError = PeerUnreachable(f"connection to {self.peer} closed")
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    try:
                        await self._reader(nursery)
                    except ProtocolError as exc:
                        log.warning("closing connection to %s: %s", self.peer, exc)
                        self.settings.counters.protocol_errors += 1
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
        inline_methods = self.settings.inline_methods
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
                if frame.method in inline_methods:
                    self._send_nowait(await self._answer(frame, nursery))
                    continue
                await self.handler_slots.acquire()
                nursery.start_soon(self._serve_request, frame, nursery)
            elif frame.kind in (wire.RESPONSE, wire.ERROR):
                pending = self.pending.get(frame.request_id)
                if pending is None:
                    if frame.request_id > self.last_id:
                        raise ProtocolError(f"answer to request {frame.request_id} never sent")
                    continue  # late answer to a call that already timed out
                if frame.kind == wire.RESPONSE:
                    pending.value = frame.payload
                else:
                    pending.error = RemoteError(f"{self.peer}: {frame.message}")
                pending.event.set()
            else:
                raise ProtocolError("unexpected HELLO after the handshake")

    async def _answer(self, frame: wire.Frame, nursery: trio.Nursery) -> bytes:
        """Run the handler for one request; the encoded answer (or error) frame.

        The fault switches (``dhtfs.net.faults``) act here: muted, the request gets no
        answer (an empty frame: nothing is sent); delayed, an answer of the reader task's own
        (``inline_methods``) is sent by a task of its own (in ``nursery``) after the delay,
        the others wait in their task; tampering, a GET_BLOCK answer's ``data`` gets its
        first byte flipped."""
        settings = self.settings
        faults, rid, max_frame = settings.faults, frame.request_id, settings.max_frame
        if faults.mute:
            return b""
        delay = faults.delay
        send_late = delay > 0 and frame.method in settings.inline_methods
        if delay > 0 and not send_late:
            await trio.sleep(delay)
        try:
            answer = await settings.handler(self.peer, frame.method, frame.payload or {})
            if not isinstance(answer, dict):
                raise TypeError(f"handler returned {type(answer).__name__}, not a dict")
            data = wire.encode_response(rid, faults.tampered(frame.method, answer), max_frame)
        except RemoteError as exc:
            data = wire.encode_error(rid, str(exc) or type(exc).__name__, max_frame)
        except Exception as exc:
            log.exception("handler for %s from %s failed", frame.method, self.peer)
            data = wire.encode_error(rid, f"{type(exc).__name__}: {exc}", max_frame)
        if send_late:

            async def late() -> None:
                await trio.sleep(delay)
                self._send_nowait(data)

            nursery.start_soon(late)
            return b""
        return data

    def _send_nowait(self, data: bytes) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self.frames.stream.write_nowait(data)
            self.settings.counters.bytes_sent += len(data)

    async def _serve_request(self, frame: wire.Frame, nursery: trio.Nursery) -> None:
        try:
            data = await self._answer(frame, nursery)
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                await self._send(data)
        finally:
            self.handler_slots.release()

    def close(self) -> None:
        self.scope.cancel()


def tls_reason(exc: BaseException) -> str:
    """The reason a TLS failure gives (the certificate check's message, if it was that)."""
    cause = exc if isinstance(exc, ssl.SSLError) else (exc.__cause__ or exc.__context__)
    if isinstance(cause, ssl.SSLError):
        return (
            getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or str(cause)
        )
    return str(cause or exc) or type(exc).__name__
