"""The DHT's RPC messages: method names, argument and answer schemas, and strict validation.

Every message is a msgpack-able dict. IDs are raw 32-byte ``bytes``; a contact on the wire is
the list ``[node_id: bytes(32), host: str, port: int]``. The caller of every request is the
*authenticated* contact handed to the handler by the network (never a field of the message), so
a node announces itself as a provider. The optional ``replicas`` of ADD_PROVIDER (at most
``MAX_REPLICA_HINTS``) names the nodes that just acknowledged a PUT_CHUNK of that key from the
caller: they are recorded as providers too, as hints — harmless if false, since every fetched
block is hash-verified and a peer serving bad bytes is penalized.

Names: the unit a node stores is a *block* (``docs/architecture.md``: content-addressed, its
ID the SHA-256 of its bytes, sealed only at rest). The constants ``PUT_BLOCK`` and
``GET_BLOCK`` name the methods that store and fetch one, but their strings on the wire keep
the protocol's first spelling, ``"PUT_CHUNK"`` and ``"GET_CHUNK"`` (the wire format is
frozen): the table below, and the fault switches, use the wire strings.

=============== ================================== ==========================================
method          args                               answer
=============== ================================== ==========================================
PING            {}                                 {}
FIND_NODE       {"target": id}                     {"contacts": [contact, ...]}  (≤ k closest)
FIND_PROVIDERS  {"key": id, "inline"?: int}         {"providers": [contact, ...],
                                                    "contacts": [contact, ...],
                                                    "data"?: bytes}  (see below)
ADD_PROVIDER    {"key": id, "ttl": float,          {"ok": True}   (provider = the caller)
                 "replicas"?: [contact, ...],
                 "data"?: bytes}
PUT_CHUNK       {"id": id, "data": bytes}          {"stored": bool}  (False: already had it)
GET_CHUNK       {"id": id}                         {"data": bytes | None}  (None: not here)
HOLD            {"ids": [id, ...]}                 {"held": int}  (how many are stored here)
=============== ================================== ==========================================

HOLD (at most ``MAX_HOLD_IDS`` IDs) renews the blocks' grace period against collection
(``dhtfs.blocks.reclaim``), as a PUT_CHUNK of a block already held does: a writer sends it for
blocks of files still open, which no file version references yet.

ADD_PROVIDER's optional ``data`` (at most ``MAX_INLINE_BYTES``) is the block itself, sent
with the records of small blocks: the receiver may keep it as a cached copy (if it is within
its own size limit), after checking it hashes to ``key``; bytes that do not are an error.

FIND_PROVIDERS with ``inline`` > 0 is Kademlia's FIND_VALUE for small blocks: a node that holds
the block and whose plaintext is at most ``min(inline, MAX_INLINE_BYTES)`` bytes answers with
the bytes in ``data`` (and itself among the providers, no contacts), so a read of a small block
ends at the first holder its lookup reaches, with no GET_CHUNK round trip. The caller verifies
``data`` against the key like any GET_CHUNK answer.

Error codes: an ERROR answer's message may begin with a code, ``"CODE: text"`` (the wire is
unchanged: a peer that knows no codes reads a plain message). ``NO_SPACE`` (``ENOSPC``): the
callee cannot store the block of a PUT_CHUNK, its disk being full (or at the margin it keeps
for its own metadata); the caller places the block on the next closest node instead and
leaves the full one alone for a while (``dhtfs.dht.node``). ``error_code`` reads the code
of a ``RemoteError``.

Limits: at most ``MAX_CONTACTS`` contacts per answer, block data at most ``MAX_BLOCK_BYTES``,
provider TTL in (0, ``MAX_PROVIDER_TTL``]. Anything else — a missing or extra-typed field, a
wrong length, an unknown method — is rejected with ``RemoteError`` by the handler, and an
answer that does not match its schema raises ``ProtocolError`` on the calling side.
"""

from __future__ import annotations

from typing import Any

from dhtfs.base.errors import ProtocolError, RemoteError
from dhtfs.base.ids import ID_BYTES
from dhtfs.net.network import Contact

PING = "PING"
FIND_NODE = "FIND_NODE"
FIND_PROVIDERS = "FIND_PROVIDERS"
ADD_PROVIDER = "ADD_PROVIDER"
PUT_BLOCK = "PUT_CHUNK"
GET_BLOCK = "GET_CHUNK"
HOLD = "HOLD"
METHODS = frozenset({PING, FIND_NODE, FIND_PROVIDERS, ADD_PROVIDER, PUT_BLOCK, GET_BLOCK, HOLD})
QUICK_METHODS = frozenset({PING, FIND_NODE, FIND_PROVIDERS, ADD_PROVIDER})
"""Answered from memory or a small local read (inline data is at most ``MAX_INLINE_BYTES``):
the transport runs them on the connection's reader task (``Transport.inline_methods``)."""

NO_SPACE = "ENOSPC"
ERROR_CODES = frozenset({NO_SPACE})

MAX_CONTACTS = 64
MAX_REPLICA_HINTS = 8
MAX_BLOCK_BYTES = 64 * 1024 * 1024
MAX_INLINE_BYTES = 64 * 1024
MAX_HOLD_IDS = 4096
MAX_PROVIDER_TTL = 7 * 24 * 3600.0
MAX_HOST_LEN = 255


# -- error codes -------------------------------------------------------------------------------


def coded(code: str, message: str) -> RemoteError:
    """A ``RemoteError`` whose ERROR answer carries ``code`` (one of ``ERROR_CODES``)."""
    return RemoteError(f"{code}: {message}")


def error_code(exc: BaseException) -> str | None:
    """The code of an ERROR answer (``RemoteError``), or None. The calling side's message is
    ``"<peer>: CODE: text"``, the answering side's ``"CODE: text"``."""
    for part in str(exc).split(": ", 2)[:2]:
        if part in ERROR_CODES:
            return part
    return None


# -- encoding ----------------------------------------------------------------------------------


def contact_to_wire(c: Contact) -> list[Any]:
    return [c.node_id, c.host, c.port]


def contacts_to_wire(cs: list[Contact]) -> list[list[Any]]:
    return [[c.node_id, c.host, c.port] for c in cs]


_contact_cache: dict[tuple[bytes, str, int], Contact] = {}
_CONTACT_CACHE_MAX = 8192


def contact_from_wire(v: Any) -> Contact:
    """Decode one contact; ``ValueError`` when it is malformed.

    Recently decoded contacts are interned (a bounded cache keyed by the validated triple):
    lookups decode the same contacts over and over, and ``Contact`` objects are immutable.
    """
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise ValueError("contact must be [node_id, host, port]")
    nid, host, port = v
    if type(nid) is not bytes or len(nid) != ID_BYTES:
        raise ValueError("contact node id must be 32 bytes")
    if type(host) is not str or not host or len(host) > MAX_HOST_LEN:
        raise ValueError("contact host must be a non-empty string")
    if type(port) is not int or not 0 <= port <= 65535:
        raise ValueError("contact port must be an int in 0..65535")
    key = (nid, host, port)
    c = _contact_cache.get(key)
    if c is None:
        if len(_contact_cache) >= _CONTACT_CACHE_MAX:
            _contact_cache.clear()
        c = _contact_cache[key] = Contact(nid, host, port)
    return c


# -- validation of requests (far side: raise RemoteError) ---------------------------------------


def _field(args: Any, name: str, method: str) -> Any:
    if not isinstance(args, dict):
        raise RemoteError(f"{method}: arguments must be a map")
    if name not in args:
        raise RemoteError(f"{method}: missing argument {name!r}")
    return args[name]


def req_id(args: Any, name: str, method: str) -> bytes:
    """A 32-byte ID argument."""
    v = _field(args, name, method)
    if not isinstance(v, bytes) or len(v) != ID_BYTES:
        raise RemoteError(f"{method}: {name!r} must be {ID_BYTES} bytes")
    return v


def req_ids(args: Any, name: str, method: str, limit: int) -> list[bytes]:
    """A list of at most ``limit`` 32-byte IDs."""
    v = _field(args, name, method)
    if not isinstance(v, list) or len(v) > limit:
        raise RemoteError(f"{method}: {name!r} must be a list of at most {limit} ids")
    for item in v:
        if not isinstance(item, bytes) or len(item) != ID_BYTES:
            raise RemoteError(f"{method}: each of {name!r} must be {ID_BYTES} bytes")
    return v


def req_data(args: Any, method: str) -> bytes:
    v = _field(args, "data", method)
    if not isinstance(v, (bytes, bytearray, memoryview)):
        raise RemoteError(f"{method}: 'data' must be bytes")
    if len(v) > MAX_BLOCK_BYTES:
        raise RemoteError(f"{method}: block larger than {MAX_BLOCK_BYTES} bytes")
    return bytes(v)


def req_ttl(args: Any, method: str) -> float:
    v = _field(args, "ttl", method)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_PROVIDER_TTL:
        raise RemoteError(f"{method}: 'ttl' must be a number in (0, {MAX_PROVIDER_TTL:g}]")
    return float(v)


def req_inline(args: Any, method: str) -> int:
    """The optional ``inline`` byte budget of FIND_PROVIDERS (0 when absent), capped at
    ``MAX_INLINE_BYTES``."""
    v = args.get("inline", 0)
    if type(v) is not int or v < 0:
        raise RemoteError(f"{method}: 'inline' must be a non-negative int")
    return min(v, MAX_INLINE_BYTES)


def req_spread(args: Any, method: str) -> bytes | None:
    """The optional ``data`` of ADD_PROVIDER (None when absent), at most
    ``MAX_INLINE_BYTES``; the caller checks its hash."""
    v = args.get("data")
    if v is None:
        return None
    if type(v) is not bytes or len(v) > MAX_INLINE_BYTES:
        raise RemoteError(f"{method}: 'data' must be bytes of at most {MAX_INLINE_BYTES}")
    return v


def req_replicas(args: Any, method: str) -> list[Contact]:
    """The optional ``replicas`` list of ADD_PROVIDER (empty when absent)."""
    v = args.get("replicas", [])
    if not isinstance(v, list) or len(v) > MAX_REPLICA_HINTS:
        raise RemoteError(f"{method}: 'replicas' must be a list of at most {MAX_REPLICA_HINTS}")
    try:
        return [contact_from_wire(x) for x in v]
    except ValueError as e:
        raise RemoteError(f"{method}: bad replica contact: {e}") from None


# -- validation of answers (our side: raise ProtocolError) --------------------------------------


def ans_contacts(answer: Any, name: str, method: str) -> list[Contact]:
    if not isinstance(answer, dict):
        raise ProtocolError(f"{method}: answer must be a map")
    v = answer.get(name)
    if not isinstance(v, list) or len(v) > MAX_CONTACTS:
        raise ProtocolError(f"{method}: {name!r} must be a list of at most {MAX_CONTACTS}")
    try:
        return [contact_from_wire(x) for x in v]
    except ValueError as e:
        raise ProtocolError(f"{method}: bad contact: {e}") from None


def ans_data(answer: Any, method: str) -> bytes | None:
    if not isinstance(answer, dict) or "data" not in answer:
        raise ProtocolError(f"{method}: answer must be a map with 'data'")
    v = answer["data"]
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    raise ProtocolError(f"{method}: 'data' must be bytes or nil")


def ans_inline(answer: Any, method: str, limit: int) -> bytes | None:
    """The optional inline ``data`` of a FIND_PROVIDERS answer (None when absent); bytes over
    the ``limit`` the caller asked for are a protocol error."""
    v = answer.get("data") if isinstance(answer, dict) else None
    if v is None:
        return None
    if not isinstance(v, bytes) or len(v) > limit:
        raise ProtocolError(f"{method}: inline 'data' must be bytes of at most {limit}")
    return v
