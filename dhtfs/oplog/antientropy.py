"""Anti-entropy: pull what this node lacks from one peer at a time, push back what the peer
lacks; fill the gaps that pushes leave; answer pulls; and, on the same beat, fold.

Part of the replicated log (``dhtfs.oplog.replicator``). Push-pull anti-entropy after Demers
et al., "Epidemic algorithms for replicated database maintenance":

- every ``sync_interval`` (jittered) a node pulls from one random peer what its vector lacks,
  and pushes back what the peer's vector lacks. A node that was offline, partitioned or just
  joined catches up this way; a peer not yet synced with (not in ``synced``) goes first;
- an entry that arrives ahead of a gap (``dhtfs.oplog.accept``) starts a pull from its sender,
  which brings the missing ones in order; one round per peer at a time;
- every node reports its vector and clock in each pull and pull answer (``dhtfs.oplog.folding``
  keeps the reports); every ``fold_interval`` the node forgets revoked and silent members and
  folds what every member holds. A puller behind what the answering node folded gets
  ``"snapshot": true`` and installs a snapshot (``dhtfs.oplog.snapshots``);
- a node that learns it was forgotten rejoins through the next peer it syncs with that is not
  forgotten itself;
- a run handed out ends signed (``Gossip.sign_last``), an answer holds at most ``MAX_ENTRIES``
  entries or ``MAX_BATCH_BYTES`` of bodies (says ``"more"`` past them).

RPC (args → answer)::

    LOG_PULL      {"vector": [[origin, seq], ...], "limit": n, "clock"?: int}
                  → {"entries": [...], "certs": [...], "vector": [[origin, seq], ...],
                     "more": bool, "clock"?: int, "snapshot"?: true}
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable

import trio

from dhtfs.base.errors import NetworkError, RemoteError
from dhtfs.net.network import Contact, Message
from dhtfs.oplog.accept import Acceptor
from dhtfs.oplog.entries import (
    MAX_ENTRIES,
    LogEntry,
    certs_from_wire,
    entries_from_wire,
    vector_from_wire,
    vector_to_wire,
)
from dhtfs.oplog.folding import Folding
from dhtfs.oplog.gossip import Gossip
from dhtfs.oplog.membership import Record, records_from_wire
from dhtfs.oplog.shared import LogContext, Side
from dhtfs.oplog.snapshots import Snapshots

log = logging.getLogger(__name__)

LOG_PULL = "LOG_PULL"

MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Body bytes in one message at most (well below the wire's frame limit)."""


class AntiEntropy(Side):
    """The pull side of a ``LogReplicator`` (see the module docstring); ``receive`` is where
    every batch that arrives goes, pushed or pulled. Start ``run`` in a nursery."""

    def __init__(
        self,
        context: LogContext,
        fold: Folding,
        gossip: Gossip,
        acceptor: Acceptor,
        snapshots: Snapshots,
        *,
        sync_interval: float,
        fold_interval: float,
        revoked: Callable[[bytes], bool] | None,
    ) -> None:
        super().__init__(context)
        self.fold = fold
        self.gossip = gossip
        self.acceptor = acceptor
        self.snapshots = snapshots
        self.sync_interval = sync_interval
        self.fold_interval = fold_interval
        self.revoked = revoked  # node ID → its certificate is revoked (auto-forgetting)
        self.synced: set[bytes] = set()     # peers we ran anti-entropy with
        self._pulling: set[bytes] = set()
        self._nursery: trio.Nursery | None = None
        self._last_fold = -math.inf

    def learn(self, args: Message) -> dict[bytes, Record]:
        """Merge the forget records a message carries; returns them."""
        records = records_from_wire(args.get("forgotten"))
        if records:
            self.membership.merge(records, self.store.vector())
        return records

    # -- receiving -----------------------------------------------------------------------------

    async def receive(
        self, sender: Contact | None, entries: list[LogEntry], certs: dict[bytes, bytes]
    ) -> list[LogEntry]:
        """Accept what extends our runs (``Acceptor.receive``); pull from ``sender`` if a gap
        was left; forward what was new when gossiping. Returns the accepted entries."""
        accepted = await self.acceptor.receive(sender, entries, certs)
        if accepted.gap and sender is not None:
            self._pull_soon(sender)
        self.gossip.forward(accepted.fresh, sender)
        return accepted.fresh

    def answer_pull(self, caller: Contact, args: Message, records: dict[bytes, Record]
                    ) -> Message:
        """The LOG_PULL handler (``records``: the forget records the request carried)."""
        theirs = vector_from_wire(args.get("vector"), LOG_PULL)
        limit = args.get("limit", MAX_ENTRIES)
        if type(limit) is not int or limit <= 0:
            raise RemoteError(f"{LOG_PULL}: 'limit' must be a positive int")
        self.fold.report(caller.node_id, theirs, args.get("clock"),
                         self.membership.known_in(records))
        if self.fold.behind(theirs):
            answer = self.gossip.message([])
            answer["snapshot"] = True
            more = False
        else:
            entries, more = self._missing(theirs, min(limit, MAX_ENTRIES))
            answer = self.gossip.message(entries)
        answer["vector"] = vector_to_wire(self.store.vector())
        answer["more"] = more
        if self.fold.folding is not None:
            answer["clock"] = self.fold.folding.clock()
        return answer

    def _missing(self, theirs: dict[bytes, int], limit: int) -> tuple[list[LogEntry], bool]:
        """Entries we hold that a node with vector ``theirs`` lacks (about ``limit`` or
        ``MAX_BATCH_BYTES`` at most); True if there are more. Each origin's run ends signed:
        ours are signed now, another's end at a signed entry (going past ``limit`` to reach
        one if need be: an origin signs at least every ``MAX_ENTRIES``)."""
        out: list[LogEntry] = []
        size = 0
        for origin, have in self.store.vector().items():
            after = theirs.get(origin, 0)
            run: list[LogEntry] = []
            while after < have:
                want = max(1, min(limit - len(out) - len(run), 512))
                batch = self.store.entries_after(origin, after, want)
                if not batch:
                    break
                run.extend(batch)
                size += sum(len(e.body) for e in batch)
                after = batch[-1].seq
                full = len(out) + len(run) >= limit or size >= MAX_BATCH_BYTES
                if full and (origin == self.own_id or run[-1].sig is not None):
                    out.extend(self.gossip.sign_last(run))
                    return out, True
            out.extend(self.gossip.sign_last(run))
        return out, False

    # -- pulling -------------------------------------------------------------------------------

    def _pull_soon(self, peer: Contact) -> None:
        if self._nursery is not None and peer.node_id not in self._pulling:
            self._nursery.start_soon(self.sync_with, peer)

    async def run(self) -> None:
        """Anti-entropy rounds (and pulls started by gaps), and folding; until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._anti_entropy_loop()

    async def _anti_entropy_loop(self) -> None:
        """Every ``sync_interval`` (jittered): sync with the peers not synced yet, else one
        at random; each round in the background, so a dead peer (up to ``rpc_timeout``) never
        holds up the next (one round per peer at a time, see ``sync_with``)."""
        assert self._nursery is not None
        while True:
            peers = self.peers()
            fresh = [p for p in peers if p.node_id not in self.synced]
            for p in fresh or ([self.rng.choice(peers)] if peers else []):
                self._nursery.start_soon(self.sync_with, p)
            now = trio.current_time()
            if now - self._last_fold >= self.fold_interval:
                self._last_fold = now
                try:
                    self.fold.auto_forget(self.revoked)
                    self.fold.maybe_fold()
                except (sqlite3.Error, OSError) as exc:
                    # A full disk (SQLITE_FULL, ENOSPC): the fold's transaction rolled back,
                    # nothing changed; the next round tries again.
                    log.warning("folding history failed (%s); tried again in %gs",
                                exc, self.fold_interval)
            await trio.sleep(self.sync_interval * (0.5 + self.rng.random()))

    async def sync_with(self, peer: Contact, *, deadline: float = 30.0) -> int:
        """One push-pull round with ``peer``: pull until it has nothing we lack, then push
        what it lacks. Returns the entries gained; 0 (logged) if the peer fails."""
        if peer.node_id in self._pulling:
            return 0
        self._pulling.add(peer.node_id)
        gained = 0
        try:
            with trio.move_on_after(deadline):
                installed = False
                while True:
                    self.stats.pulls_sent += 1
                    request: Message = {
                        "vector": vector_to_wire(self.store.vector()), "limit": MAX_ENTRIES,
                    }
                    if self.fold.folding is not None:
                        request["clock"] = self.fold.folding.clock()
                    if self.membership.records:
                        request["forgotten"] = self.membership.to_wire()
                    ans = await self.node.call(peer, LOG_PULL, request, self.rpc_timeout)
                    self.fold.member(peer.node_id)
                    records = self.learn(ans)
                    entries = entries_from_wire(ans.get("entries"), LOG_PULL, answer=True)
                    certs = certs_from_wire(ans.get("certs", []), LOG_PULL, answer=True)
                    theirs = vector_from_wire(ans.get("vector"), LOG_PULL, answer=True)
                    self.fold.report(peer.node_id, theirs, ans.get("clock"),
                                     self.membership.known_in(records))
                    if (self.membership.is_forgotten(self.own_id) and not installed
                            and not self.membership.is_forgotten(peer.node_id)):
                        installed = True
                        if await self.snapshots.rejoin(peer):
                            continue
                    if ans.get("snapshot") is True and not installed:
                        await self.snapshots.install_from(peer)
                        installed = True
                        continue
                    fresh = await self.receive(peer, entries, certs)
                    gained += len(fresh)
                    if not ans.get("more") or (entries and not fresh):
                        break
                if self.fold.behind(theirs):
                    return gained  # it will pull our snapshot
                while True:
                    lacking, more = self._missing(theirs, MAX_ENTRIES)
                    if not lacking:
                        break
                    await self.gossip.push_to(peer, self.gossip.message(lacking), len(lacking))
                    for e in lacking:
                        theirs[e.origin] = max(theirs.get(e.origin, 0), e.seq)
                    if not more:
                        break
            self.synced.add(peer.node_id)
        except NetworkError as exc:
            log.debug("anti-entropy with %s failed: %s", peer, exc)
        finally:
            self._pulling.discard(peer.node_id)
        return gained

    async def sync_all(self, *, deadline: float = 30.0) -> int:
        """Anti-entropy with every known peer at once (after joining, and ``dhtfs sync``)."""
        gained = 0

        async def one(p: Contact) -> None:
            nonlocal gained
            gained += await self.sync_with(p, deadline=deadline)

        async with trio.open_nursery() as nursery:
            for p in self.peers():
                nursery.start_soon(one, p)
        return gained
