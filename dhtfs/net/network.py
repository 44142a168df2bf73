"""The seam between Kademlia logic and the wire: one small interface, two implementations.

``dhtfs.net.transport`` implements it over persistent, mutually authenticated TCP connections
(real processes on loopback or a LAN); ``dhtfs.sim`` implements it in memory under trio's
virtual clock, with per-link latency, loss and partitions. The node logic (``dhtfs.dht.node``)
sees only this module, so the same code runs in both.

Contract of ``Network.call``:
- returns the peer's answer (a msgpack-able dict) or raises a ``dhtfs.base.errors.NetworkError``
  subclass: ``CallTimeout`` past ``timeout`` seconds, ``PeerUnreachable`` when no connection can
  be had or it drops, ``RemoteError`` when the handler on the far side failed, ``AuthError`` when
  the peer's identity does not verify, ``ProtocolError`` on a malformed answer;
- it never blocks past ``timeout`` (the deadline covers connecting and the handshake too);
- the request handler on the far side is called with the *authenticated* caller contact: its
  ``node_id`` is proven (certificate key hash in the real transport), never taken on trust.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

NODE_ID_BYTES = 32

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Contact:
    """A peer as routing knows it: its 256-bit node ID and where it listens."""

    node_id: bytes
    host: str
    port: int

    def __post_init__(self) -> None:
        if len(self.node_id) != NODE_ID_BYTES:
            raise ValueError(f"node id must be {NODE_ID_BYTES} bytes")

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"{self.node_id.hex()[:12]}@{self.host}:{self.port}"


RequestHandler = Callable[[Contact, str, Message], Awaitable[Message]]
"""``handler(caller, method, args) -> answer``. Raising ``RemoteError`` sends an error answer;
any other exception is logged and also answered as an error (never kills the server)."""


class Network(Protocol):
    """What the node logic needs from a network."""

    @property
    def local(self) -> Contact:
        """This node's own contact (the address peers should dial)."""
        ...

    async def call(self, peer: Contact, method: str, args: Message, *, timeout: float) -> Message:
        """Send one request to ``peer`` and wait for its answer. See the module contract."""
        ...

    async def contact_at(self, host: str, port: int, *, timeout: float) -> Contact:
        """Dial an address whose node ID is not yet known (bootstrap) and learn who answers.

        The answer's node ID is proven the same way as for ``call``.
        """
        ...
