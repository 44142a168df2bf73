"""The one wire codec: length-prefixed msgpack frames.

Frame on the wire: ``LEN(4, big-endian) ‖ msgpack(body)`` where ``LEN`` counts the body only and
never exceeds the connection's ``max_frame`` (checked before a byte of the body is read).

Bodies are msgpack arrays, first element the protocol version:

    [VERSION, HELLO,    listen_host: str, listen_port: int]        first frame, each direction
                                                                  (port 0: a client-only node)
    [VERSION, REQUEST,  request_id: int, method: str, args: map]
    [VERSION, RESPONSE, request_id: int, answer: map]
    [VERSION, ERROR,    request_id: int, message: str]

Invariants:
- ``decode_body`` either returns a well-typed ``Frame`` or raises ``ProtocolError``; it never
  lets a msgpack/structure exception escape, accepts no ext types and only str map keys at the
  top level of ``args``/``answer``;
- ``encode`` refuses (``ProtocolError``) to produce a frame larger than ``max_frame``, so a
  sender never emits what its peer must reject;
- ``encode_request_parts`` gives the same bytes as ``encode_request``, as a list of buffers:
  a top-level ``args`` value of ``BIG_BIN`` bytes or more (a block) is one of them, not copied
  (it must not change until the parts are consumed). ``encode_request``/``encode_response``
  join such parts once (one copy of the block, where ``packb`` and the length prefix made three).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from dhtfs.base.errors import ProtocolError

VERSION = 1
HELLO, REQUEST, RESPONSE, ERROR = 0, 1, 2, 3
KINDS = (HELLO, REQUEST, RESPONSE, ERROR)

LENGTH = struct.Struct(">I")
HEADER_BYTES = LENGTH.size
MAX_BLOCK_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_FRAME = MAX_BLOCK_BYTES + 64 * 1024
"""A little over the largest block, so one block plus its envelope always fits."""
MAX_REQUEST_ID = 2**63 - 1
MAX_METHOD_LEN = 64
MAX_MESSAGE_LEN = 4096
BIG_BIN = 64 * 1024
"""Top-level map values (``bytes``/``bytearray``) of this size or more are not copied by the
encoder (see ``encode_request_parts``). At least 65536, so msgpack sends them as bin 32."""
_BIN32 = struct.Struct(">BI")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. Fields not used by ``kind`` are left at their defaults."""

    kind: int
    request_id: int = 0
    method: str = ""
    payload: dict[str, Any] | None = None
    message: str = ""
    host: str = ""
    port: int = 0


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack ext type {code} not allowed")


def _pack(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode message: {exc}") from None


def _framed(body: bytes, max_frame: int) -> bytes:
    if len(body) > max_frame:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the limit of {max_frame}")
    return LENGTH.pack(len(body)) + body


def _is_big(value: Any) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) >= BIG_BIN


def _has_big(payload: Any) -> bool:
    if type(payload) is dict:
        for value in payload.values():
            if isinstance(value, bytes | bytearray) and len(value) >= BIG_BIN:
                return True
    return False


def _framed_parts(
    head: list[Any], payload: dict[str, Any], max_frame: int
) -> list[bytes | bytearray]:
    """``LEN ‖ msgpack([*head, payload])`` as buffers, the big values of ``payload`` (see
    ``BIG_BIN``) uncopied among them: byte for byte what ``packb`` would give, framed."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    parts: list[bytes | bytearray] = []
    try:
        packer.pack_array_header(len(head) + 1)
        for item in head:
            packer.pack(item)
        packer.pack_map_header(len(payload))
        for key, value in payload.items():
            packer.pack(key)
            if _is_big(value):
                size = len(value)
                if size >= 2**32:
                    raise ValueError("bin too large")
                parts.append(packer.bytes() + _BIN32.pack(0xC6, size))
                parts.append(value)
                packer.reset()
            else:
                packer.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode message: {exc}") from None
    rest = packer.bytes()
    if rest:
        parts.append(rest)
    body = sum(len(p) for p in parts)
    if body > max_frame:
        raise ProtocolError(f"frame of {body} bytes exceeds the limit of {max_frame}")
    parts[0] = LENGTH.pack(body) + parts[0]
    return parts



def encode_hello(host: str, port: int, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    return _framed(_pack([VERSION, HELLO, host, port]), max_frame)


def encode_request_parts(
    request_id: int, method: str, args: dict[str, Any], max_frame: int = DEFAULT_MAX_FRAME
) -> list[bytes | bytearray]:
    """``encode_request`` as a list of buffers (see the module invariants)."""
    if _has_big(args):
        return _framed_parts([VERSION, REQUEST, request_id, method], args, max_frame)
    return [_framed(_pack([VERSION, REQUEST, request_id, method, args]), max_frame)]


def encode_request(
    request_id: int, method: str, args: dict[str, Any], max_frame: int = DEFAULT_MAX_FRAME
) -> bytes:
    if _has_big(args):
        return b"".join(_framed_parts([VERSION, REQUEST, request_id, method], args, max_frame))
    return _framed(_pack([VERSION, REQUEST, request_id, method, args]), max_frame)


def encode_response_parts(
    request_id: int, answer: dict[str, Any], max_frame: int = DEFAULT_MAX_FRAME
) -> list[bytes | bytearray]:
    """``encode_response`` as a list of buffers (see the module invariants)."""
    if _has_big(answer):
        return _framed_parts([VERSION, RESPONSE, request_id], answer, max_frame)
    return [_framed(_pack([VERSION, RESPONSE, request_id, answer]), max_frame)]


def encode_response(
    request_id: int, answer: dict[str, Any], max_frame: int = DEFAULT_MAX_FRAME
) -> bytes:
    if _has_big(answer):
        return b"".join(_framed_parts([VERSION, RESPONSE, request_id], answer, max_frame))
    return _framed(_pack([VERSION, RESPONSE, request_id, answer]), max_frame)


def encode_error(request_id: int, message: str, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    return _framed(_pack([VERSION, ERROR, request_id, message[:MAX_MESSAGE_LEN]]), max_frame)


def encode(frame: Frame, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode any ``Frame`` (used by tests; the transport calls the specific encoders)."""
    if frame.kind == HELLO:
        return encode_hello(frame.host, frame.port, max_frame)
    if frame.kind == REQUEST:
        return encode_request(frame.request_id, frame.method, frame.payload or {}, max_frame)
    if frame.kind == RESPONSE:
        return encode_response(frame.request_id, frame.payload or {}, max_frame)
    if frame.kind == ERROR:
        return encode_error(frame.request_id, frame.message, max_frame)
    raise ProtocolError(f"unknown frame kind {frame.kind}")


def body_length(header: bytes | bytearray | memoryview, max_frame: int) -> int:
    """The body length announced by a 4-byte header; ProtocolError if over ``max_frame``."""
    (n,) = LENGTH.unpack(header)
    if n > max_frame:
        raise ProtocolError(f"announced frame of {n} bytes exceeds the limit of {max_frame}")
    if n == 0:
        raise ProtocolError("empty frame")
    return n


def _check_map(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a map, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ProtocolError(f"{what} keys must be strings")
    return value


def _check_id(value: Any) -> int:
    if type(value) is not int or not 0 < value <= MAX_REQUEST_ID:
        raise ProtocolError(f"bad request id {value!r:.40}")
    return value


def decode_body(body: bytes | bytearray | memoryview) -> Frame:
    """Parse and strictly validate one frame body. See the module invariants."""
    try:
        obj = msgpack.unpackb(
            body, raw=False, use_list=True, strict_map_key=False, ext_hook=_no_ext
        )
    except ProtocolError:
        raise
    except Exception as exc:  # ExtraData, FormatError, StackError, ValueError, UnicodeError…
        raise ProtocolError(f"undecodable frame ({type(exc).__name__})") from None
    if not isinstance(obj, list) or len(obj) < 2:
        raise ProtocolError("frame is not an array [version, kind, ...]")
    version, kind = obj[0], obj[1]
    if version != VERSION or type(version) is not int:
        raise ProtocolError(f"unsupported protocol version {version!r:.40}")
    if kind == HELLO and type(kind) is int:
        if len(obj) != 4 or not isinstance(obj[2], str) or type(obj[3]) is not int:
            raise ProtocolError("malformed HELLO")
        if not 0 <= obj[3] < 65536 or len(obj[2]) > 255:  # 0: a client-only node
            raise ProtocolError("HELLO address out of range")
        return Frame(HELLO, host=obj[2], port=obj[3])
    if kind == REQUEST and type(kind) is int:
        if len(obj) != 5 or not isinstance(obj[3], str):
            raise ProtocolError("malformed REQUEST")
        if not 0 < len(obj[3]) <= MAX_METHOD_LEN:
            raise ProtocolError("REQUEST method name out of range")
        return Frame(
            REQUEST, request_id=_check_id(obj[2]), method=obj[3],
            payload=_check_map(obj[4], "args"),
        )
    if kind == RESPONSE and type(kind) is int:
        if len(obj) != 4:
            raise ProtocolError("malformed RESPONSE")
        return Frame(RESPONSE, request_id=_check_id(obj[2]), payload=_check_map(obj[3], "answer"))
    if kind == ERROR and type(kind) is int:
        if len(obj) != 4 or not isinstance(obj[3], str):
            raise ProtocolError("malformed ERROR")
        return Frame(ERROR, request_id=_check_id(obj[2]), message=obj[3][:MAX_MESSAGE_LEN])
    raise ProtocolError(f"unknown frame kind {kind!r:.40}")


def decode(data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode one complete frame (header + body) with nothing after it."""
    if len(data) < HEADER_BYTES:
        raise ProtocolError("truncated frame header")
    n = body_length(data[:HEADER_BYTES], max_frame)
    if len(data) != HEADER_BYTES + n:
        raise ProtocolError("frame length does not match its header")
    return decode_body(memoryview(data)[HEADER_BYTES:])


DIRECT_BYTES = BIG_BIN
"""A frame body at least this long that has not arrived whole is received straight into a
buffer of its own (``FrameReader.direct_view``)."""


class FrameReader:
    """Reassembles frames from a byte stream fed in arbitrary pieces.

    ``feed(data)`` returns the complete frame bodies now available (memoryviews into an
    internal buffer: decode them before the next ``feed``, or copy them); a header announcing
    more than ``max_frame`` raises ``ProtocolError`` at once, before the body arrives.
    Each byte is copied at most twice (pieces are joined only once a frame is complete).

    Large bodies (``DIRECT_BYTES`` or more, not yet whole): ``direct_view()`` is then the part
    of the body's own buffer still to fill; a reader that writes into it (``TLSStream``
    decrypts into it) and calls ``filled(n)`` spares the pieces and their join. ``feed`` works
    the same meanwhile (it copies into that buffer).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._pieces: list[bytes] = []
        self._have = 0
        self._need: int | None = None  # total length (header + body) of the frame in progress
        self._body: bytearray | None = None  # a large body being filled in place
        self._filled = 0

    @property
    def pending_bytes(self) -> int:
        return self._have + self._filled

    def direct_view(self) -> memoryview | None:
        """Where the next bytes of a large body go, or None (no large body in progress)."""
        if self._body is None:
            return None
        return memoryview(self._body)[self._filled :]

    def filled(self, n: int) -> list[memoryview]:
        """``n`` bytes were written at ``direct_view()``; returns the body once whole."""
        assert self._body is not None and 0 <= n <= len(self._body) - self._filled
        self._filled += n
        if self._filled < len(self._body):
            return []
        body = self._body
        self._body, self._filled = None, 0
        return [memoryview(body)]

    def _go_direct(self, buf: bytes, pos: int) -> None:
        """The frame at ``pos`` of ``buf`` (its header read, ``_need`` set) is large and
        incomplete: move what arrived of its body into a buffer of its own."""
        assert self._need is not None
        have = memoryview(buf)[pos + HEADER_BYTES :]
        self._body = bytearray(self._need - HEADER_BYTES)
        self._body[: len(have)] = have
        self._filled = len(have)
        self._need = None
        self._pieces, self._have = [], 0

    def _joined(self) -> bytes:
        if len(self._pieces) != 1:
            self._pieces = [b"".join(self._pieces)]
        return self._pieces[0]

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        out: list[memoryview] = []
        if self._body is not None:
            view = self.direct_view()
            assert view is not None
            n = min(len(view), len(data))
            view[:n] = memoryview(data)[:n]
            out = self.filled(n)
            data = memoryview(data)[n:]
        if data:
            self._pieces.append(bytes(data) if not isinstance(data, bytes) else data)
            self._have += len(data)
        if self._need is None:
            if self._have < HEADER_BYTES:
                return out
            self._need = HEADER_BYTES + body_length(self._joined()[:HEADER_BYTES], self.max_frame)
        if self._have < self._need:
            if self._need - HEADER_BYTES >= DIRECT_BYTES:
                self._go_direct(self._joined(), 0)
            return out
        buf = self._joined()
        view = memoryview(buf)
        pos = 0
        while True:
            assert self._need is not None
            end = pos + self._need
            out.append(view[pos + HEADER_BYTES : end])
            pos = end
            self._need = None
            if len(buf) - pos < HEADER_BYTES:
                break
            self._need = HEADER_BYTES + body_length(view[pos : pos + HEADER_BYTES], self.max_frame)
            if len(buf) - pos < self._need:
                if self._need - HEADER_BYTES >= DIRECT_BYTES:
                    self._go_direct(buf, pos)
                    return out
                break
        rest = buf[pos:]
        self._pieces = [rest] if rest else []
        self._have = len(rest)
        return out
