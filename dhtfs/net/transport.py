"""The real ``Network``: persistent, mutually authenticated TLS 1.3 connections over TCP.

One connection per peer pair (whoever dials first; a simultaneous dial may leave two, each
still correct), multiplexing requests by id with the ``dhtfs.net.wire`` codec. ``Transport``
ties together the pieces, each in a module of its own: ``dhtfs.net.connection`` (one
connection: framing, requests multiplexed by id, its reader, writer and handler tasks),
``dhtfs.net.handshake`` (opening and accepting connections: TLS, certificate checks, HELLO),
``dhtfs.net.pool`` (one connection per peer, shared dials, idle connections closed) and
``dhtfs.net.faults`` (the test switches).

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
import logging
from collections.abc import Callable, Collection, Iterator
from typing import Any

import trio

from dhtfs.base.errors import CallTimeout, PeerUnreachable, RemoteError
from dhtfs.net import rpc, wire
from dhtfs.net.addresses import WILDCARD_HOSTS, describe
from dhtfs.net.connection import ConnectionSettings, Counters
from dhtfs.net.faults import Faults
from dhtfs.net.handshake import Handshake
from dhtfs.net.network import Contact, Message, RequestHandler
from dhtfs.net.pool import ConnectionPool
from dhtfs.net.tls import tls_context
from dhtfs.trust import pki

log = logging.getLogger(__name__)


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """The one deadline helper: run the block for at most ``seconds``, else ``CallTimeout``."""
    with trio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise CallTimeout(f"{what}: no answer within {seconds:.3g}s")


def _counter(name: str) -> property:
    """A read-only attribute of ``Transport``: its count ``counters.<name>``."""
    return property(lambda transport: getattr(transport.counters, name),
                    doc=f"``counters.{name}`` (see ``dhtfs.net.connection.Counters``)")


class Transport:
    """``Network`` over TLS. Construct, then ``await nursery.start(serve)``. ``handler``,
    ``client`` and ``revoked`` are best given to the constructor; they may still be set
    later (requests that come before a handler get a "node is not ready" ERROR answer)."""

    refusals = _counter("refusals")
    aborted = _counter("aborted")
    dials = _counter("dials")
    protocol_errors = _counter("protocol_errors")
    bytes_received = _counter("bytes_received")
    bytes_sent = _counter("bytes_sent")
    closed_idle = _counter("closed_idle")

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
        client: bool = False,
        revoked: Callable[[bytes], bool] | None = None,
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
        # A client-only node (``-o storage=false``) advertises port 0 in its HELLO: peers
        # never put it in their routing tables (``Node._seen``), so it is never a replica.
        self.client = client
        self.bound: list[tuple[str, int]] = []
        """The listening sockets' addresses, once serving."""
        self.faults = Faults()  # test switches (see ``set_faults``, ``isolate``); all off
        self.counters = Counters()
        settings = ConnectionSettings(
            handler=self._handle, max_frame=max_frame,
            max_handlers=max_handlers_per_connection, inline_methods=self.inline_methods,
            counters=self.counters, faults=self.faults)
        # Revocation (dhtfs.trust.revocation): a peer whose certificate (DER) ``revoked``
        # refuses is refused at the handshake.
        self._handshake = Handshake(identity, host, settings, self._hello,
                                    timeout=handshake_timeout, revoked=revoked)
        self._pool = ConnectionPool(self._handshake,
                                    dial_timeout=connect_timeout + handshake_timeout,
                                    idle_timeout=idle_timeout, max_connections=max_connections)
        self._local: Contact | None = None

    async def _handle(self, peer: Contact, method: str, args: Message) -> Message:
        """A request of ``peer``, answered by ``handler`` once there is one."""
        handler = self.handler
        if handler is None:
            raise RemoteError("node is not ready")
        return await handler(peer, method, args)

    def _hello(self) -> bytes:
        """Our HELLO frame: the host it names is empty when listening on a wildcard address
        (the peer then uses the address it sees us connect from); its port is 0 for a
        client-only node."""
        host = "" if self.host in WILDCARD_HOSTS else self.host
        return wire.encode_hello(host, 0 if self.client else self.local.port)

    # -- test switches ----------------------------------------------------------------------------

    def set_faults(self, **switches: Any) -> dict[str, Any]:
        """Set the test switches given by keyword (``Faults.set``): off by default, reachable
        only through the root-only control socket (``faults``), for tests of the read path
        against bad peers. Each one left out (or None) keeps its setting; returns the
        settings now in force; an unknown keyword raises ``TypeError``.

        ``delay``: every answer this node serves waits that many seconds first (the
        connection goes on reading meanwhile); ``tamper``: GET_CHUNK answers carry bytes
        that differ from the real ones (their hash no longer matches); ``mute``: requests
        are read but never answered (callers time out or hedge); ``hold``: this node's own
        outgoing calls of these methods (e.g. ``["PUT_CHUNK"]``) wait, within their deadline,
        until the hold is lifted (``hold=[]``), as if the network held them back: a call held
        past its deadline fails with ``CallTimeout``."""
        return self.faults.set(**switches)

    @property
    def isolated(self) -> bool:
        """Whether this node is cut off the network (``isolate``)."""
        return self.faults.isolated

    def isolate(self, on: bool) -> None:
        """Cut this node off the network (tests of partitions): while on, every call fails
        with ``PeerUnreachable``, inbound connections are dropped, and the open ones close."""
        self.faults.isolated = on
        if on:
            self._pool.close_all()

    # -- peers ------------------------------------------------------------------------------------

    @property
    def revoked(self) -> Callable[[bytes], bool] | None:
        """Refuses a peer certificate (DER) at the handshake (``dhtfs.trust.revocation``)."""
        return self._handshake.revoked

    @revoked.setter
    def revoked(self, revoked: Callable[[bytes], bool] | None) -> None:
        self._handshake.revoked = revoked

    def peer_cert(self, node_id: bytes) -> bytes | None:
        """The DER certificate a peer showed at its last handshake with this node, if any."""
        return self._handshake.peer_certs.get(node_id)

    def addresses(self) -> dict[str, Any]:
        """Where this node is bound and what its HELLO advertises (``dhtfs status``)."""
        return describe(self.bound, client=self.client)

    # -- Network ----------------------------------------------------------------------------------

    @property
    def local(self) -> Contact:
        if self._local is None:
            raise RuntimeError("transport is not serving yet")
        return self._local

    async def call(self, peer: Contact, method: str, args: Message, *, timeout: float) -> Message:
        # ``deadline()`` spelled out: this is the hot path, and a generator-based context
        # manager costs as much as the rest of the call's bookkeeping.
        faults = self.faults
        if faults.isolated:
            raise PeerUnreachable(f"{method} to {peer}: this node is isolated")
        with trio.move_on_after(timeout):
            if faults.hold and method in faults.hold:
                await faults.held(method)  # test switch (``set_faults``)
            conn = self._pool.conns.get(peer.node_id)
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
            conn = await self._pool.connection(peer.node_id, peer.host, peer.port)
            return await conn.request(method, args)
        raise CallTimeout(f"{method} to {peer}: no answer within {timeout:.3g}s")

    async def contact_at(self, host: str, port: int, *, timeout: float) -> Contact:
        if self.isolated:
            raise PeerUnreachable(f"contact at {host}:{port}: this node is isolated")
        with deadline(timeout, f"contact at {host}:{port}"):
            conn = await self._pool.connection(None, host, port)
            return Contact(conn.peer.node_id, host, conn.peer.port)
        raise AssertionError("unreachable")

    # -- serving ----------------------------------------------------------------------------------

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
                self._pool.nursery = nursery
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                if self.idle_timeout is not None:
                    nursery.start_soon(self._pool.reaper)
                task_status.started(self._local)
        finally:  # synchronous: under cancellation every await raises Cancelled
            self._pool.nursery = None
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
        conn = await self._handshake.accept(tcp)
        if conn is not None:
            self._pool.register(conn)
            await self._pool.run(conn)

    # -- the pool ---------------------------------------------------------------------------------

    def close_idle(self, room: int = 0) -> int:
        """Close connections idle (no call pending, no request in hand) for ``idle_timeout``,
        and, past ``max_connections``, the least recently used idle ones. Returns how many.

        Either side may close an idle connection: a peer that was about to use it retries
        once on a new one (``call``)."""
        return self._pool.close_idle(room)

    def connected_peers(self) -> list[Contact]:
        return self._pool.connected_peers()

    def connected_contact(self, node_id: bytes) -> Contact | None:
        """The peer ``node_id`` as an open connection (dialed by either side) knows it, or
        None. A call to it goes over that connection: how a node asks a client-only node
        (which advertises port 0 and accepts none), as long as the client keeps it open."""
        return self._pool.connected_contact(node_id)

    def drop_revoked(self) -> list[bytes]:
        """Close the connections to peers whose certificate ``revoked`` now refuses; returns
        their node IDs."""
        revoked, certs = self.revoked, self._handshake.peer_certs
        if revoked is None:
            return []
        gone = [n for n, der in certs.items() if revoked(der)]
        for node_id in gone:
            del certs[node_id]
            self.disconnect(node_id)
        return gone

    def disconnect(self, node_id: bytes) -> None:
        """Close the connection to ``node_id`` if any (tests, penalties)."""
        self._pool.disconnect(node_id)


__all__ = ["Transport", "deadline", "tls_context"]
