"""Opening and accepting authenticated connections: TCP, TLS 1.3, our own check of the peer's
certificate, then the HELLO exchange. What comes out is a ``dhtfs.net.connection.Connection``.

Invariants (the security ones of ``dhtfs.net.transport``):
- the TLS layer verifies that the peer's certificate chains to the swarm CA and proves key
  possession; ``_verify`` then re-checks it with ``pki.verify_node_cert_der`` and derives the
  peer's node ID from its key; a certificate ``revoked`` refuses is refused too;
- no request is read, and no frame sent, before that succeeds; an inbound peer that fails is
  logged with its reason (``refused peer ...``) and counted (``Counters.refusals``), one that
  merely hung up in the middle (a port scan, its own deadline) too (``Counters.aborted``);
- a dialer that expected a node ID gets ``AuthError`` if the key behind the address differs;
- every accept finishes within ``timeout``; whatever a hostile peer sends, ``accept`` returns
  None (and closes the socket) rather than raise.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Callable

import trio

from dhtfs.base.errors import AuthError, PeerUnreachable, ProtocolError
from dhtfs.net import wire
from dhtfs.net.addresses import WILDCARD_HOSTS
from dhtfs.net.connection import Connection, ConnectionSettings, FrameStream, tls_reason
from dhtfs.net.network import Contact
from dhtfs.net.tls import TLSStream, tls_context
from dhtfs.trust import pki

log = logging.getLogger("dhtfs.net.transport")  # one logger for the whole transport


class Handshake:
    """Makes connections of ``identity`` (listening on ``host``), each with ``settings``.

    ``hello()`` is the HELLO frame we send (it names the host and port we advertise);
    ``timeout`` bounds an accepted connection's handshake; ``revoked(der)``, when set, refuses
    a peer certificate (``dhtfs.trust.revocation``)."""

    def __init__(
        self,
        identity: pki.Identity,
        host: str,
        settings: ConnectionSettings,
        hello: Callable[[], bytes],
        *,
        timeout: float,
        revoked: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.settings, self.counters = settings, settings.counters
        self.hello, self.timeout, self.revoked = hello, timeout, revoked
        self.peer_certs: dict[bytes, bytes] = {}  # the certificates (DER) of peers met, by ID
        # Connections we open leave from our listening address, unless that is a wildcard.
        self._local_address = None if host in WILDCARD_HOSTS else host
        self._server_ctx = tls_context(identity, server_side=True)
        self._client_ctx = tls_context(identity, server_side=False)
        self._ca = pki.load_cert(identity.ca_cert)

    async def _verify(self, tls: TLSStream, expected_id: bytes | None = None) -> bytes:
        """TLS handshake, then our own check of the peer certificate; returns its node ID."""
        await tls.handshake()
        der = tls.getpeercert_der()
        if not der:
            raise AuthError("peer presented no certificate")
        node_id = pki.verify_node_cert_der(der, self._ca, expected_id=expected_id)
        if self.revoked is not None and self.revoked(der):
            raise AuthError("certificate revoked by the swarm CA (its revocation list)")
        self.peer_certs[node_id] = der
        return node_id

    def _refuse(self, who: str, reason: str) -> None:
        self.counters.refusals += 1
        log.warning("refused peer %s: %s", who, reason)

    def _frames(self, tls: TLSStream) -> FrameStream:
        return FrameStream(tls, self.settings.max_frame, self.counters)

    # -- accepting -------------------------------------------------------------------------------

    async def accept(self, tcp: trio.SocketStream) -> Connection | None:
        """The connection an inbound peer opened, or None (refused, aborted: ``tcp`` closed)."""
        try:
            remote_ip = tcp.socket.getpeername()[0]
        except OSError:
            await trio.aclose_forcefully(tcp)
            return None
        conn = None
        tls: TLSStream | None = None
        with trio.move_on_after(self.timeout):
            try:
                tls = TLSStream(tcp, self._server_ctx, server_side=True)
                node_id = await self._verify(tls)
                frames = self._frames(tls)
                hello = await frames.receive()
                if hello is None or hello.kind != wire.HELLO:
                    raise ProtocolError("first frame is not HELLO")
                await tls.send_all(self.hello())
                host = hello.host if hello.host not in WILDCARD_HOSTS else remote_ip
                conn = Connection(self.settings, frames, Contact(node_id, host, hello.port),
                                  False)
            except (AuthError, ProtocolError, PeerUnreachable) as exc:
                self._refuse(remote_ip, str(exc))
            except ssl.SSLCertVerificationError as exc:
                self._refuse(remote_ip, tls_reason(exc))
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                cause = exc.__cause__
                if isinstance(exc, ssl.SSLEOFError) or (
                    isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError)
                ):  # the peer hung up (its own deadline, a port scan): not a verdict on it
                    self.counters.aborted += 1
                    log.info("handshake with %s aborted: %s", remote_ip, tls_reason(exc))
                else:
                    self._refuse(remote_ip, tls_reason(exc))
            except Exception as exc:  # anything a hostile peer can provoke: refuse, keep serving
                self._refuse(remote_ip, f"{type(exc).__name__}: {exc}")
        if conn is None:
            if tls is not None:
                tls.close()
            await trio.aclose_forcefully(tcp)
        return conn

    # -- dialing ---------------------------------------------------------------------------------

    async def dial(self, node_id: bytes | None, host: str, port: int) -> Connection:
        """A new connection to ``host:port`` (whose key must be ``node_id``'s, if given)."""
        self.counters.dials += 1
        tcp = await self._connect_tcp(host, port)
        tls: TLSStream | None = None
        try:
            tls = TLSStream(tcp, self._client_ctx, server_side=False)
            try:
                peer_id = await self._verify(tls, node_id)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                reason = tls_reason(exc)
                raise AuthError(f"{host}:{port}: TLS handshake failed: {reason}") from None
            except AuthError as exc:
                raise AuthError(f"{host}:{port}: {exc}") from None
            frames = self._frames(tls)
            hello_frame = self.hello()
            if node_id is not None:
                # A call: its request goes out right behind our HELLO, without waiting for the
                # peer's (one round trip less per new connection); a refusal of our
                # certificate then fails the pending calls with AuthError (``Connection.run``).
                tls.write_nowait(hello_frame)
                return Connection(self.settings, frames, Contact(peer_id, host, port), True,
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
        return Connection(self.settings, frames,
                          Contact(peer_id, host, 0 if hello.port == 0 else port), True)

    async def _connect_tcp(self, host: str, port: int) -> trio.SocketStream:
        """TCP connect from our listening address. Numeric addresses (what routing holds) skip
        ``open_tcp_stream``'s resolver and happy-eyeballs nursery: joins open thousands."""
        local = self._local_address
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
