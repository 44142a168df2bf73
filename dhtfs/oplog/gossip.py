"""Push: own entries go out at once, entries new to a node go on to a few random peers.

Part of the replicated log (``dhtfs.oplog.replicator``, which ties the sides together).
Dissemination follows Demers et al., "Epidemic algorithms for replicated database
maintenance":

- new own entries go at once to up to ``fanout`` peers (every peer, in a swarm no larger than
  ``fanout + 1``); in a burst at most one batch per ``push_gap`` (20 ms);
- a node that knows more than ``fanout`` peers forwards entries that are new to it to
  ``fanout`` random peers (infect-and-die gossip), so an entry reaches N nodes in about
  log_fanout(N) hops at ``fanout`` messages per node.

Invariants:
- ``pushed`` is the last own entry pushed (or known to be held elsewhere); every own entry
  past it is pushed by the next batch, alone a node pushes nothing (a peer that appears later
  gets them by anti-entropy, ``dhtfs.oplog.antientropy``);
- every run handed out ends in a signed entry (``sign_last``): ours are signed when they leave
  the node, once per batch (the signatures kept in memory: after a restart they are signed
  again, any valid signature will do); another origin's are cut back to its last signed one;
- a failed push is only logged: anti-entropy mends it.

RPC (args → answer)::

    LOG_PUSH      {"entries": [[origin, seq, body, sig], ...], "certs": [[origin, der], ...]}
                  → {"accepted": n}
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import trio

from dhtfs.base.errors import NetworkError
from dhtfs.base.periodic import Doorbell
from dhtfs.net.network import Contact, Message
from dhtfs.oplog.entries import MAX_ENTRIES, LogEntry
from dhtfs.oplog.shared import LogContext, Side

log = logging.getLogger(__name__)

LOG_PUSH = "LOG_PUSH"

SIG_CACHE = 65536
BURST = 4
"""A push batch this large means a burst: the next batch waits for ``push_gap``."""


class Gossip(Side):
    """The push side of a ``LogReplicator`` (see the module docstring).

    Start ``run`` in a nursery; call ``notify`` (synchronous, cheap) whenever the store gained
    own entries; ``forward`` entries new to this node once accepted.
    """

    def __init__(
        self, context: LogContext, *, fanout: int, push_gap: float, wake: Doorbell | None = None
    ) -> None:
        super().__init__(context)
        self.fanout = fanout
        self.push_gap = push_gap
        self.pushed = self.store.vector().get(self.own_id, 0)  # own entries pushed so far
        # rung by ``notify``, or by whoever writes own entries (a mount's tree)
        self._wake = wake if wake is not None else Doorbell()
        self._sigs: OrderedDict[int, bytes] = OrderedDict()  # own seq → signature
        self._nursery: trio.Nursery | None = None

    def notify(self) -> None:
        """The store has new own entries: push them soon."""
        self._wake.ring()

    def forget_signatures(self) -> None:
        """Own entries may have been made anew (a snapshot was installed): sign them again."""
        self._sigs.clear()

    async def run(self) -> None:
        """Push new own entries as they come, and forward what ``forward`` is given; until
        cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._push_loop()

    async def _push_loop(self) -> None:
        """Push as soon as woken; but after a batch of ``BURST`` entries or more (a cp of many
        files), the next one waits until ``push_gap`` after it, so a burst goes out in large
        batches (one RPC per peer each, one signature) while a change on its own goes at
        once."""
        last, size = -math.inf, 0
        while True:
            await self._wake.wait()
            wait = last + self.push_gap - trio.current_time()
            if size >= BURST and wait > 0:
                await trio.sleep(wait)
            self._wake.clear()
            last = trio.current_time()
            size, more = await self._push_batch()
            if more:
                self._wake.ring()

    async def push_pending(self) -> None:
        """Push every own entry not pushed yet, batch after batch (at shutdown)."""
        while (await self._push_batch())[1]:
            pass

    async def _push_batch(self) -> tuple[int, bool]:
        """Push the next batch of own entries to up to ``fanout`` peers; its size, and whether
        more wait. Alone, push nothing: a peer that appears later gets them by anti-entropy."""
        if not self.peers():
            return 0, False
        entries = self._own_after(self.pushed, MAX_ENTRIES)
        if not entries:
            return 0, False
        self.pushed = entries[-1].seq
        await self.spread(entries, exclude=())
        return len(entries), self.store.vector().get(self.own_id, 0) > self.pushed

    def _own_after(self, seq: int, limit: int) -> list[LogEntry]:
        return self.sign_last(self.store.entries_after(self.own_id, seq, limit))

    def sign_last(self, entries: list[LogEntry]) -> list[LogEntry]:
        """``entries`` (one origin's run) ending in a signed entry: ours get signed now (one
        signature per batch; cached, as the same batch goes to several peers); another
        origin's are cut back to its last signed one (a store holds runs that end signed)."""
        if not entries:
            return entries
        last = entries[-1]
        if last.origin != self.own_id:
            while entries and entries[-1].sig is None:
                entries = entries[:-1]
            return entries
        if last.sig is None:
            sig = self._sigs.get(last.seq)
            if sig is None:
                assert last.link is not None, "a store hands out its own entries with links"
                sig = self.signer.sign(last.origin, last.seq, last.link)
                self._sigs[last.seq] = sig
                if len(self._sigs) > SIG_CACHE:
                    self._sigs.popitem(last=False)
            entries = [*entries[:-1], LogEntry(last.origin, last.seq, last.body, sig, last.link)]
        return entries

    def _targets(self, exclude: Iterable[bytes]) -> list[Contact]:
        skip = set(exclude)
        peers = [c for c in self.peers() if c.node_id not in skip]
        if len(peers) <= self.fanout:
            return peers
        return self.rng.sample(peers, self.fanout)

    def forward(self, fresh: list[LogEntry], sender: Contact | None) -> None:
        """Entries new to this node (from ``sender``, if any) go on to ``fanout`` random peers
        other than their sender and origins, in the background; only in a swarm larger than
        ``fanout + 1`` (a smaller one had them pushed to every node already)."""
        if fresh and len(self.peers()) > self.fanout and self._nursery is not None:
            exclude = {sender.node_id} if sender is not None else set()
            exclude.update(e.origin for e in fresh)
            self._nursery.start_soon(self.spread, fresh, exclude)

    async def spread(self, entries: list[LogEntry], exclude: Iterable[bytes]) -> None:
        """Push ``entries`` to up to ``fanout`` peers at once (failures: anti-entropy mends)."""
        targets = self._targets(exclude)
        if not targets:
            return
        message = self.message(entries)
        async with trio.open_nursery() as nursery:
            for peer in targets:
                nursery.start_soon(self.push_to, peer, message, len(entries))

    async def push_to(self, peer: Contact, message: Message, count: int) -> None:
        self.stats.pushes_sent += 1
        self.stats.entries_sent += count
        try:
            await self.node.call(peer, LOG_PUSH, message, self.rpc_timeout)
        except NetworkError as exc:
            log.debug("log push to %s failed: %s", peer, exc)

    def message(self, entries: Sequence[LogEntry]) -> Message:
        """A LOG_PUSH message (and the body of a LOG_PULL answer): ``entries``, the
        certificates of their origins, and the forget records this node holds."""
        origins = {e.origin for e in entries}
        certs = [
            [o, c] for o in origins
            if (c := self.signer.own_cert if o == self.own_id else self.store.cert(o))
        ]
        message: Message = {
            "entries": [[e.origin, e.seq, e.body, e.sig or b""] for e in entries],
            "certs": certs,
        }
        if self.membership.records:
            message["forgotten"] = self.membership.to_wire()
        return message
