"""Snapshots for nodes behind what was folded: serving them page by page, fetching and
installing a peer's, and rejoining after this node was forgotten.

Part of the replicated log (``dhtfs.oplog.replicator``). Only a store that folds
(``FoldingStore``, a mount's namespace) serves or installs snapshots; others answer LOG_SNAPSHOT
with an error and never ask for one.

Invariants:
- a puller behind what the answering node folded gets ``"snapshot": true`` instead of entries
  (``dhtfs.oplog.antientropy``) and fetches the store's snapshot page by page, installs it,
  and pulls again;
- the pages of one fetch come from one snapshot: the server keeps the pages of its last one
  for ``SNAPSHOT_TTL`` under a random ``id``, a first page asked without that ``id`` makes a
  new one, a later page of an expired one is refused (the fetcher starts again);
- a snapshot is installed while the acceptor's lock is held (nothing is accepted meanwhile);
  afterwards the stash and the own signatures are dropped and own entries not made anew are
  pushed again if need be; a malformed snapshot is refused (logged once per peer), nothing
  changed;
- a node that learns it was forgotten (``dhtfs.oplog.membership``) takes a snapshot from the
  next peer it syncs with that is not forgotten itself, makes its own changes that nobody saw
  again on top of it (past its cut), and marks itself rejoined; one rejoin at a time. A node
  whose store does not fold just marks itself rejoined.

RPC (args → answer)::

    LOG_SNAPSHOT  {"page": i, "id"?: bytes} → {"id": bytes, "pages": n, "data": bytes}
"""

from __future__ import annotations

import logging
import os

import trio

from dhtfs.base.errors import NetworkError, ProtocolError, RemoteError
from dhtfs.net.network import Contact, Message
from dhtfs.oplog.accept import Acceptor
from dhtfs.oplog.gossip import Gossip
from dhtfs.oplog.logstore import FoldingStore
from dhtfs.oplog.shared import LogContext, Side

log = logging.getLogger(__name__)

LOG_SNAPSHOT = "LOG_SNAPSHOT"
SNAPSHOT_PAGE = 4 * 1024 * 1024
SNAPSHOT_TTL = 120.0


class Snapshots(Side):
    """Serves, fetches and installs snapshots of ``folding`` (None: a store that does not
    fold), see the module docstring."""

    def __init__(self, context: LogContext, folding: FoldingStore | None, acceptor: Acceptor,
                 gossip: Gossip) -> None:
        super().__init__(context)
        self.folding = folding
        self.acceptor = acceptor
        self.gossip = gossip
        self._snapshot: tuple[bytes, list[bytes], float] | None = None  # id, pages, expiry
        self._refused_snapshots: set[bytes] = set()  # peers whose snapshot we logged refusing
        self._rejoin_lock = trio.Lock()

    # -- serving -------------------------------------------------------------------------------

    def serve_page(self, args: Message) -> Message:
        """The LOG_SNAPSHOT handler."""
        if self.folding is None:
            raise RemoteError(f"{LOG_SNAPSHOT}: this node keeps no snapshots")
        page = args.get("page")
        if type(page) is not int or page < 0:
            raise RemoteError(f"{LOG_SNAPSHOT}: 'page' must be a non-negative int")
        now = trio.current_time()
        snap = self._snapshot
        if snap is None or snap[2] < now or (page == 0 and args.get("id") != snap[0]):
            blob = self.folding.snapshot()
            pages = [blob[i : i + SNAPSHOT_PAGE] for i in range(0, len(blob), SNAPSHOT_PAGE)]
            snap = self._snapshot = (os.urandom(8), pages or [b""], now + SNAPSHOT_TTL)
        if args.get("id", snap[0]) != snap[0]:
            raise RemoteError(f"{LOG_SNAPSHOT}: that snapshot expired; start again")
        if page >= len(snap[1]):
            raise RemoteError(f"{LOG_SNAPSHOT}: no page {page}")
        return {"id": snap[0], "pages": len(snap[1]), "data": snap[1][page]}

    # -- fetching ------------------------------------------------------------------------------

    async def install_from(self, peer: Contact, restamp_after: int | None = None) -> bool:
        """Fetch ``peer``'s snapshot page by page and install it (own entries past
        ``restamp_after``, if given, are made anew on top of it); True if installed."""
        if self.folding is None:
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
        async with self.acceptor.lock:
            try:
                if restamp_after is None:
                    self.folding.install(b"".join(pages))
                else:
                    self.folding.install(b"".join(pages), restamp_after=restamp_after)
            except ValueError as exc:
                if peer.node_id not in self._refused_snapshots:
                    self._refused_snapshots.add(peer.node_id)
                    log.error("snapshot from %s not installed: %s", peer, exc)
                return False
        self.acceptor.stash.clear()
        self.gossip.forget_signatures()  # own entries may have been made anew: sign them again
        self.gossip.pushed = min(
            self.gossip.pushed, self.store.vector().get(self.own_id, 0),
            restamp_after if restamp_after is not None else self.gossip.pushed)
        log.info("installed the snapshot of %s", peer)
        return True

    async def rejoin(self, peer: Contact) -> bool:
        """This node was forgotten: take ``peer``'s snapshot, make own entries past the cut
        anew on top of it, and mark this node rejoined. True if done."""
        async with self._rejoin_lock:  # one rejoin, whichever peer answered first
            if not self.membership.is_forgotten(self.own_id):
                return True
            return await self._rejoin_locked(peer)

    async def _rejoin_locked(self, peer: Contact) -> bool:
        cut = self.membership.cut(self.own_id) or 0
        if self.folding is not None:
            before = self.store.vector().get(self.own_id, 0)
            try:
                if not await self.install_from(peer, restamp_after=cut):
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
        self.gossip.notify()
        return True
