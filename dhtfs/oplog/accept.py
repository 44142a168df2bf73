"""Accepting entries: authenticate a batch, store what extends each origin's run, stash what is
ahead of a gap.

Part of the replicated log (``dhtfs.oplog.replicator``, which holds the invariants of the whole).
Those this side keeps:

- an entry is accepted only if it extends its origin's run by one and a signature of the
  origin covers it: entries of an origin form a hash chain and the last entry of each batch
  carries a signature over its link (``dhtfs.oplog.signing``), verified against the origin's
  certificate, which must chain to the swarm CA and hash to the origin ID. A relayed batch
  whose signature fails is dropped, and the peer that sent it is penalized
  (``RoutingTable.penalize``); a relay can neither forge, alter nor reorder another node's
  entries;
- entries of our own origin that we lack (this certificate's history, made with a state
  directory since lost) are accepted like any other's, so a node remounted on a fresh state
  directory continues its log instead of reusing its places; one that differs from ours at
  a place we hold means two state directories share a certificate, logged as an error;
- an entry that arrives ahead of a gap is stashed (at most ``STASH_MAX``) and the caller told
  of the gap (it pulls from the sender, ``dhtfs.oplog.antientropy``); a stashed entry is
  forgotten once it is no longer ahead of anything;
- entries of a forgotten origin past its cut are refused quietly (``dhtfs.oplog.membership``);
- ``lock`` is held while the store changes (accepting here, installing a snapshot in
  ``dhtfs.oplog.snapshots``), so the two never interleave.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from dhtfs.net.network import Contact
from dhtfs.oplog.entries import InvalidEntry, LogEntry, chain_link
from dhtfs.oplog.gossip import Gossip
from dhtfs.oplog.shared import LogContext, Side

log = logging.getLogger(__name__)

STASH_MAX = 16384
"""Out-of-order entries kept while the gap before them is filled."""
VERIFY_SLICE = 64
"""Signatures verified between two checkpoints (each ~0.1 ms): a long pull never holds the
event loop (and so the FUSE handlers of a mount) for long."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """What one ``Acceptor.receive`` did: the entries accepted, in order per origin, and
    whether some were left waiting for a gap (stashed, or an unsigned tail)."""

    fresh: list[LogEntry]
    gap: bool


class Acceptor(Side):
    """Takes entries into the store (see the module docstring). ``gossip`` learns of own
    entries accepted from elsewhere (they need no push from here)."""

    def __init__(self, context: LogContext, gossip: Gossip) -> None:
        super().__init__(context)
        self.gossip = gossip
        self.lock = trio.Lock()
        # entries ahead of a gap, with the peer that sent them
        self.stash: dict[tuple[bytes, int], tuple[LogEntry, bytes | None]] = {}
        self._forked = False  # logged that another state directory used our certificate

    async def receive(
        self, sender: Contact | None, entries: Sequence[LogEntry], certs: dict[bytes, bytes]
    ) -> Accepted:
        """Authenticate and accept what extends our runs; stash what is ahead of a gap. A run
        is accepted up to its last entry whose signature verifies over the chain computed from
        our own head; an unsigned tail waits (a pull brings the rest)."""
        for origin, der in certs.items():
            if self.signer.check_cert(origin, der) and self.store.cert(origin) is None:
                self.store.add_cert(origin, der)
        fresh: list[LogEntry] = []
        offenders: set[bytes] = set()
        gap = False
        async with self.lock:
            vector = self.store.vector()
            runs: dict[bytes, list[tuple[LogEntry, bytes | None]]] = {}
            by_origin = sorted(entries, key=lambda e: (e.origin, e.seq))
            sender_id = sender.node_id if sender is not None else None
            for e in by_origin:
                if self.membership.refuses(e.origin, e.seq):
                    self.stats.refused_forgotten += 1  # made anew when it rejoins
                    continue
                if e.seq <= vector.get(e.origin, 0):
                    self.stats.duplicates += 1
                    if e.origin == self.own_id:
                        self._check_own(e)
                    continue
                run = runs.setdefault(e.origin, [])
                expected = run[-1][0].seq + 1 if run else vector.get(e.origin, 0) + 1
                if e.seq < expected:  # twice in one message
                    self.stats.duplicates += 1
                    continue
                if e.seq > expected:
                    if len(self.stash) < STASH_MAX:
                        self.stash[(e.origin, e.seq)] = (e, sender_id)
                        self.stats.stashed += 1
                    gap = True
                    continue
                run.append((e, sender_id))
            for origin in {o for o, _ in self.stash} - set(runs):
                if (origin, vector.get(origin, 0) + 1) in self.stash:
                    runs[origin] = []  # a stash that continues the run already
            for origin, run in runs.items():
                nxt = run[-1][0].seq + 1 if run else vector.get(origin, 0) + 1
                while (origin, nxt) in self.stash:  # stashed earlier, continuing the run now
                    run.append(self.stash.pop((origin, nxt)))
                    nxt += 1
                if not run:
                    continue
                ok, offender, tail = await self._authenticate(origin, run)
                if offender is not None:
                    offenders.add(offender)
                gap = gap or tail
                if not ok:
                    continue
                try:
                    self.store.accept(ok)
                    fresh.extend(ok)
                    if origin == self.own_id:  # ours, made before this state directory
                        self.gossip.pushed = max(self.gossip.pushed, ok[-1].seq)
                except InvalidEntry as exc:
                    log.warning("dropped a log entry from %s: %s", sender or "?", exc)
                    fresh.extend(e for e in ok if e.seq < exc.entry.seq)
                    bad_sender = dict((e.seq, s) for e, s in run).get(exc.entry.seq)
                    if bad_sender is not None:
                        offenders.add(bad_sender)
            self._drain_stash()
        self.stats.entries_accepted += len(fresh)
        for origin in {e.origin for e in fresh}:
            self.membership.heard(origin)  # its new entries: it was alive lately
        for node_id in offenders:
            self.stats.rejected += 1
            self.node.routing.penalize(node_id)
        return Accepted(fresh, gap)

    def _check_own(self, e: LogEntry) -> None:
        """An entry of ours came back: it must be the one we hold at that place. If not, two
        state directories have used this node's certificate (their logs forked)."""
        held = self.store.entries_after(self.own_id, e.seq - 1, 1)
        if held and held[0].body != e.body and not self._forked:
            self._forked = True
            log.error(
                "another state directory has used this node's certificate: its entry #%d "
                "differs from ours, so changes made there or here may not reach everyone; "
                "give every state directory its own certificate (dhtfs ca issue)", e.seq)

    async def _authenticate(
        self, origin: bytes, run: list[tuple[LogEntry, bytes | None]]
    ) -> tuple[list[LogEntry], bytes | None, bool]:
        """The prefix of ``run`` (entries after our head, each with the peer that sent it)
        that a verified signature covers; the sender of an entry whose signature failed
        (None if none did); and whether an unsigned tail is left waiting."""
        if not self.signer.knows(origin):
            stored = self.store.cert(origin)  # kept from an earlier run: the signer forgets
            if stored is not None:
                self.signer.check_cert(origin, stored)
        link = self.store.head(origin)
        covered = 0
        checked = 0
        for i, (e, sent_by) in enumerate(run):
            link = chain_link(link, e.seq, e.body)
            if e.sig is None:
                continue
            checked += 1
            if checked % VERIFY_SLICE == 0:
                await trio.lowlevel.checkpoint()
            if not self.signer.verify(origin, e.seq, link, e.sig):
                why = ("signature does not verify" if self.store.cert(origin) is not None
                       else "no valid certificate of its origin came with it")
                log.warning("dropped log entries of %s from #%d: %s", origin.hex()[:12],
                            run[covered][0].seq if covered < len(run) else e.seq, why)
                return [x for x, _ in run[:covered]], sent_by, False
            covered = i + 1
        return [x for x, _ in run[:covered]], None, covered < len(run)

    def _drain_stash(self) -> None:
        """Forget stashed entries that are no longer ahead of anything."""
        if not self.stash:
            return
        vector = self.store.vector()
        for key in [k for k in self.stash if k[1] <= vector.get(k[0], 0)]:
            del self.stash[key]
