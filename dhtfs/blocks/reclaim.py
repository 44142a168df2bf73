"""Collection: blocks that no live file version references are reclaimed on every storage
node, after a grace period; a block that a live version references is never reclaimed.

Who can tell that a block is unreferenced? A mount holds the whole namespace (every node
applies every op the same way), so it asks its own (``local_refs``: its named objects, the
objects the kernel or a handle still holds, and the changes of files still open). A headless
storage node holds no namespace: it asks a mount (the ``REFS`` service, which only mounts
serve), and takes the answer only from a mount whose op-log vector covers its own at that
moment: that mount has applied every op this node has seen, so its view is at least as new.

The grace period covers the rest, which no namespace shows yet:
- a block is a candidate only once its file is older than ``grace``: a PUT_CHUNK of a block
  already held, and HOLD, restart it (``BlockStore.touch``). Writers send HOLD every
  ``grace / 4`` for the blocks of files still open, which no op references until they are
  flushed; and a block written again (dedup) is pushed again, so it is young again;
- a candidate found unreferenced is only *marked*; it is deleted at a later pass at least
  ``grace`` after, if it is still unreferenced, still old, and was not renewed since the mark.
  So an op that references a block has ``grace`` (an hour by default) to reach every node,
  twice over, before the block can go anywhere.

Blocks waiting for replication here (``pending``) are never candidates. A pass that cannot
get an answer it may trust (no mount answers, or none is caught up) marks and deletes nothing.

Known limit: a writer cut off from the swarm for longer than ``grace`` after closing a file
(its ops cannot reach anyone) may find that the other holders reclaimed that file's blocks;
its own copies remain, and repair pushes them back once it returns, unless it was a client
mount whose copies were evicted from its cache meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from dhtfs.base.errors import NetworkError
from dhtfs.base.periodic import every
from dhtfs.blocks.node import BlockNode
from dhtfs.net.network import Contact, Message

log = logging.getLogger(__name__)

REFS = "REFS"
"""The mount-side service: ``{"ids": [id, ...]}`` → ``{"referenced": [id, ...], "vector":
[[origin, seq], ...]}`` (the referenced subset, and the op-log vector it was answered at)."""
BATCH = 4096
INTERVAL_SECONDS = 300.0
ASK_AT_MOST = 3  # mounts asked per pass before giving up on this pass

LocalRefs = Callable[[list[bytes]], Awaitable[set[bytes]]]


class Reclaimer:
    """The collection passes of one storage node (see the module docstring)."""

    def __init__(
        self,
        node: BlockNode,
        grace: float,
        *,
        local_refs: LocalRefs | None = None,
        log_vector: Callable[[], dict[bytes, int]] | None = None,
        pending: Callable[[bytes], bool] = lambda _cid: False,
        on_removed: Callable[[bytes], None] = lambda _cid: None,
    ) -> None:
        if (local_refs is None) == (log_vector is None):
            raise ValueError("give local_refs (a mount) or log_vector (a headless node)")
        self.node = node
        self.store = node.store
        self.grace = grace
        self.interval = min(INTERVAL_SECONDS, max(1.0, grace / 2))
        self.local_refs = local_refs
        self.log_vector = log_vector
        self.pending = pending
        self.on_removed = on_removed
        self.marked: dict[bytes, float] = {}  # block → wall time it was found unreferenced
        self.reclaimed = 0
        self.passes = 0

    async def run(self) -> None:
        await every(self.interval, "collection", self.one_pass)

    async def one_pass(self) -> int:
        """Mark the old unreferenced blocks, delete the ones marked long enough; returns how
        many were deleted."""
        now = time.time()
        candidates = await trio.to_thread.run_sync(self._old_blocks, now)
        candidates = [c for c in candidates if not self.pending(c)]
        unreferenced = await self._unreferenced(candidates)
        if unreferenced is None:
            return 0
        self.marked = {c: self.marked.get(c, now) for c in unreferenced}
        due = [c for c, t in self.marked.items() if now - t >= self.grace]
        gone = await trio.to_thread.run_sync(self._delete, due, now)
        for cid in gone:
            del self.marked[cid]
            self.on_removed(cid)
        self.reclaimed += len(gone)
        self.passes += 1
        if gone:
            log.info("collection: reclaimed %d blocks no file references", len(gone))
        return len(gone)

    def _old_blocks(self, now: float) -> list[bytes]:
        out = []
        for cid in self.store.ids():
            age = self.store.age(cid, now)
            if age is not None and age >= self.grace:
                out.append(cid)
        return out

    def _delete(self, due: list[bytes], now: float) -> list[bytes]:
        """Delete each block unless it was renewed since its mark (checked just before)."""
        gone = []
        for cid in due:
            age = self.store.age(cid, now)
            if age is None or now - age > self.marked[cid]:
                continue  # gone already, or renewed (PUT_CHUNK, HOLD) after the mark
            if age >= self.grace and self.store.remove(cid):
                gone.append(cid)
        return gone

    async def _unreferenced(self, candidates: list[bytes]) -> set[bytes] | None:
        """The candidates no live version references, or None when no trusted answer."""
        if not candidates:
            return set()
        if self.local_refs is not None:
            return set(candidates) - await self.local_refs(candidates)
        assert self.log_vector is not None
        for peer in self._mounts()[:ASK_AT_MOST]:
            referenced = await self._ask(peer, candidates)
            if referenced is not None:
                return set(candidates) - referenced
        log.debug("collection: no caught-up mount answered; nothing reclaimed this pass")
        return None

    def _mounts(self) -> list[Contact]:
        """Peers to ask, nearest (by RTT) first; headless ones refuse REFS."""
        return self.node.routing.rank_providers(self.node.routing.closest(self.node.id, 20))

    async def _ask(self, peer: Contact, candidates: list[bytes]) -> set[bytes] | None:
        """The referenced subset according to ``peer``, if it is a caught-up mount."""
        assert self.log_vector is not None
        referenced: set[bytes] = set()
        for i in range(0, len(candidates), BATCH):
            mine = self.log_vector()
            try:
                ans: Message = await self.node.call(
                    peer, REFS, {"ids": candidates[i : i + BATCH]}, self.node.rpc_timeout)
                theirs = {bytes(o): int(s) for o, s in ans["vector"]}
                got = {bytes(c) for c in ans["referenced"]}
            except (NetworkError, KeyError, TypeError, ValueError):
                return None
            if any(theirs.get(o, 0) < s for o, s in mine.items()):
                return None  # behind this node's log: its answer may miss a reference
            referenced |= got
        return referenced

    def status(self) -> dict[str, int]:
        return {"passes": self.passes, "marked": len(self.marked), "reclaimed": self.reclaimed}
