"""The connection pool: at most one open connection per peer, reused by every call to it;
dials shared by the callers that wait for them; idle connections closed.

Invariants (the pool's part of ``dhtfs.net.transport``'s):
- one registered connection per peer node ID (whoever dialed first; a simultaneous dial may
  leave two running, each still correct); a closed one is forgotten at once;
- concurrent callers for the same peer (or the same address, when the ID is not known yet)
  wait for one dial, bounded by ``dial_timeout``; each gets its error, or the connection;
- idle connections (nothing pending either way) close after ``idle_timeout``, and the least
  recently used idle ones as soon as more than ``max_connections`` run;
- dial and connection tasks live in ``nursery``, the transport's while it serves; without
  it nothing is dialed (``PeerUnreachable``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio

from dhtfs.base.errors import CallTimeout, NetworkError, PeerUnreachable
from dhtfs.net.connection import Connection, Outcome
from dhtfs.net.handshake import Handshake
from dhtfs.net.network import Contact

log = logging.getLogger("dhtfs.net.transport")  # one logger for the whole transport


class ConnectionPool:
    """The open connections of one transport, by peer; opens new ones with ``handshake``."""

    def __init__(
        self,
        handshake: Handshake,
        *,
        dial_timeout: float,
        idle_timeout: float | None,
        max_connections: int,
    ) -> None:
        self.handshake = handshake
        self.dial_timeout = dial_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.conns: dict[bytes, Connection] = {}  # the registered connection of each peer
        self.live: set[Connection] = set()   # every running connection, registered or not
        self.counters = handshake.counters
        self.nursery: trio.Nursery | None = None
        """Where dials and connections run: the transport's nursery while it serves."""
        self._dialing: dict[Any, Outcome[Connection]] = {}  # by node ID, or (host, port)

    async def connection(self, node_id: bytes | None, host: str, port: int) -> Connection:
        """The open connection to ``node_id``, else a new one to ``host:port``."""
        if node_id is not None:
            conn = self.conns.get(node_id)
            if conn is not None and not conn.closed:
                return conn
        if self.nursery is None:
            raise PeerUnreachable("transport is not serving")
        key = node_id if node_id is not None else (host, port)
        dial = self._dialing.get(key)
        if dial is None:
            dial = self._dialing[key] = Outcome[Connection]()
            self.nursery.start_soon(self._dial, key, node_id, host, port, dial)
        await dial.event.wait()
        if dial.error is not None:
            raise type(dial.error)(str(dial.error))
        assert dial.value is not None
        return dial.value

    async def _dial(
        self, key: Any, node_id: bytes | None, host: str, port: int, dial: Outcome[Connection]
    ) -> None:
        conn = None
        try:
            with trio.move_on_after(self.dial_timeout):
                conn = await self.handshake.dial(node_id, host, port)
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
                self.register(conn)
                dial.value = conn
            dial.event.set()
        if conn is not None:
            await self.run(conn)

    def register(self, conn: Connection) -> None:
        """Make ``conn`` its peer's connection unless an open one is; make room for it."""
        current = self.conns.get(conn.peer.node_id)
        if current is None or current.closed:
            self.conns[conn.peer.node_id] = conn
        if len(self.live) >= self.max_connections:
            self.close_idle(room=1)     # ``conn`` joins ``live`` when it starts running

    async def run(self, conn: Connection) -> None:
        """Run ``conn`` until it closes, then forget it."""
        self.live.add(conn)
        try:
            await conn.run()
        finally:
            self.live.discard(conn)
            if self.conns.get(conn.peer.node_id) is conn:
                del self.conns[conn.peer.node_id]

    async def reaper(self) -> None:
        """Close idle connections every quarter of ``idle_timeout``, until cancelled."""
        assert self.idle_timeout is not None
        while True:
            await trio.sleep(self.idle_timeout / 4)
            self.close_idle()

    def close_idle(self, room: int = 0) -> int:
        """Close connections idle (no call pending, no request in hand) for ``idle_timeout``,
        and, past ``max_connections``, the least recently used idle ones. Returns how many.

        Either side may close an idle connection: a peer that was about to use it retries
        once on a new one (``Transport.call``)."""
        now = trio.current_time()
        idle = [c for c in self.live if not c.closed and c.idle()]
        limit = self.idle_timeout if self.idle_timeout is not None else math.inf
        closing = [c for c in idle if now - c.last_active >= limit]
        excess = len(self.live) + room - len(closing) - self.max_connections
        if excess > 0:
            rest = sorted((c for c in idle if now - c.last_active < limit),
                          key=lambda c: c.last_active)
            closing += rest[:excess]
        for c in closing:
            c.close()
        self.counters.closed_idle += len(closing)
        return len(closing)

    def close_all(self) -> None:
        """Close every running connection."""
        for conn in list(self.live):
            conn.close()

    def connected_peers(self) -> list[Contact]:
        return [c.peer for c in self.conns.values() if not c.closed]

    def connected_contact(self, node_id: bytes) -> Contact | None:
        """The peer ``node_id`` as its open connection knows it (see
        ``Transport.connected_contact``), or None."""
        conn = self.conns.get(node_id)
        if conn is None or conn.closed or conn.awaiting_hello:
            return None
        return conn.peer

    def disconnect(self, node_id: bytes) -> None:
        """Close the connection to ``node_id`` if any."""
        conn = self.conns.get(node_id)
        if conn is not None:
            conn.close()
