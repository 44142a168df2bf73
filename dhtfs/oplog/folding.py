"""Membership, reports and folding of the replicated log (``dhtfs.oplog.replicator``'s side of
``dhtfs.meta.history``); the snapshots a folding store serves are ``dhtfs.oplog.snapshots``.

Invariants:
- ``members``: every node that exchanged log RPCs with us (persisted by a store that can
  fold), plus every origin; a member's last report (its vector, and its clock or None for a
  node that makes no entries) is only ever a lower bound of what it holds;
- nothing is folded until every member has reported, and a node that must not fold alone
  (``fold_alone`` False) folds nothing while it knows no member;
- a store that cannot fold but can ``trim`` (a headless node's) drops what every member holds;
  which a store can do is the protocol it implements (``dhtfs.oplog.logstore``: a
  ``FoldingStore``, a ``TrimmingStore``, or a plain ``LogStore`` that keeps everything);
- a forgotten member (``dhtfs.oplog.membership``) is left out of "every member" only once every
  other member's last report showed it knew of the forgetting; its own reports are ignored
  while it stays forgotten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dhtfs.oplog.logstore import FoldingStore, LogStore, TrimmingStore
from dhtfs.oplog.membership import Membership


class Folding:
    """What a replicator knows of the other members, and what it may fold (see above)."""

    def __init__(self, store: LogStore, own_id: bytes, *, fold_alone: bool = True,
                 membership: Membership | None = None) -> None:
        self.store = store
        self.own_id = own_id
        self.fold_alone = fold_alone
        # The store's folding side (a mount's namespace), if it has one; else its trimming
        # side (a headless node's), if it has one.
        self.folding = store if isinstance(store, FoldingStore) else None
        self.trimming = store if isinstance(store, TrimmingStore) else None
        self.members: set[bytes] = self.folding.members() if self.folding else set()
        self.reports: dict[bytes, tuple[dict[bytes, int], int | None]] = {}
        self.membership = membership if membership is not None else Membership(own_id)
        # (node, epoch) forgettings each member's last report showed it knew
        self.knew: dict[bytes, frozenset[tuple[bytes, int]]] = {}

    def clock(self) -> int | None:
        return self.folding.clock() if self.folding is not None else None

    def member(self, node_id: bytes) -> None:
        """``node_id`` exchanged a log RPC with us: a member, heard from now."""
        self.membership.heard(node_id)
        if node_id not in self.members and node_id != self.own_id:
            self.members.add(node_id)
            if self.folding is not None:
                self.folding.add_member(node_id)

    def report(self, node_id: bytes, vector: dict[bytes, int], clock: Any,
               knew: frozenset[tuple[bytes, int]] = frozenset()) -> None:
        self.reports[node_id] = (vector, clock if type(clock) is int else None)
        self.knew[node_id] = knew
        self.membership.heard(node_id)

    def known_members(self) -> set[bytes]:
        """Every member this node knows of (forgotten ones too), itself excepted."""
        members = self.members | set(self.store.vector())
        members.discard(self.own_id)
        return members

    def required(self) -> set[bytes]:
        """The members whose reports folding waits for: the known ones, but the forgotten
        ones that every other one's last report knew were forgotten."""
        members = self.known_members()
        forgotten = self.membership.forgotten()
        others = members - set(forgotten)
        gone = {
            x for x, epoch in forgotten.items()
            if all((x, epoch) in self.knew.get(m, ()) for m in others)
        }
        return members - gone

    def forget(self, node: bytes, why: str) -> tuple[int, bool, int] | None:
        """Forget member ``node``, keeping what we hold of its entries (its cut)."""
        return self.membership.forget(node, self.store.vector().get(node, 0), why)

    def auto_forget(self, revoked: Callable[[bytes], bool] | None) -> None:
        """Forget members whose certificate is ``revoked``, and members silent too long."""
        members = self.known_members()
        for m in sorted(members):
            if revoked is not None and not self.membership.is_forgotten(m) and revoked(m):
                self.forget(m, "its certificate was revoked")
        for m in self.membership.silent(members):
            self.forget(m, f"not heard from for member_timeout="
                           f"{self.membership.member_timeout:g}s")

    def behind(self, theirs: dict[bytes, int]) -> bool:
        """True if a node with vector ``theirs`` lacks entries we no longer serve."""
        side = self.folding if self.folding is not None else self.trimming
        if side is None:
            return False
        return any(theirs.get(o, 0) < s for o, s in side.folded().items())

    def maybe_fold(self) -> int:
        """Fold (or trim) what every known member holds; returns the entries folded."""
        vector = self.store.vector()
        if not self.known_members() and not self.fold_alone:
            return 0
        members = self.required()
        clock = self.clock()
        reports = {**self.reports, self.own_id: (vector, clock)}
        if any(m not in reports for m in members):
            return 0
        vectors = [reports[m][0] for m in (*members, self.own_id)]
        origins = set().union(*vectors)
        stable = {o: min(v.get(o, 0) for v in vectors) for o in origins}
        if self.folding is None:
            return self.trimming.trim(stable) if self.trimming is not None else 0
        highest = {o: max(v.get(o, 0) for v in vectors) for o in origins}
        clocks = [c for m in (*members, self.own_id) if (c := reports[m][1]) is not None]
        return self.folding.fold(stable, highest, min(clocks))
