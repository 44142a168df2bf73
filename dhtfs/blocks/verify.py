"""Checking what a node stores, for ``dhtfs fsck``, and the op-log lag for ``dhtfs status``.

The control method ``fsck`` (``control``) answers one bounded request at a time, so a store
of any size is checked without a long-running request, with progress shown by the caller:

    {"after": bytes, "limit": n}  → {"total": n (only when ``after`` is empty), "checked": n,
                                     "bytes": n, "bad": [[id, reason], ...], "next": bytes
                                     | None}   (the next page starts after ``next``)
    {"repair": [id, ...]}         → {"repaired": [[id, source], ...],
                                     "unrepairable": [[id, reason], ...], "fine": [id, ...]}

Invariants:
- a block is good when its file unseals (format, AES-GCM tag bound to the block ID) and its
  plaintext hashes (SHA-256) to its ID; checking reads files in a worker thread, a page of at
  most ``PAGE_MAX`` blocks per request, in ID order (a cursor, not a snapshot: blocks stored
  or removed meanwhile may or may not be seen, and a block that vanished is not "bad");
- repair checks each block again first (a good one is left alone, ``fine``); a bad one is
  removed (it is unreadable anyway: the node's own reads drop such files too), fetched
  from the swarm with ``BlockNode.get_block_detailed`` (verified against its ID there), and
  stored back durably; at most ``REPAIR_MAX`` per request, ``REPAIR_PARALLEL`` at a time,
  each under ``REPAIR_DEADLINE`` seconds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import trio

from dhtfs.base.errors import BlockCorrupt, BlockError, BlockMissing, RemoteError
from dhtfs.net.network import Message

PAGE_MAX = 4096
REPAIR_MAX = 64
REPAIR_PARALLEL = 8
REPAIR_DEADLINE = 30.0
ID_HEX = 64


# -- listing -----------------------------------------------------------------------------------


def _is_block_name(sub: str, name: str) -> bool:
    return len(name) == ID_HEX - 2 and "." not in name and len(sub) == 2


def page_ids(root: Path, after: bytes, limit: int) -> list[bytes]:
    """Up to ``limit`` stored block IDs greater than ``after``, in ID order (the store's
    ``ab/cdef…`` layout: directories and names are lower-case hex)."""
    start = after.hex()
    out: list[bytes] = []
    try:
        subs = sorted(e.name for e in os.scandir(root) if e.is_dir() and len(e.name) == 2)
    except FileNotFoundError:
        return out
    for sub in subs:
        if sub < start[:2]:
            continue
        try:
            names = sorted(os.listdir(root / sub))
        except FileNotFoundError:
            continue
        for name in names:
            if _is_block_name(sub, name) and sub + name > start:
                try:
                    out.append(bytes.fromhex(sub + name))
                except ValueError:
                    continue
                if len(out) >= limit:
                    return out
    return out


def count_ids(root: Path) -> int:
    total = 0
    try:
        subs = [e for e in os.scandir(root) if e.is_dir() and len(e.name) == 2]
    except FileNotFoundError:
        return 0
    for sub in subs:
        try:
            total += sum(1 for n in os.listdir(sub.path) if _is_block_name(sub.name, n))
        except FileNotFoundError:
            continue
    return total


# -- checking ----------------------------------------------------------------------------------


def check_one(store: Any, cid: bytes) -> tuple[str | None, int]:
    """(why the block is bad or None, its plaintext size); BlockMissing if it is gone."""
    try:
        data = store.get(cid)
    except BlockMissing:
        raise
    except BlockCorrupt as exc:
        return str(exc).split(": ", 1)[-1], 0
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}", 0
    if hashlib.sha256(data).digest() != cid:
        return "content does not hash to its id", len(data)
    return None, len(data)


def check_page(store: Any, ids: list[bytes]) -> tuple[int, int, list[list[Any]]]:
    """(blocks checked, plaintext bytes, [[id, reason], ...] of the bad ones)."""
    checked = size = 0
    bad: list[list[Any]] = []
    for cid in ids:
        try:
            reason, n = check_one(store, cid)
        except BlockMissing:
            continue  # removed meanwhile (collected, evicted): nothing to check
        checked += 1
        size += n
        if reason is not None:
            bad.append([cid, reason])
    return checked, size, bad


# -- repairing ---------------------------------------------------------------------------------


def _store_back(store: Any, cid: bytes, data: bytes) -> None:
    store.put(cid, data)
    store.sync([cid])


async def repair(node: Any, store: Any, ids: list[bytes]) -> Message:
    """Check each of ``ids`` again; fetch the bad ones from peers and store them back."""
    repaired: list[list[Any]] = []
    unrepairable: list[list[Any]] = []
    fine: list[bytes] = []
    limit = trio.CapacityLimiter(REPAIR_PARALLEL)

    async def one(cid: bytes) -> None:
        async with limit:
            try:
                reason, _ = await trio.to_thread.run_sync(check_one, store, cid)
            except BlockMissing:
                reason = "missing"
            if reason is None:
                fine.append(cid)
                return
            await trio.to_thread.run_sync(store.remove, cid)
            why = "no peer answered in time"
            with trio.move_on_after(REPAIR_DEADLINE):
                try:
                    got = await node.get_block_detailed(cid)
                except BlockError as exc:
                    why = str(exc).split(": ", 1)[-1]
                else:
                    await trio.to_thread.run_sync(_store_back, store, cid, got.data)
                    who = got.provider.node_id.hex() if got.provider is not None else got.source
                    repaired.append([cid, who])
                    return
            unrepairable.append([cid, why])

    async with trio.open_nursery() as nursery:
        for cid in ids:
            nursery.start_soon(one, cid)
    return {"repaired": repaired, "unrepairable": unrepairable, "fine": fine}


async def control(node: Any, store: Any, args: Message) -> Message:
    """The ``fsck`` control method's block side (see the module docstring)."""
    if "repair" in args:
        ids = args["repair"]
        if (not isinstance(ids, list) or len(ids) > REPAIR_MAX
                or not all(isinstance(c, bytes) and len(c) == 32 for c in ids)):
            raise RemoteError(f"fsck: 'repair' must list at most {REPAIR_MAX} 32-byte ids")
        return await repair(node, store, list(dict.fromkeys(ids)))
    after = args.get("after", b"")
    limit = args.get("limit", 256)
    if not isinstance(after, bytes) or len(after) not in (0, 32):
        raise RemoteError("fsck: 'after' must be empty or a 32-byte id")
    if type(limit) is not int or not 0 < limit <= PAGE_MAX:
        raise RemoteError(f"fsck: 'limit' must be 1..{PAGE_MAX}")
    root = Path(store.root)

    def page() -> Message:
        ids = page_ids(root, after, limit)
        checked, size, bad = check_page(store, ids)
        out: Message = {"checked": checked, "bytes": size, "bad": bad,
                        "next": ids[-1] if len(ids) == limit else None}
        if not after:
            out["total"] = count_ids(root)
        return out

    return await trio.to_thread.run_sync(page)


# -- op-log lag --------------------------------------------------------------------------------


def log_lag(own: dict[bytes, int], reports: dict[bytes, Any]) -> Message:
    """How far this node's op log is behind what its peers last reported (``reports``: peer
    → (vector, clock), ``dhtfs.oplog.folding.Folding.reports``; each a lower bound of what
    that peer holds): ``lag`` = ops the highest known vector has and ``own`` lacks; per peer
    the ops it has that we lack (``missing_here``) and the ops we have that it lacked
    (``missing_there``), as of its last report."""
    highest = dict(own)
    peers = []
    for peer, (vector, _clock) in sorted(reports.items()):
        for origin, seq in vector.items():
            highest[origin] = max(highest.get(origin, 0), seq)
        peers.append({
            "node_id": peer,
            "missing_here": sum(max(0, s - own.get(o, 0)) for o, s in vector.items()),
            "missing_there": sum(max(0, s - vector.get(o, 0)) for o, s in own.items()),
        })
    return {"ops": sum(own.values()), "origins": len(own),
            "lag": sum(max(0, s - own.get(o, 0)) for o, s in highest.items()), "peers": peers}
