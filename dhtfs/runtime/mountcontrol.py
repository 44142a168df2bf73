"""A mount's own control methods (``dhtfs.net.control``; the CLI's ``dhtfs oplog``, ``sync``,
``fsck``, ``gc``, ``crl`` ... and the tests' switches), beside what every node answers
(``dhtfs.runtime.assembly``: ``status`` and the membership methods).

The socket is root-only: the test switches (``isolate``, ``faults``) are off by default and
reachable only there.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dhtfs.base.errors import RemoteError
from dhtfs.blocks.node import BlockNode
from dhtfs.fs import fsck
from dhtfs.fs.remote import RemoteChanges
from dhtfs.net.network import Message
from dhtfs.net.transport import Transport
from dhtfs.oplog.replicator import LogReplicator
from dhtfs.runtime.assembly import ControlMethod
from dhtfs.runtime.localfs import LocalFilesystem, collect_garbage
from dhtfs.trust.revocation import RevocationList


class MountControl:
    """The control methods of one mount, over its parts."""

    def __init__(self, fs: LocalFilesystem, node: BlockNode, transport: Transport,
                 log_replicator: LogReplicator, remote: RemoteChanges,
                 revocations: RevocationList) -> None:
        self.fs = fs
        self.node = node
        self.transport = transport
        self.log_replicator = log_replicator
        self.remote = remote
        self.revocations = revocations

    def methods(self) -> dict[str, ControlMethod]:
        return {
            "oplog": self._oplog, "isolate": self._isolate, "faults": self._faults,
            "fsck": self._fsck, "sync": self._sync, "digest": self._digest,
            "fold": self._fold, "gc": self._gc, "crl": self._crl,
        }

    async def _fsck(self, args: Message) -> Message:
        """``dhtfs fsck``: a page of blocks checked, repairs, or the namespace's invariants."""
        return await fsck.control(self.fs, self.node, args)

    async def _oplog(self, args: Message) -> Message:
        st = self.log_replicator.stats
        ns = self.fs.namespace
        ns.write_back()
        return {
            "vector": [[o, s] for o, s in ns.vector.items()],
            "stats": {k: getattr(st, k) for k in st.__slots__},
            "unfolded": ns.db.execute("SELECT count(*) FROM oplog").fetchone()[0],
            "fold_ts": ns.fold_ts,
            "members": len(self.log_replicator.fold.members),
            "forgotten": sorted(self.log_replicator.membership.forgotten()),
        }

    async def _isolate(self, args: Message) -> Message:
        self.transport.isolate(bool(args.get("on")))
        return {"isolated": self.transport.isolated}

    async def _faults(self, args: Message) -> Message:
        """Test switches of the transport (``Transport.set_faults``), off by default and only
        reachable through this root-only control socket: ``{"delay": seconds, "tamper": bool,
        "mute": bool, "hold": [method, ...]}``, each optional; returns the settings now in
        force. (``"follow": bool`` switches the mount's following of directories moved
        elsewhere, ``"invalidate": bool`` holds its kernel invalidations back: remote.py.)"""
        if args.get("follow") is not None:  # following directories moved elsewhere (remote.py)
            self.remote.follow = bool(args["follow"])
        if args.get("invalidate") is not None:  # kernel invalidations held back (remote.py)
            self.remote.hold(not args["invalidate"])
        try:
            return self.transport.set_faults(
                delay=args.get("delay"),
                tamper=None if args.get("tamper") is None else bool(args["tamper"]),
                mute=None if args.get("mute") is None else bool(args["mute"]),
                hold=args.get("hold"),
            )
        except ValueError as exc:
            raise RemoteError(f"faults: {exc}") from None

    async def _crl(self, args: Message) -> Message:
        """Offer a revocation list (``{"crl": bytes}``, PEM or DER; the CA must have signed
        it, and it must be newer); returns whether it was adopted and the number held."""
        data = args.get("crl")
        adopted = isinstance(data, bytes) and self.revocations.offer(data, source="the CLI")
        return {"adopted": adopted, "number": self.revocations.number}

    async def _sync(self, args: Message) -> Message:
        return {"gained": await self.log_replicator.sync_all()}

    async def _fold(self, args: Message) -> Message:
        """Fold what every member holds now (instead of at the next ``fold_interval``)."""
        return {"folded": self.log_replicator.fold.maybe_fold(),
                "fold_ts": self.fs.namespace.fold_ts}

    async def _gc(self, args: Message) -> Message:
        """Delete block files no file references that are older than ``grace`` seconds
        (default: the usual grace period)."""
        grace = args.get("grace", self.fs.config.gc_grace)
        if not isinstance(grace, int | float) or grace < 0:
            raise RemoteError("gc: 'grace' must be a non-negative number of seconds")
        return {"removed": collect_garbage(self.fs, float(grace))}

    async def _digest(self, args: Message) -> Message:
        """A hash of the whole visible tree (names, kinds, modes, sizes, contents' piece
        lists, object IDs): equal on two nodes exactly when they show the same tree."""
        self.fs.namespace.write_back()
        tree = self.fs.namespace.tree()
        return {"digest": hashlib.sha256(repr(_canonical(tree)).encode()).hexdigest()}


def _canonical(tree: dict[bytes, Any]) -> list[Any]:
    return [
        (name, _canonical(v) if isinstance(v, dict) else v) for name, v in sorted(tree.items())
    ]
