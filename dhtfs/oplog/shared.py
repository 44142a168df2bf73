"""What the sides of a ``LogReplicator`` share (``dhtfs.oplog.replicator`` builds one
``LogContext`` and hands it to each side: gossip, accept, antientropy, snapshots).

Invariants: one node, one store, one signer, one membership, one set of counters and one seeded
RNG per replicator; a side never replaces any of them (a ``LogContext`` is frozen), so every
side sees what the others did to them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dhtfs.dht.node import Node
from dhtfs.net.network import Contact
from dhtfs.oplog.logstore import LogStore
from dhtfs.oplog.membership import Membership
from dhtfs.oplog.signing import Signer


@dataclass(slots=True)
class ReplicatorStats:
    """Counters for tests, benchmarks and ``dhtfs status``."""

    pushes_sent: int = 0
    pulls_sent: int = 0
    entries_sent: int = 0
    entries_accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    stashed: int = 0
    refused_forgotten: int = 0  # entries of forgotten origins past their cut


@dataclass(frozen=True, slots=True)
class LogContext:
    """The node (routing table, calls with RTT bookkeeping), the store, the signer, the
    membership, the counters, the RNG (all random choices of a replicator come from it) and
    the timeout of one log RPC."""

    node: Node
    store: LogStore
    signer: Signer
    membership: Membership
    stats: ReplicatorStats
    rng: random.Random
    rpc_timeout: float


class Side:
    """A side of a replicator: the parts of its ``LogContext`` as attributes."""

    def __init__(self, context: LogContext) -> None:
        self.node = context.node
        self.store = context.store
        self.signer = context.signer
        self.membership = context.membership
        self.stats = context.stats
        self.rng = context.rng
        self.rpc_timeout = context.rpc_timeout
        self.own_id = context.signer.own_id

    def peers(self) -> list[Contact]:
        return self.node.routing.contacts()
