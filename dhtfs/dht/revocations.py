"""Revocation lists spreading between nodes: the ``CRL`` service, and a node's start-up of it.

A node's list is a ``dhtfs.trust.revocation.RevocationList`` (it adopts only a newer list the
swarm CA signed). Here, nodes hand newer lists to each other: every ``SYNC_SECONDS`` a node asks
``SYNC_PEERS`` peers of its routing table with its CRL number, and whoever has a newer list
hands it over (``RevocationService``). ``start_revocation`` wires a node: its transport refuses
revoked peers at the handshake, and each adopted list drops the connections to the peers it
revokes and forgets them in routing, for good (``Node.shut_out_peer``: a request or an answer from
one already under way when the list arrived does not bring it back).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import trio

from dhtfs.base.errors import NetworkError, RemoteError
from dhtfs.dht.node import Node
from dhtfs.net.network import Contact, Message
from dhtfs.net.transport import Transport
from dhtfs.trust import pki
from dhtfs.trust.revocation import RevocationList

log = logging.getLogger(__name__)

SERVICE = "CRL"
"""``{"number": int}`` → ``{"number": int, "crl"?: bytes}`` (the DER list, when newer)."""
SYNC_SECONDS = 5.0
SYNC_PEERS = 3


class RevocationService:
    """The ``CRL`` service of one node: answers peers, and asks them (``run``)."""

    def __init__(self, revocations: RevocationList, node: Node) -> None:
        self.revocations = revocations
        self.node = node

    async def handle(self, caller: Contact, method: str, args: Message) -> Message:
        """The ``CRL`` service: hand over our list when the caller's is older."""
        theirs = args.get("number")
        if not isinstance(theirs, int):
            raise RemoteError("CRL: 'number' must be an integer")
        mine = self.revocations
        if mine.der is not None and theirs < mine.number:
            return {"number": mine.number, "crl": mine.der}
        return {"number": mine.number}

    async def run(self) -> None:
        """Every ``SYNC_SECONDS``: re-read the configured file, and ask a few peers."""
        mine, node = self.revocations, self.node
        rng = random.Random()
        while True:
            await trio.sleep(SYNC_SECONDS * (0.75 + 0.5 * rng.random()))
            mine.reload_configured()
            known = node.routing.contacts()
            for peer in rng.sample(known, min(SYNC_PEERS, len(known))):
                try:
                    ans = await node.call(peer, SERVICE, {"number": mine.number},
                                          node.rpc_timeout)
                except NetworkError:
                    continue
                crl = ans.get("crl") if isinstance(ans, dict) else None
                if isinstance(crl, bytes):
                    mine.offer(crl, source=f"peer {peer}")


def start_revocation(
    nursery: trio.Nursery, node: Node, transport: Transport, ca_cert: Path, state_dir: Path,
    configured: Path | None,
) -> RevocationList:
    """Load the node's list, make the transport refuse revoked peers, serve and spread newer
    lists (in ``nursery``); a newly adopted list drops the peers it revokes at once."""

    def adopted() -> None:
        for node_id in transport.drop_revoked():
            node.shut_out_peer(node_id)
            log.warning("dropped revoked peer %s", node_id.hex()[:16])

    # Lists adopted while loading find ``transport.revoked`` unset (nothing to drop yet): the
    # call below, once it is set, drops what they revoke.
    revocations = RevocationList(pki.load_cert(ca_cert), state_dir, configured,
                                 on_adopted=adopted)
    transport.revoked = revocations.is_revoked
    adopted()
    service = RevocationService(revocations, node)
    node.services[SERVICE] = service.handle
    nursery.start_soon(service.run)
    return revocations
