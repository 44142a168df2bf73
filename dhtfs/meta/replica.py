"""The namespace as a replicated log store (``dhtfs.oplog.replicator.LogStore``) for a mount.

Entries are namespace ops: ``body`` is ``encode_op`` (format-versioned), ``origin`` the node
that made the op, ``seq`` its place in that node's log. Accepting an entry applies its op
through ``Namespace.apply``, the one deterministic writer, so every node that holds the same
entries shows the same tree whatever order they came in.

Invariants:
- an entry whose body does not decode, or whose op names another node than its origin, is
  refused (``InvalidEntry``): a certificate signs only for its own node's ops;
- the hybrid clock observes every remote op, so an op made here after seeing one is ordered
  after it;
- ``on_remote(ops, before)`` is told of every applied batch with the places ``(parent, name)``
  the ops' links held before, so that the mount can invalidate kernel caches and refresh
  open files; it runs on the trio thread, never inside a FUSE handler. An op of the batch
  ordered before ops already applied here undoes and redoes them, and a redone op may do
  something else than it did (a link to an object whose last name an earlier op removed is
  skipped): those ops are in ``ops`` too, their links' places before the batch in ``before``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from dhtfs.meta.history import History
from dhtfs.meta.ops import Op, decode_op
from dhtfs.meta.tree import Tree
from dhtfs.oplog.entries import InvalidEntry, LogEntry, chain_start
from dhtfs.oplog.logstore import FoldingStore

log = logging.getLogger(__name__)

LinkPlaces = dict[bytes, tuple[bytes, bytes] | None]
"""link ID → ``(parent, name)`` it held before a batch (None: it did not exist)."""


class NamespaceLog(FoldingStore):
    """``LogStore`` over one mount's namespace (see the module docstring). ``protected``: the
    objects that must survive folding though unnamed (the kernel's, open files');
    ``on_installed``: told after a snapshot is installed (everything may have changed)."""

    def __init__(
        self,
        tree: Tree,
        *,
        on_remote: Callable[[list[Op], LinkPlaces], None] | None = None,
        on_installed: Callable[[], None] | None = None,
        protected: Callable[[], set[bytes]] = set,
    ) -> None:
        self.tree = tree
        self.ns = tree.ns
        self.history = History(tree.ns)
        self.on_remote = on_remote
        self.protected = protected
        self.on_installed = on_installed

    def vector(self) -> dict[bytes, int]:
        return dict(self.ns.vector)

    def entries_after(self, origin: bytes, seq: int, limit: int) -> list[LogEntry]:
        return [
            LogEntry(origin, s, body, sig, link)
            for s, body, sig, link in self.history.entries(origin, seq, limit)
        ]

    def head(self, origin: bytes) -> bytes:
        return self.ns.heads.get(origin) or chain_start(origin)

    # -- folding and snapshots (dhtfs.meta.history) ------------------------------------------------

    def clock(self) -> int:
        """Every op made here from now on is stamped after this."""
        return self.tree.clock.last

    def folded(self) -> dict[bytes, int]:
        return self.history.folded()

    def fold(self, stable: dict[bytes, int], highest: dict[bytes, int], floor: int) -> int:
        return self.history.fold(stable, highest, floor, self.protected())

    def snapshot(self) -> bytes:
        return self.history.snapshot()

    def install(self, blob: bytes, restamp_after: int | None = None) -> None:
        """Install a snapshot (ValueError if it is malformed); own ops past
        ``restamp_after`` are stamped anew (``History.install``)."""
        vector = self.history.install(blob, self.tree.node_id, self.tree.clock, restamp_after)
        log.info("installed a snapshot of the tree (%d ops)", sum(vector.values()))
        if self.on_installed is not None:
            self.on_installed()

    def members(self) -> set[bytes]:
        return self.history.members()

    def add_member(self, node: bytes) -> None:
        self.history.add_member(node)

    def accept(self, entries: Sequence[LogEntry]) -> None:
        ops: list[Op] = []
        places: LinkPlaces = {}
        redone: dict[tuple[int, bytes], Op] = {}
        slotted_from: tuple[int, bytes] | None = None  # redone ops are known from there on
        try:
            for e in entries:
                try:
                    op = decode_op(e.body)
                except Exception as exc:  # malformed bytes of any kind
                    raise InvalidEntry(e, f"undecodable op ({exc})") from None
                if op.node != e.origin:
                    raise InvalidEntry(e, f"op claims node {op.node.hex()[:12]}")
                later: list[Op] = []
                if op.op_id < self.ns.newest_op and (
                    slotted_from is None or op.op_id < slotted_from
                ):
                    slotted_from = op.op_id
                    later = [o for o in self.ns.ops_after(op.op_id) if o.op_id not in redone]
                    redone.update((o.op_id, o) for o in later)
                for change in (c for o in (op, *later) for c in o.changes):
                    link = change.get("link") if isinstance(change, dict) else None
                    if isinstance(link, bytes) and link not in places:
                        places[link] = self.ns.link_place(link)
                try:
                    self.ns.apply(op, seq=e.seq, sig=e.sig)
                except (KeyError, TypeError, ValueError) as exc:
                    raise InvalidEntry(e, f"op does not apply ({exc!r})") from None
                self.tree.clock.observe(op.ts)
                ops.append(op)
        finally:
            if ops and self.on_remote is not None:
                self.on_remote([*ops, *redone.values()], places)

    def cert(self, origin: bytes) -> bytes | None:
        return self.history.cert(origin)

    def add_cert(self, origin: bytes, der: bytes) -> None:
        self.history.add_cert(origin, der)
