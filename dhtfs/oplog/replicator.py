"""The replicated op log: signed entries from many origins, spread by push and anti-entropy.

``dhtfs.node`` knows nothing of what an entry means. An entry is ``(origin, seq, body, sig)``:
the 32-byte node ID of the node that made it, its place in that origin's sequence (1, 2, 3, …
with no gaps), opaque bytes (for a mount, ``dhtfs.meta.ops.encode_op``, which starts with its
own format version), and the origin's ECDSA signature over ``signed_message(origin, seq,
body)``. A ``LogStore`` holds entries and applies them (the namespace on a mount, a plain table
on a headless node); a ``LogReplicator`` moves them between nodes.

Invariants:
- a store holds, for every origin, exactly the entries ``1..vector()[origin]`` (a version
  vector with no holes), so "what do you lack" is one integer per origin;
- an entry is accepted only if it extends its origin's run by one and a signature of the
  origin covers it: entries of an origin form a hash chain and the last entry of each batch
  carries a signature over its link (``dhtfs.oplog.signing``), verified against the origin's
  certificate, which must chain to the swarm CA and hash to the origin ID. A relayed batch
  whose signature fails is dropped, and the peer that sent it is penalized
  (``RoutingTable.penalize``); a relay can neither forge, alter nor reorder another node's
  entries;
- a store's own entries are signed when they leave the node, once per batch (the signatures
  kept in memory: after a restart they are signed again, any valid signature will do); an
  entry a store hands out survives a crash of its process (``LogStore.entries_after``);
- entries of our own origin that we lack (this certificate's history, made with a state
  directory since lost) are accepted like any other's, so a node remounted on a fresh state
  directory continues its log instead of reusing its places; one that differs from ours at
  a place we hold means two state directories share a certificate, logged as an error;
- a peer that cannot authenticate with the swarm CA never reaches these handlers (the transport
  refuses it at the handshake), so it learns nothing of the log.

Dissemination (Demers et al., "Epidemic algorithms for replicated database maintenance"):
- push: new own entries go at once to up to ``fanout`` peers (every peer, in a swarm no larger
  than ``fanout + 1``); in a burst at most one batch per ``push_gap`` (20 ms). A
  node that knows more than ``fanout`` peers forwards entries that are new to it to
  ``fanout`` random peers (infect-and-die gossip), so an entry reaches N nodes in about
  log_fanout(N) hops at ``fanout`` messages per node;
- anti-entropy: every ``sync_interval`` a node pulls from one random peer what its vector
  lacks, and pushes back what the peer's vector lacks (push-pull). A node that was offline,
  partitioned or just joined catches up this way; a peer not yet synced with goes first;
- an entry that arrives ahead of a gap is stashed (bounded) and a pull from its sender is
  started, which brings the missing ones in order.

Folding (a store that can: ``FoldingStore``, the namespace of a mount): every node reports
its vector and clock in each pull and pull answer; a node that has reports from every member
it knows (every node it exchanged log RPCs with, and every origin) hands the store the
component-wise minimum and maximum of the vectors and the smallest clock, every
``fold_interval``, and the store folds what is stable (``dhtfs.meta.history``). A puller behind
what the answering node folded gets ``"snapshot": true`` instead of entries and fetches the
store's snapshot page by page (LOG_SNAPSHOT), installs it, and pulls again.

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

import logging
import math
import random
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from dhtfs.base.errors import NetworkError, ProtocolError, RemoteError
from dhtfs.net.network import Contact, Message
from dhtfs.oplog.entries import (
    MAX_ENTRIES,
    InvalidEntry,
    LogEntry,
    certs_from_wire,
    chain_link,
    entries_from_wire,
    vector_from_wire,
    vector_to_wire,
)
from dhtfs.oplog.folding import LOG_SNAPSHOT, Folding
from dhtfs.oplog.membership import Membership, Record, records_from_wire
from dhtfs.oplog.signing import KeyedSigner, Signatures, Signer, signed_message

log = logging.getLogger(__name__)

LOG_PUSH = "LOG_PUSH"
LOG_PULL = "LOG_PULL"
METHODS = frozenset({LOG_PUSH, LOG_PULL, LOG_SNAPSHOT})

MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Body bytes in one message at most (well below the wire's frame limit)."""
STASH_MAX = 16384
"""Out-of-order entries kept while the gap before them is filled."""
SIG_CACHE = 65536
BURST = 4
"""A push batch this large means a burst: the next batch waits for ``push_gap``."""
VERIFY_SLICE = 64
"""Signatures verified between two checkpoints (each ~0.1 ms): a long pull never holds the
event loop (and so the FUSE handlers of a mount) for long."""


class LogStore(Protocol):
    """Where a node keeps the log (see the module invariants)."""

    def vector(self) -> dict[bytes, int]:
        """origin → highest seq held (every lower one is held too)."""
        ...

    def entries_after(self, origin: bytes, seq: int, limit: int) -> list[LogEntry]:
        """Up to ``limit`` entries of ``origin`` after ``seq``, in order, with their links
        and the signatures held (a run of another origin's ends with a signed entry). Each
        survives a crash of this process from now on (a store persists before it hands
        out)."""
        ...

    def accept(self, entries: Sequence[LogEntry]) -> None:
        """Store and apply authenticated entries (with their signatures, None inside a
        batch); each extends its origin's run by one, in order; the store keeps each one's
        chain link. Raises ``InvalidEntry`` for the first one it refuses (those before it
        are kept)."""
        ...

    def head(self, origin: bytes) -> bytes:
        """The chain link of the last entry of ``origin`` held (``chain_start`` if none)."""
        ...

    def cert(self, origin: bytes) -> bytes | None:
        """The DER certificate of ``origin``, if known."""
        ...

    def add_cert(self, origin: bytes, der: bytes) -> None:
        """Keep a verified certificate (relays must forward it with the origin's entries)."""
        ...


class FoldingStore(LogStore, Protocol):
    """A store that can fold stable history and serve and install snapshots (a mount's)."""

    def clock(self) -> int:
        """Every entry made here from now on is ordered after this."""
        ...

    def folded(self) -> dict[bytes, int]:
        """origin → entries folded (no longer served one by one)."""
        ...

    def fold(self, stable: dict[bytes, int], highest: dict[bytes, int], floor: int) -> int: ...

    def snapshot(self) -> bytes: ...

    def install(self, blob: bytes, restamp_after: int | None = None) -> None: ...

    def members(self) -> set[bytes]: ...

    def add_member(self, node: bytes) -> None: ...


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


class LogReplicator:
    """Moves log entries between this node and its peers (see the module docstring).

    ``node`` is a ``dhtfs.dht.node.Node`` (routing table, calls with RTT bookkeeping). Start
    ``run`` in a nursery; call ``notify`` (synchronous, cheap) whenever the store gained own
    entries; register ``handle`` for ``METHODS`` on the node.
    """

    def __init__(
        self,
        node: Any,
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
    ) -> None:
        self.node = node
        self.store = store
        self.signer = signer
        self.fanout = fanout
        self.sync_interval = sync_interval
        self.rpc_timeout = rpc_timeout
        self.rng = rng if rng is not None else random.Random(signer.own_id)
        self.stats = ReplicatorStats()
        self.own_id = signer.own_id
        self._pushed = store.vector().get(self.own_id, 0)  # own entries pushed so far
        self._forked = False  # logged that another state directory used our certificate
        self._refused_snapshots: set[bytes] = set()  # peers whose snapshot we logged refusing
        self._wake = trio.Event()
        self._sigs: OrderedDict[int, bytes] = OrderedDict()  # own seq → signature
        # entries ahead of a gap, with the peer that sent them
        self._stash: dict[tuple[bytes, int], tuple[LogEntry, bytes | None]] = {}
        self._accept_lock = trio.Lock()
        self._rejoin_lock = trio.Lock()
        self._synced: set[bytes] = set()     # peers we ran anti-entropy with
        self._pulling: set[bytes] = set()
        self._nursery: trio.Nursery | None = None
        self.store.add_cert(self.own_id, signer.own_cert)
        signer.check_cert(self.own_id, signer.own_cert)
        self.fold_interval = fold_interval
        self.push_gap = push_gap
        # Members, their reports, folding (``dhtfs.oplog.folding``). ``fold_alone``: fold with
        # no other member known? Yes for a private swarm of one; not for a node meant to join
        # one (it would fold changes its swarm never saw, and could then not take the
        # swarm's snapshot without losing them).
        self.fold = Folding(store, self.own_id, fold_alone=fold_alone, membership=membership)
        self.membership = self.fold.membership
        self.revoked = revoked  # node ID → its certificate is revoked (auto-forgetting)
        self._folding: FoldingStore | None = self.fold.folding
        self._last_fold = -math.inf

    # -- wiring --------------------------------------------------------------------------------

    def notify(self) -> None:
        """The store has new own entries: push them soon."""
        self._wake.set()

    async def run(self) -> None:
        """Push new own entries, run anti-entropy; until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._push_loop)
            nursery.start_soon(self._anti_entropy_loop)

    def peers(self) -> list[Contact]:
        return self.node.routing.contacts()

    # -- pushing -------------------------------------------------------------------------------

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
            self._wake = trio.Event()
            last = trio.current_time()
            size, more = await self._push_batch()
            if more:
                self._wake.set()

    async def push_pending(self) -> None:
        """Push every own entry not pushed yet, batch after batch (at shutdown)."""
        while (await self._push_batch())[1]:
            pass

    async def _push_batch(self) -> tuple[int, bool]:
        """Push the next batch of own entries to up to ``fanout`` peers; its size, and whether
        more wait. Alone, push nothing: a peer that appears later gets them by anti-entropy."""
        if not self.peers():
            return 0, False
        entries = self._own_after(self._pushed, MAX_ENTRIES)
        if not entries:
            return 0, False
        self._pushed = entries[-1].seq
        await self._gossip(entries, exclude=())
        return len(entries), self.store.vector().get(self.own_id, 0) > self._pushed

    def _own_after(self, seq: int, limit: int) -> list[LogEntry]:
        return self._sign_last(self.store.entries_after(self.own_id, seq, limit))

    def _sign_last(self, entries: list[LogEntry]) -> list[LogEntry]:
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

    async def _gossip(self, entries: list[LogEntry], exclude: Iterable[bytes]) -> None:
        """Push ``entries`` to up to ``fanout`` peers at once (failures: anti-entropy mends)."""
        targets = self._targets(exclude)
        if not targets:
            return
        message = self._message(entries)
        async with trio.open_nursery() as nursery:
            for peer in targets:
                nursery.start_soon(self._push_to, peer, message, len(entries))

    async def _push_to(self, peer: Contact, message: Message, count: int) -> None:
        self.stats.pushes_sent += 1
        self.stats.entries_sent += count
        try:
            await self.node.call(peer, LOG_PUSH, message, self.rpc_timeout)
        except NetworkError as exc:
            log.debug("log push to %s failed: %s", peer, exc)

    def _message(self, entries: Sequence[LogEntry]) -> Message:
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

    def _learn(self, args: Message) -> dict[bytes, Record]:
        """Merge the forget records a message carries; returns them."""
        records = records_from_wire(args.get("forgotten"))
        if records:
            self.membership.merge(records, self.store.vector())
        return records

    def forget(self, node: bytes, why: str) -> Record | None:
        """Forget member ``node`` (see ``dhtfs.oplog.membership``); the new record, or None if
        it was forgotten already or is this node."""
        return self.fold.forget(node, why)

    # -- receiving -----------------------------------------------------------------------------

    async def handle(self, caller: Contact, method: str, args: Message) -> Message:
        """The RPC handler for ``METHODS`` (``caller`` is authenticated)."""
        self.fold.member(caller.node_id)
        records = self._learn(args)
        if method == LOG_PUSH:
            entries = entries_from_wire(args.get("entries"), method)
            certs = certs_from_wire(args.get("certs", []), method)
            fresh = await self.receive(caller, entries, certs)
            return {"accepted": len(fresh)}
        if method == LOG_PULL:
            theirs = vector_from_wire(args.get("vector"), method)
            limit = args.get("limit", MAX_ENTRIES)
            if type(limit) is not int or limit <= 0:
                raise RemoteError(f"{method}: 'limit' must be a positive int")
            self.fold.report(caller.node_id, theirs, args.get("clock"),
                             self.membership.known_in(records))
            if self.fold.behind(theirs):
                answer = self._message([])
                answer["snapshot"] = True
                more = False
            else:
                entries, more = self._missing(theirs, min(limit, MAX_ENTRIES))
                answer = self._message(entries)
            answer["vector"] = vector_to_wire(self.store.vector())
            answer["more"] = more
            if self._folding is not None:
                answer["clock"] = self._folding.clock()
            return answer
        if method == LOG_SNAPSHOT:
            return self.fold.snapshot_page(args)
        raise RemoteError(f"unknown method {method!r}")

    async def _install_from(self, peer: Contact, restamp_after: int | None = None) -> bool:
        """Fetch ``peer``'s snapshot page by page and install it (own entries past
        ``restamp_after``, if given, are made anew on top of it); True if installed."""
        if self._folding is None:
            return False
        pages: list[bytes] = []
        snap_id: bytes | None = None
        while True:
            args: Message = {"page": len(pages)}
            if snap_id is not None:
                args["id"] = snap_id
            ans = await self.node.call(peer, LOG_SNAPSHOT, args, self.rpc_timeout)
            data, snap_id, total = ans.get("data"), ans.get("id"), ans.get("pages")
            if type(data) is not bytes or type(snap_id) is not bytes or type(total) is not int:
                raise ProtocolError(f"{LOG_SNAPSHOT}: malformed answer")
            pages.append(data)
            if len(pages) >= total:
                break
        async with self._accept_lock:
            try:
                if restamp_after is None:
                    self._folding.install(b"".join(pages))
                else:
                    self._folding.install(b"".join(pages), restamp_after=restamp_after)
            except ValueError as exc:
                if peer.node_id not in self._refused_snapshots:
                    self._refused_snapshots.add(peer.node_id)
                    log.error("snapshot from %s not installed: %s", peer, exc)
                return False
        self._stash.clear()
        self._sigs.clear()  # own entries may have been made anew: sign them again
        self._pushed = min(self._pushed, self.store.vector().get(self.own_id, 0),
                           restamp_after if restamp_after is not None else self._pushed)
        log.info("installed the snapshot of %s", peer)
        return True

    async def _rejoin(self, peer: Contact) -> bool:
        """This node was forgotten: take ``peer``'s snapshot, make own entries past the cut
        anew on top of it, and mark this node rejoined. True if done."""
        async with self._rejoin_lock:  # one rejoin, whichever peer answered first
            if not self.membership.is_forgotten(self.own_id):
                return True
            return await self._rejoin_locked(peer)

    async def _rejoin_locked(self, peer: Contact) -> bool:
        cut = self.membership.cut(self.own_id) or 0
        if self._folding is not None:
            before = self.store.vector().get(self.own_id, 0)
            try:
                if not await self._install_from(peer, restamp_after=cut):
                    return False
            except (NetworkError, RemoteError, ProtocolError) as exc:
                log.info("rejoining through %s failed (%s); trying another peer", peer, exc)
                return False
            log.warning(
                "this node had been forgotten by the swarm; rejoined with the snapshot of %s: "
                "%d changes made here that the swarm had not seen were applied again as new "
                "ops", peer, max(0, before - cut))
        else:
            log.warning("this node had been forgotten by the swarm; it is a member again")
        self.membership.rejoined()
        self._wake.set()
        return True

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
                    out.extend(self._sign_last(run))
                    return out, True
            out.extend(self._sign_last(run))
        return out, False

    async def receive(
        self, sender: Contact | None, entries: list[LogEntry], certs: dict[bytes, bytes]
    ) -> list[LogEntry]:
        """Authenticate and accept what extends our runs; stash what is ahead of a gap (and
        pull from ``sender``); forward what was new when gossiping. Returns the accepted
        entries. A run is accepted up to its last entry whose signature verifies over the
        chain computed from our own head; an unsigned tail waits (a pull brings the rest)."""
        for origin, der in certs.items():
            if self.signer.check_cert(origin, der) and self.store.cert(origin) is None:
                self.store.add_cert(origin, der)
        fresh: list[LogEntry] = []
        offenders: set[bytes] = set()
        gap = False
        async with self._accept_lock:
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
                    if len(self._stash) < STASH_MAX:
                        self._stash[(e.origin, e.seq)] = (e, sender_id)
                        self.stats.stashed += 1
                    gap = True
                    continue
                run.append((e, sender_id))
            for origin in {o for o, _ in self._stash} - set(runs):
                if (origin, vector.get(origin, 0) + 1) in self._stash:
                    runs[origin] = []  # a stash that continues the run already
            for origin, run in runs.items():
                nxt = run[-1][0].seq + 1 if run else vector.get(origin, 0) + 1
                while (origin, nxt) in self._stash:  # stashed earlier, continuing the run now
                    run.append(self._stash.pop((origin, nxt)))
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
                        self._pushed = max(self._pushed, ok[-1].seq)
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
        if gap and sender is not None:
            self._pull_soon(sender)
        if fresh and len(self.peers()) > self.fanout and self._nursery is not None:
            exclude = {sender.node_id} if sender is not None else set()
            exclude.update(e.origin for e in fresh)
            self._nursery.start_soon(self._gossip, fresh, exclude)
        return fresh

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
        if not self._stash:
            return
        vector = self.store.vector()
        for key in [k for k in self._stash if k[1] <= vector.get(k[0], 0)]:
            del self._stash[key]

    # -- anti-entropy --------------------------------------------------------------------------

    def _pull_soon(self, peer: Contact) -> None:
        if self._nursery is not None and peer.node_id not in self._pulling:
            self._nursery.start_soon(self.sync_with, peer)

    async def _anti_entropy_loop(self) -> None:
        """Every ``sync_interval`` (jittered): sync with the peers not synced yet, else one
        at random; each round in the background, so a dead peer (up to ``rpc_timeout``) never
        holds up the next (one round per peer at a time, see ``sync_with``)."""
        assert self._nursery is not None
        while True:
            peers = self.peers()
            fresh = [p for p in peers if p.node_id not in self._synced]
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
                    if self._folding is not None:
                        request["clock"] = self._folding.clock()
                    if self.membership.records:
                        request["forgotten"] = self.membership.to_wire()
                    ans = await self.node.call(peer, LOG_PULL, request, self.rpc_timeout)
                    self.fold.member(peer.node_id)
                    records = self._learn(ans)
                    entries = entries_from_wire(ans.get("entries"), LOG_PULL, answer=True)
                    certs = certs_from_wire(ans.get("certs", []), LOG_PULL, answer=True)
                    theirs = vector_from_wire(ans.get("vector"), LOG_PULL, answer=True)
                    self.fold.report(peer.node_id, theirs, ans.get("clock"),
                                     self.membership.known_in(records))
                    if (self.membership.is_forgotten(self.own_id) and not installed
                            and not self.membership.is_forgotten(peer.node_id)):
                        installed = True
                        if await self._rejoin(peer):
                            continue
                    if ans.get("snapshot") is True and not installed:
                        await self._install_from(peer)
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
                    await self._push_to(peer, self._message(lacking), len(lacking))
                    for e in lacking:
                        theirs[e.origin] = max(theirs.get(e.origin, 0), e.seq)
                    if not more:
                        break
            self._synced.add(peer.node_id)
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
    "Signatures",
    "Signer",
    "signed_message",
]
