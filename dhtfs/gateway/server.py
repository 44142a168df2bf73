"""A small trio HTTP/1.1 server: ``h11`` parses and frames, this module drives it per
connection with deadlines and bounded buffers, and asks ``Routes`` for each response.

Invariants:
- nothing a client sends can end the server task: every connection runs in its own task
  whose errors are caught and logged (a malformed request is a 400 from h11's own error,
  its status hint kept: 431 for a head over ``MAX_HEAD`` bytes); an unexpected error in a
  route is a plain 500, never a traceback on the wire;
- bounded: at most ``MAX_CONNECTIONS`` connections are served at once (more are answered 503
  and closed); a request's head may take ``MAX_HEAD`` bytes and must arrive within
  ``HEAD_SECONDS`` (an idle keep-alive connection is closed after that too); each send must
  complete within ``SEND_SECONDS`` or the connection is closed (a client that stopped
  reading); a request that carries a body, or any method other than GET and HEAD, is
  answered and the connection closed, its body never read;
- backpressure: a body is sent piece by piece, each ``send_all`` awaited before the next
  piece is read, so a slow client slows the read path and a stopped one stops it;
- the first piece of a body is read before the response's head is sent, so a read that
  fails at once is a 502 and not a cut 200; a body that fails later (its file changed, a
  block could not be fetched) is cut: the connection closes before the body's end, which
  the client sees as a short or unterminated body, never as complete.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import h11
import trio

from dhtfs.base.errors import NamespaceError
from dhtfs.gateway.access import Access
from dhtfs.gateway.content import VersionChanged
from dhtfs.gateway.routes import REASONS, Response, Routes, error
from dhtfs.gateway.stats import GatewayStats
from dhtfs.gateway.validators import http_date

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 128
MAX_HEAD = 16 * 1024
RECEIVE_BYTES = 16 * 1024
HEAD_SECONDS = 15.0
SEND_SECONDS = 60.0
COALESCE_BYTES = 64 * 1024
LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
        b"content-length: 24\r\nconnection: close\r\n\r\n503 Service Unavailable\n")
_BODY_ERRORS = (VersionChanged, NamespaceError, ValueError)


class ClientGone(Exception):
    """The client closed the connection or stopped reading (a send timed out)."""


class HttpServer:
    """Serves ``routes`` on ``host:port`` (port 0: any free one; ``address`` once bound) to
    the clients ``access`` lets in (``dhtfs.gateway.access``; default: plain HTTP, anyone)."""

    def __init__(self, routes: Routes, host: str, port: int, *,
                 access: Access | None = None,
                 stats: GatewayStats | None = None,
                 max_connections: int = MAX_CONNECTIONS,
                 head_seconds: float = HEAD_SECONDS) -> None:
        """``head_seconds``: how long a request's head may take to arrive (and an idle
        keep-alive connection may stay open)."""
        self.routes = routes
        self.access = access if access is not None else Access()
        self.head_seconds = head_seconds
        self.host = host
        self.port = port
        self.stats = stats if stats is not None else GatewayStats()
        self._slots = trio.Semaphore(max_connections)
        self.address: tuple[str, int] | None = None

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the bound address to ``task_status``, serve until cancelled;
        OSError if the address cannot be bound."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.address = listeners[0].socket.getsockname()[:2]
        log.info("HTTP gateway on http://%s:%d/", *self.address)
        task_status.started(self.address)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, tcp: trio.SocketStream) -> None:
        """One connection, whatever happens on it (see the module docstring)."""
        stream: trio.abc.Stream = tcp
        try:
            if self._slots.value == 0:
                self.stats.refused += 1
                if self.access.context is None:
                    with trio.move_on_after(SEND_SECONDS):
                        await tcp.send_all(BUSY)
                return
            async with self._slots:
                self.stats.connections += 1
                try:
                    if self.access.context is not None:
                        secured = await self._tls(tcp)
                        if secured is None:
                            return
                        stream = secured
                    await self._serve(stream)
                    if stream is tcp:
                        await self._linger(tcp)
                finally:
                    self.stats.connections -= 1
        except (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("gateway: a connection failed")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                await stream.aclose()

    async def _tls(self, tcp: trio.SocketStream) -> trio.SSLStream | None:
        """The TLS session over ``tcp`` (handshake within ``head_seconds``); None, counted
        as ``denied``, if the handshake fails or the client's certificate is revoked."""
        access = self.access
        assert access.context is not None
        stream = trio.SSLStream(tcp, access.context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(self.head_seconds):
                await stream.do_handshake()
        except (trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            log.info("gateway: a TLS handshake failed: %s", exc)
            self.stats.denied += 1
            return None
        if access.client_certificates and access.revoked is not None:
            der = stream.getpeercert(binary_form=True)
            if der is None or access.revoked(der):
                log.warning("gateway: a client presented a revoked certificate")
                self.stats.denied += 1
                return None
        return stream

    async def _linger(self, stream: trio.SocketStream) -> None:
        """Close our side, then read and drop what the client still sends (at most
        ``LINGER_BYTES`` for ``LINGER_SECONDS``): closing with unread bytes would reset the
        connection, and the client could lose the response (a 400, a 431, a 405)."""
        with trio.move_on_after(LINGER_SECONDS):
            try:
                await stream.send_eof()
                left = LINGER_BYTES
                while left > 0 and (data := await stream.receive_some(RECEIVE_BYTES)):
                    left -= len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _serve(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            try:
                with trio.fail_after(self.head_seconds):
                    event = await _next_event(conn, stream)
            except trio.TooSlowError:
                self.stats.timed_out += 1
                return
            except h11.RemoteProtocolError as exc:
                await self._send_error(conn, stream, exc.error_status_hint, str(exc))
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, or PAUSED
            started = trio.current_time()
            headers = _header_dict(event.headers)
            close = (event.method not in (b"GET", b"HEAD") or b"transfer-encoding" in headers
                     or headers.get(b"content-length", b"0").strip() not in (b"0", b""))
            try:
                if not self.access.authorized(headers):
                    self.stats.denied += 1
                    close = True
                    response = error(401, "a bearer token is required",
                                     www_authenticate=b'Bearer realm="dhtfs"')
                else:
                    response = await self.routes.respond(event.method, event.target, headers)
            except Exception:
                log.exception("gateway: %s %r failed", event.method.decode(), event.target)
                response = error(500)
            sent = await self._send(conn, stream, event.method, response, started, close)
            if not sent or close or conn.our_state is h11.MUST_CLOSE:
                return
            try:
                with trio.fail_after(self.head_seconds):
                    event = await _next_event(conn, stream)
            except (trio.TooSlowError, h11.RemoteProtocolError):
                return
            if not isinstance(event, h11.EndOfMessage):
                return
            conn.start_next_cycle()

    async def _send(self, conn: h11.Connection, stream: trio.abc.Stream, method: bytes,
                    response: Response, started: float, close: bool) -> bool:
        """Send ``response``; False if its body was cut (the connection must close)."""
        body = response.body
        try:
            first = b""
            with_body = method != b"HEAD" and response.status not in (204, 304)
            if with_body:
                try:
                    first = await body.__anext__()
                except StopAsyncIteration:
                    pass
                except _BODY_ERRORS as exc:
                    log.warning("gateway: %r: %s", response.status, exc)
                    response = error(502, "the file could not be read")
                    first = await response.body.__anext__()
                    close = True
            head = [(b"date", http_date(time.time())), (b"server", b"dhtfs"),
                    *response.headers]
            if response.length is not None and response.status != 304:
                head.append((b"content-length", b"%d" % response.length))
            if close:
                head.append((b"connection", b"close"))
            out = conn.send(h11.Response(
                status_code=response.status, headers=head,
                reason=REASONS.get(response.status, "").encode())) or b""
            if with_body and first and len(first) <= COALESCE_BYTES:
                # a small body leaves with its head: one send, one segment
                out += b"".join(conn.send_with_data_passthrough(h11.Data(data=first)))
                self.stats.bytes_sent += len(first)
                first = b""
            await _send(stream, out)
            self.stats.answered(response.status, trio.current_time() - started)
            if with_body:
                try:
                    piece = first
                    while True:
                        if piece:  # h11 frames it; the piece itself is sent as is
                            for part in conn.send_with_data_passthrough(h11.Data(data=piece)):
                                await _send(stream, part)
                            self.stats.bytes_sent += len(piece)
                        piece = await response.body.__anext__()
                except StopAsyncIteration:
                    pass
                except _BODY_ERRORS as exc:
                    log.warning("gateway: a body was cut: %s", exc)
                    self.stats.cut += 1
                    return False
            await _send(stream, conn.send(h11.EndOfMessage()))
            return True
        except ClientGone:
            self.stats.cut += 1
            return False
        finally:
            await _close(body)
            await _close(response.body)

    async def _send_error(self, conn: h11.Connection, stream: trio.abc.Stream,
                          status: int, detail: str) -> None:
        """A plain error for a request h11 refused, if a response may still be sent."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = error(status if 400 <= status < 600 else 400, detail)
        self.stats.answered(response.status, 0.0)
        body = b"".join([piece async for piece in response.body])
        head = [(b"date", http_date(time.time())), (b"server", b"dhtfs"), *response.headers,
                (b"content-length", b"%d" % len(body)), (b"connection", b"close")]
        try:
            await _send(stream, conn.send(h11.Response(
                status_code=response.status, headers=head,
                reason=REASONS.get(response.status, "").encode())))
            await _send(stream, conn.send(h11.Data(data=body)))
            await _send(stream, conn.send(h11.EndOfMessage()))
        except (ClientGone, h11.LocalProtocolError):
            pass


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    """h11's next event, receiving as it needs (at most ``RECEIVE_BYTES`` at a time)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        conn.receive_data(data)


async def _send(stream: trio.abc.Stream, data: bytes | None) -> None:
    """Send ``data`` within ``SEND_SECONDS``; ClientGone if the client is gone or stalled."""
    if not data:
        return
    try:
        with trio.fail_after(SEND_SECONDS):
            await stream.send_all(data)
    except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
        raise ClientGone() from None


async def _close(body: AsyncIterator[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True):
            await aclose()


def _header_dict(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Lower-cased names (h11 gives them so); repeated fields joined with ``, ``."""
    out: dict[bytes, bytes] = {}
    for name, value in headers:
        out[name] = out[name] + b", " + value if name in out else value
    return out
