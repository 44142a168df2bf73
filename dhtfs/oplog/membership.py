"""Members that are gone: forgetting them, so that folding resumes, and taking them back.

Folding (``dhtfs.oplog.folding``) waits for a report from every member the node knows (every
node it exchanged log RPCs with, and every origin of the log). A member that never returns (a
machine thrown away, a node re-created with a new certificate) would hold it back forever. A
*forget record* lets the swarm stop waiting for it.

Records. For each forgotten node ``X`` a node holds one record ``(epoch, rejoined, cut)``:

- ``epoch``: how many times ``X`` was forgotten (1 the first time);
- ``cut``: the last entry of ``X``'s log that the swarm keeps from before the forgetting. The
  node that forgets ``X`` sets it to what it holds of ``X``; a node that learns the record
  while it holds more of ``X`` raises it to what it holds (so no entry of ``X`` that a live
  node has applied is ever refused anywhere);
- ``rejoined``: ``X`` came back, took a snapshot and is a member again (set by ``X`` itself).

Records merge by taking, per node, the larger ``(epoch, rejoined, cut)`` tuple: a join
semilattice (commutative, associative, idempotent), so every node that has seen the same
records holds the same ones, whatever the order and the paths they came by. They ride on
every LOG_PULL request and answer and every LOG_PUSH (``"forgotten"``), so they reach every
node as fast as the log itself does, headless nodes included (which do not decode ops: the
reason this is not an op of the tree). Any member may forget another (the same trust as
writing the tree; a peer that cannot authenticate never gets here). Records persist in
``<state>/members.json`` (temp file + rename), so a restart neither forgets them nor waits
again.

Effects, while ``X`` is forgotten (a record not ``rejoined``):

- entries of ``X`` past ``cut`` are refused (quietly: they are the ones nobody else saw,
  which ``X`` makes anew when it rejoins);
- ``X`` no longer counts among the members whose reports folding waits for, but only once
  every other member's last report shows it knew the record (a report made before it knew
  may lack entries of ``X`` that it held; made after, it includes all it will ever accept).

``X`` itself, when it learns it was forgotten: takes a snapshot from a peer and makes its own
entries past ``cut`` again on top of it (new timestamps, same places), then sets
``rejoined`` (``dhtfs.oplog.replicator``). Its changes that nobody saw are so merged as new ops,
never dropped.

Automatic forgetting (``auto``): a member whose certificate the swarm CA revoked, and a member
this node has not heard from for ``member_timeout`` seconds of its own running time while it
did hear other members (a node cut off from everyone forgets nobody).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import trio
from cryptography import x509
from cryptography.x509.oid import NameOID

from dhtfs.base.errors import RemoteError

log = logging.getLogger(__name__)

MEMBERS_FILE = "members.json"

Record = tuple[int, bool, int]
"""``(epoch, rejoined, cut)`` (see the module docstring)."""


def record_to_wire(node: bytes, rec: Record) -> list[Any]:
    return [node, rec[0], rec[1], rec[2]]


def records_from_wire(value: Any) -> dict[bytes, Record]:
    """The records of a message (malformed items are skipped: they come from a member)."""
    out: dict[bytes, Record] = {}
    if not isinstance(value, list):
        return out
    for item in value[:4096]:
        if (isinstance(item, list) and len(item) == 4 and type(item[0]) is bytes
                and len(item[0]) == 32 and type(item[1]) is int and item[1] > 0
                and type(item[2]) is bool and type(item[3]) is int and item[3] >= 0):
            rec: Record = (item[1], item[2], item[3])
            out[item[0]] = max(out.get(item[0], rec), rec)
    return out


class Membership:
    """The forget records this node holds, and when it last heard each member."""

    def __init__(self, own_id: bytes, path: Path | None = None, *,
                 member_timeout: float = 0.0,
                 peer_cert: Callable[[bytes], bytes | None] | None = None) -> None:
        """``peer_cert``: a connected peer's certificate (DER), to learn members' names."""
        self.own_id = own_id
        self.peer_cert = peer_cert
        self.certs: dict[bytes, bytes] = {}  # members' certificates seen (revocation)
        self.names: dict[bytes, str] = {}  # members' certificate common names (persisted)
        self.path = path
        self.member_timeout = member_timeout
        self.records: dict[bytes, Record] = {}
        self._heard: dict[bytes, float] = {}  # member → trio time it last reported
        self._started = _now()
        self._last_other = -float("inf")  # last time any member reported
        self.on_forgotten: Callable[[], None] | None = None  # told when we are forgotten
        self._load()

    # -- persistence ---------------------------------------------------------------------------

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text())
            items = [[bytes.fromhex(r[0]), r[1], r[2], r[3]] for r in doc["forgotten"]]
            names = {bytes.fromhex(n): str(cn) for n, cn in doc.get("names", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.error("cannot read %s (%s): no node is forgotten until a peer tells this one "
                      "again", self.path, exc)
            return
        self.records = records_from_wire(items)
        self.names = names

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {"forgotten": [[n.hex(), *r] for n, r in sorted(self.records.items())],
               "names": {n.hex(): cn for n, cn in sorted(self.names.items())}}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, self.path)

    # -- queries -------------------------------------------------------------------------------

    def forgotten(self) -> dict[bytes, int]:
        """Node → epoch, for every node forgotten now (not rejoined)."""
        return {n: r[0] for n, r in self.records.items() if not r[1]}

    def is_forgotten(self, node: bytes) -> bool:
        rec = self.records.get(node)
        return rec is not None and not rec[1]

    def refuses(self, origin: bytes, seq: int) -> bool:
        """True for an entry of a forgotten origin past its cut."""
        rec = self.records.get(origin)
        return rec is not None and not rec[1] and seq > rec[2]

    def cut(self, node: bytes) -> int | None:
        rec = self.records.get(node)
        return rec[2] if rec is not None else None

    def to_wire(self) -> list[list[Any]]:
        return [record_to_wire(n, r) for n, r in sorted(self.records.items())]

    def known_in(self, records: dict[bytes, Record]) -> frozenset[tuple[bytes, int]]:
        """The (node, epoch) forgettings a peer's records show it knew."""
        return frozenset((n, r[0]) for n, r in records.items() if not r[1])

    # -- changes -------------------------------------------------------------------------------

    def forget(self, node: bytes, cut: int, why: str) -> Record | None:
        """Forget ``node`` (holding ``cut`` of its entries); the new record, or None if it is
        forgotten already (its cut raised to ``cut`` if that is higher) or is this node."""
        if node == self.own_id:
            return None
        old = self.records.get(node)
        if old is not None and not old[1]:
            if cut > old[2]:
                self.records[node] = (old[0], False, cut)
                self._save()
            return None
        rec: Record = ((old[0] + 1) if old is not None else 1, False, cut)
        self.records[node] = rec
        self._save()
        log.warning("forgot member %s (%s): folding no longer waits for it; it keeps %d of "
                    "its ops, and if it comes back it rejoins with a snapshot and makes its "
                    "other changes again", node.hex()[:16], why, cut)
        return rec

    def rejoined(self) -> Record | None:
        """This node took a snapshot after being forgotten: mark it a member again."""
        old = self.records.get(self.own_id)
        if old is None or old[1]:
            return None
        rec: Record = (old[0], True, old[2])
        self.records[self.own_id] = rec
        self._save()
        return rec

    def merge(self, records: dict[bytes, Record], held: dict[bytes, int]) -> list[bytes]:
        """Merge a peer's records (``held``: this node's vector, to raise cuts to what it
        holds); returns the nodes whose record changed. Tells ``on_forgotten`` when this
        node learns it was forgotten."""
        changed = []
        for node, rec in records.items():
            old = self.records.get(node)
            new = rec if old is None else max(old, rec)
            if not new[1] and held.get(node, 0) > new[2] and node != self.own_id:
                new = (new[0], False, held[node])  # entries of it that we applied stay
            if new != old:
                self.records[node] = new
                changed.append(node)
                if not new[1] and (old is None or old[1] or old[0] != new[0]):
                    who = "this node" if node == self.own_id else f"member {node.hex()[:16]}"
                    log.warning("learned that %s was forgotten (epoch %d, keeping %d of its "
                                "ops)", who, new[0], new[2])
        if changed:
            self._save()
            if self.own_id in changed and self.is_forgotten(self.own_id) \
                    and self.on_forgotten is not None:
                self.on_forgotten()
        return changed

    # -- silence -------------------------------------------------------------------------------

    def heard(self, node: bytes) -> None:
        if node not in self.certs and self.peer_cert is not None:
            der = self.peer_cert(node)
            if der is not None:
                self.certs[node] = der
                name = common_name(der)
                if name is not None and self.names.get(node) != name:
                    self.names[node] = name
                    self._save()
        now = _now()
        self._heard[node] = now
        if node != self.own_id:
            self._last_other = now

    def last_heard(self, node: bytes) -> float | None:
        """When ``node`` was last heard from (``_now``), if it was since this process began."""
        return self._heard.get(node)

    def silent(self, members: Iterable[bytes]) -> list[bytes]:
        """Members not heard from for ``member_timeout`` seconds of this process's running
        time, while some member was heard within it (empty when the timeout is off)."""
        if self.member_timeout <= 0:
            return []
        now = _now()
        if now - self._last_other > self.member_timeout:
            return []  # nobody heard lately: this node is the one cut off
        return [m for m in members if m != self.own_id and not self.is_forgotten(m)
                and now - self._heard.get(m, self._started) > self.member_timeout]


def _now() -> float:
    """Trio's clock (virtual in the simulator), or the monotonic clock outside trio."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


def resolve(query: str, candidates: dict[bytes, str | None]) -> bytes:
    """The one node of ``candidates`` (node ID → certificate common name, if known) that
    ``query`` names: a hex node ID or a unique prefix of one, or a common name. ValueError
    naming the problem otherwise."""
    text = query.strip().lower()
    if not text:
        raise ValueError("give a node ID (or a unique prefix of one) or a certificate name")
    by_name = [n for n, cn in candidates.items() if cn is not None and cn == query.strip()]
    if len(by_name) == 1:
        return by_name[0]
    try:
        int(text, 16)
        is_hex = True
    except ValueError:
        is_hex = False
    matches = [n for n in candidates if is_hex and n.hex().startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1 or len(by_name) > 1:
        names = ", ".join(sorted(n.hex()[:16] for n in (matches or by_name)))
        raise ValueError(f"{query!r} names several members ({names}); give more of the ID")
    raise ValueError(f"{query!r} is not a member this node knows (see dhtfs peers / status)")


def common_name(der: bytes | None) -> str | None:
    """The common name of a DER certificate (None if there is none or it does not parse)."""
    if der is None:
        return None
    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)
    except ValueError:
        return None
    return str(names[0].value) if names else None


class MemberControl(Protocol):
    """What ``control_methods`` needs of a node's replicator (a
    ``dhtfs.oplog.replicator.LogReplicator``)."""

    own_id: bytes
    membership: Membership

    def known_members(self) -> set[bytes]:
        """Every member known (forgotten ones too), this node excepted."""
        ...

    def cert(self, node: bytes) -> bytes | None:
        """The certificate of ``node``, if known."""
        ...

    def forget(self, node: bytes, why: str) -> Record | None:
        """Forget member ``node``; the new record, or None."""
        ...


def control_methods(replicator: MemberControl) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """The control-socket methods of a node's membership (``replicator``: its
    ``dhtfs.oplog.replicator.LogReplicator``)::

        forget   {"node": str} → {"node": bytes, "name": str|None, "cut": int, "new": bool}
        members  {} → {"members": [[node, name|None, forgotten, epoch, cut, heard_ago|None]]}
    """

    def candidates() -> dict[bytes, str | None]:
        nodes = replicator.known_members() | set(replicator.membership.records)
        nodes.discard(replicator.own_id)
        names = replicator.membership.names
        return {n: names.get(n) or common_name(replicator.cert(n)) for n in nodes}

    async def forget(args: dict[str, Any]) -> dict[str, Any]:
        query = args.get("node")
        if not isinstance(query, str):
            raise RemoteError("forget: 'node' must be a node ID, a prefix of one, or a name")
        names = candidates()
        try:
            node = resolve(query, names)
        except ValueError as exc:
            raise RemoteError(f"forget: {exc}") from None
        rec = replicator.forget(node, "asked by dhtfs swarm forget")
        return {"node": node, "name": names.get(node), "cut": replicator.membership.cut(node),
                "new": rec is not None}

    async def members(args: dict[str, Any]) -> dict[str, Any]:
        ms = replicator.membership
        now = _now()
        rows = []
        for node, name in sorted(candidates().items()):
            rec = ms.records.get(node)
            heard = ms.last_heard(node)
            rows.append([node, name, ms.is_forgotten(node), rec[0] if rec else 0,
                         rec[2] if rec else 0, None if heard is None else now - heard])
        return {"members": rows}

    return {"forget": forget, "members": members}
