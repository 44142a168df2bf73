"""What the node's block operations report: ``PutResult`` (where a put placed a block),
``GetResult`` (where a get found it) and ``ValueResult`` (what a FIND_VALUE lookup found)."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from dhtfs.dht.lookup import LookupResult
from dhtfs.net.network import Contact


@dataclass(slots=True)
class PutResult:
    """Where ``put_block`` placed a block.

    ``replicas``: the remote nodes among the R XOR-closest that acknowledged PUT_CHUNK (if those
    fail, the next closest are tried, so a replica may come from further down the k closest).
    ``local_slot``: this node is itself among the R closest, so its copy fills one slot.
    ``copies`` = R slots filled; ``complete`` when ``copies >= min(R, nodes known + 1)``, i.e.
    R copies, or every node the lookup found when the swarm is smaller than R.
    ``put_block`` never fails for lack of replicas (the local copy is durable); callers that must
    wait for replication (fsync) check ``complete``.
    """

    block_id: bytes
    replicas: list[Contact] = field(default_factory=list)
    local_slot: bool = False
    announced: int = 0          # ADD_PROVIDER acknowledgements (once ``placed``)
    wanted: int = 0             # min(R, nodes known + 1)
    placed: trio.Event = field(default_factory=trio.Event)  # announcement over

    @property
    def copies(self) -> int:
        return len(self.replicas) + (1 if self.local_slot else 0)

    @property
    def complete(self) -> bool:
        return self.copies >= self.wanted


@dataclass(slots=True)
class GetResult:
    """What ``get_block_detailed`` did: the verified bytes, where they came from (``local``,
    ``hinted``: GET_CHUNK from a hinted node, ``inline``: a FIND_VALUE answer, ``fetched``:
    GET_CHUNK from a provider, which is ``provider``), the lookup RPCs sent (``queries``),
    sequential RPCs (``hops``, see ``dhtfs.dht.lookup``; a fetch adds one) and new
    connections the network dialed meanwhile (``dials``, when it counts them)."""

    data: bytes
    source: str
    queries: int = 0
    hops: int = 0
    dials: int = 0
    provider: Contact | None = None


@dataclass(slots=True)
class ValueResult:
    """What ``find_value`` found: the verified bytes (a holder answered with them), else the
    providers named; and the lookup itself (queries, failures, hops)."""

    data: bytes | None
    providers: list[Contact]
    lookup: LookupResult
