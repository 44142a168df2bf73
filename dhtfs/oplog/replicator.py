"""The replicated op log: signed entries from many origins, spread by push and anti-entropy.

``dhtfs.oplog`` knows nothing of what an entry means. An entry is ``(origin, seq, body, sig)``:
the 32-byte node ID of the node that made it, its place in that origin's sequence (1, 2, 3, …
with no gaps), opaque bytes (for a mount, ``dhtfs.meta.ops.encode_op``, which starts with its
own format version), and the origin's ECDSA signature (on the last entry of a batch, over the
chain link that covers the whole run: ``dhtfs.oplog.signing``). A ``LogStore``
(``dhtfs.oplog.logstore``) holds entries and applies them (the namespace on a mount, a plain
table on a headless node); a ``LogReplicator`` moves them between nodes. It ties four sides
together, one module each, built in its constructor around one ``LogContext``
(``dhtfs.oplog.shared``: the node, the store, the signer, the membership, the counters and one
seeded RNG); each side's module states the invariants it keeps:

- ``dhtfs.oplog.gossip``: push; own entries go out at once, signed once per batch, and a node
  forwards entries new to it to ``fanout`` random peers (infect-and-die gossip);
- ``dhtfs.oplog.accept``: an entry is accepted only if it extends its origin's run by one and
  a verified signature of the origin covers its chain link; early ones are stashed, a relay
  whose batch fails is penalized;
- ``dhtfs.oplog.antientropy``: push-pull rounds with one random peer every
  ``sync_interval``, pulls that fill gaps, pull answers, and the folding beat;
- ``dhtfs.oplog.snapshots``: snapshots for nodes behind what was folded, and rejoining.

Invariants of the whole:
- a store holds, for every origin, exactly the entries ``1..vector()[origin]`` (a version
  vector with no holes), so "what do you lack" is one integer per origin;
- an entry a store hands out survives a crash of its process (``LogStore.entries_after``);
- a relay can neither forge, alter nor reorder another node's entries (``dhtfs.oplog.accept``,
  ``dhtfs.oplog.signing``);
- a peer that cannot authenticate with the swarm CA never reaches these handlers (the transport
  refuses it at the handshake), so it learns nothing of the log.

Folding (a store that can: ``FoldingStore``, the namespace of a mount): every node reports
its vector and clock in each pull and pull answer; a node that has reports from every member
it knows (every node it exchanged log RPCs with, and every origin) hands the store the
component-wise minimum and maximum of the vectors and the smallest clock, every
``fold_interval``, and the store folds what is stable (``dhtfs.oplog.folding``,
``dhtfs.meta.history``). A puller behind what the answering node folded installs a snapshot
instead (``dhtfs.oplog.snapshots``).

Members that are gone (``dhtfs.oplog.membership``): forget records ride on every message
(``"forgotten"``); entries of a forgotten origin past its cut are refused quietly; a node that
learns it was forgotten takes a snapshot from the next peer it syncs with, makes its own
changes that nobody saw again on top of it, and marks itself rejoined.

RPCs (args → answer)::

    LOG_PUSH      {"entries": [[origin, seq, body, sig], ...], "certs": [[origin, der], ...]}
                  → {"accepted": n}
    LOG_PULL      {"vector": [[origin, seq], ...], "limit": n, "clock"?: int}
                  → {"entries": [...], "certs": [...], "vector": [[origin, seq], ...],
                     "more": bool, "clock"?: int, "snapshot"?: true}
    LOG_SNAPSHOT  {"page": i, "id"?: bytes} → {"id": bytes, "pages": n, "data": bytes}
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from dhtfs.base.errors import RemoteError
from dhtfs.base.periodic import Doorbell
from dhtfs.dht.node import Node
from dhtfs.net.network import Contact, Message
from dhtfs.oplog.accept import Acceptor
from dhtfs.oplog.antientropy import LOG_PULL, AntiEntropy
from dhtfs.oplog.entries import (
    InvalidEntry,
    LogEntry,
    certs_from_wire,
    entries_from_wire,
)
from dhtfs.oplog.folding import Folding
from dhtfs.oplog.gossip import LOG_PUSH, Gossip
from dhtfs.oplog.logstore import FoldingStore, LogStore
from dhtfs.oplog.membership import Membership, Record
from dhtfs.oplog.shared import LogContext, ReplicatorStats
from dhtfs.oplog.signing import KeyedSigner, Signatures, Signer, signed_message
from dhtfs.oplog.snapshots import LOG_SNAPSHOT, Snapshots

METHODS = frozenset({LOG_PUSH, LOG_PULL, LOG_SNAPSHOT})


class LogReplicator:
    """Moves log entries between this node and its peers (see the module docstring).

    ``node`` is a ``dhtfs.dht.node.Node`` (routing table, calls with RTT bookkeeping). Start
    ``run`` in a nursery; call ``notify`` (synchronous, cheap), or ring ``wake``, whenever
    the store gained own entries; register ``handle`` for ``METHODS`` on the node.
    """

    def __init__(
        self,
        node: Node,
        store: LogStore,
        signer: Signer,
        *,
        fanout: int = 6,
        sync_interval: float = 1.0,
        rpc_timeout: float = 10.0,
        fold_interval: float = 10.0,
        push_gap: float = 0.02,
        fold_alone: bool = True,
        rng: random.Random | None = None,
        membership: Membership | None = None,
        revoked: Callable[[bytes], bool] | None = None,
        wake: Doorbell | None = None,
    ) -> None:
        self.node = node
        self.store = store
        self.signer = signer
        self.own_id = signer.own_id
        self.stats = ReplicatorStats()
        self.store.add_cert(self.own_id, signer.own_cert)
        signer.check_cert(self.own_id, signer.own_cert)
        # Members, their reports, folding (``dhtfs.oplog.folding``). ``fold_alone``: fold with
        # no other member known? Yes for a private swarm of one; not for a node meant to join
        # one (it would fold changes its swarm never saw, and could then not take the
        # swarm's snapshot without losing them).
        self.fold = Folding(store, self.own_id, fold_alone=fold_alone, membership=membership)
        self.membership = self.fold.membership
        context = LogContext(node, store, signer, self.membership, self.stats,
                             rng if rng is not None else random.Random(signer.own_id),
                             rpc_timeout)
        self.gossip = Gossip(context, fanout=fanout, push_gap=push_gap, wake=wake)
        self.acceptor = Acceptor(context, self.gossip)
        self.snapshots = Snapshots(context, self.fold.folding, self.acceptor, self.gossip)
        self.anti_entropy = AntiEntropy(
            context, self.fold, self.gossip, self.acceptor, self.snapshots,
            sync_interval=sync_interval, fold_interval=fold_interval, revoked=revoked)

    # -- wiring --------------------------------------------------------------------------------

    def notify(self) -> None:
        """The store has new own entries: push them soon."""
        self.gossip.notify()

    async def run(self) -> None:
        """Push new own entries, run anti-entropy; until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.gossip.run)
            nursery.start_soon(self.anti_entropy.run)

    def peers(self) -> list[Contact]:
        return self.node.routing.contacts()

    async def push_pending(self) -> None:
        """Push every own entry not pushed yet, batch after batch (at shutdown)."""
        await self.gossip.push_pending()

    def forget(self, node: bytes, why: str) -> Record | None:
        """Forget member ``node`` (see ``dhtfs.oplog.membership``); the new record, or None if
        it was forgotten already or is this node."""
        return self.fold.forget(node, why)

    def known_members(self) -> set[bytes]:
        """Every member known (forgotten ones too), this node excepted."""
        return self.fold.known_members()

    def cert(self, node: bytes) -> bytes | None:
        """The certificate of ``node``, if known (the store keeps them)."""
        return self.store.cert(node)

    async def sync_with(self, peer: Contact, *, deadline: float = 30.0) -> int:
        """One push-pull round with ``peer`` (``AntiEntropy.sync_with``); the entries gained."""
        return await self.anti_entropy.sync_with(peer, deadline=deadline)

    async def sync_all(self, *, deadline: float = 30.0) -> int:
        """Anti-entropy with every known peer at once (after joining, and ``dhtfs sync``)."""
        return await self.anti_entropy.sync_all(deadline=deadline)

    async def receive(
        self, sender: Contact | None, entries: list[LogEntry], certs: dict[bytes, bytes]
    ) -> list[LogEntry]:
        """Accept what ``sender`` (None: unknown) sent, as a push would be
        (``AntiEntropy.receive``); returns the entries accepted."""
        return await self.anti_entropy.receive(sender, entries, certs)

    # -- serving -------------------------------------------------------------------------------

    async def handle(self, caller: Contact, method: str, args: Message) -> Message:
        """The RPC handler for ``METHODS`` (``caller`` is authenticated)."""
        self.fold.member(caller.node_id)
        records = self.anti_entropy.learn(args)
        if method == LOG_PUSH:
            entries = entries_from_wire(args.get("entries"), method)
            certs = certs_from_wire(args.get("certs", []), method)
            fresh = await self.anti_entropy.receive(caller, entries, certs)
            return {"accepted": len(fresh)}
        if method == LOG_PULL:
            return self.anti_entropy.answer_pull(caller, args, records)
        if method == LOG_SNAPSHOT:
            return self.snapshots.serve_page(args)
        raise RemoteError(f"unknown method {method!r}")


__all__ = [
    "LOG_PULL",
    "LOG_PUSH",
    "LOG_SNAPSHOT",
    "METHODS",
    "FoldingStore",
    "InvalidEntry",
    "KeyedSigner",
    "LogEntry",
    "LogReplicator",
    "LogStore",
    "ReplicatorStats",
    "Signatures",
    "Signer",
    "signed_message",
]
