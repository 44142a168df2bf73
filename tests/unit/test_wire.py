"""Unit tests of the wire codec: round trips (hypothesis), strict rejection, size limits."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtfs.base.errors import ProtocolError
from dhtfs.net import wire

leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(
    allow_nan=False
) | st.text(max_size=20) | st.binary(max_size=64)
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
maps = st.dictionaries(st.text(max_size=12), values, max_size=6)
rids = st.integers(1, wire.MAX_REQUEST_ID)

frames = st.one_of(
    st.builds(lambda h, p: wire.Frame(wire.HELLO, host=h, port=p),
              st.text(max_size=40), st.integers(0, 65535)),
    st.builds(lambda r, m, a: wire.Frame(wire.REQUEST, request_id=r, method=m, payload=a),
              rids, st.text(min_size=1, max_size=wire.MAX_METHOD_LEN), maps),
    st.builds(lambda r, a: wire.Frame(wire.RESPONSE, request_id=r, payload=a), rids, maps),
    st.builds(lambda r, m: wire.Frame(wire.ERROR, request_id=r, message=m),
              rids, st.text(max_size=200)),
)


@given(frames)
def test_round_trip(frame: wire.Frame) -> None:
    assert wire.decode(wire.encode(frame)) == frame


@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_reader_reassembles_any_split(fs: list[wire.Frame], data: st.DataObject) -> None:
    stream = b"".join(wire.encode(f) for f in fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = wire.FrameReader()
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got += reader.feed(stream[prev:cut])
        prev = cut
    assert [wire.decode_body(b) for b in got] == fs
    assert reader.pending_bytes == 0


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_is_rejected_or_valid(body: bytes) -> None:
    """Random bodies either decode to a valid Frame or raise ProtocolError; nothing else."""
    try:
        frame = wire.decode_body(body)
    except ProtocolError:
        return
    assert frame.kind in wire.KINDS


@settings(max_examples=300)
@given(values)
def test_wellformed_msgpack_wrong_shape(obj: object) -> None:
    try:
        frame = wire.decode_body(msgpack.packb(obj, use_bin_type=True))
    except ProtocolError:
        return
    assert wire.decode_body(wire.encode(frame)[wire.HEADER_BYTES:]) == frame


@pytest.mark.parametrize(
    "obj",
    [
        [2, wire.REQUEST, 1, "PING", {}],          # wrong version
        [True, wire.REQUEST, 1, "PING", {}],       # bool is not a version
        [1, 9, 1, "PING", {}],                     # unknown kind
        [1, wire.REQUEST, 0, "PING", {}],          # request id 0
        [1, wire.REQUEST, -5, "PING", {}],
        [1, wire.REQUEST, True, "PING", {}],
        [1, wire.REQUEST, 1, "", {}],              # empty method
        [1, wire.REQUEST, 1, "x" * 65, {}],
        [1, wire.REQUEST, 1, "PING", []],          # args not a map
        [1, wire.REQUEST, 1, "PING", {1: 2}],      # non-str key
        [1, wire.REQUEST, 1, "PING"],              # too short
        [1, wire.RESPONSE, 1, {}, "extra"],
        [1, wire.ERROR, 1, b"bytes-not-str"],
        [1, wire.HELLO, "h", -1],                  # a negative port (0: a client-only node)
        [1, wire.HELLO, "h", 70000],
        {"v": 1},
        "just a string",
    ],
)
def test_rejects_bad_structure(obj: object) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_body(msgpack.packb(obj, use_bin_type=True))


def test_rejects_ext_trailing_and_truncated() -> None:
    ext = msgpack.packb([1, wire.RESPONSE, 1, {"a": msgpack.ExtType(5, b"x")}])
    with pytest.raises(ProtocolError, match="ext"):
        wire.decode_body(ext)
    good = msgpack.packb([1, wire.RESPONSE, 1, {}])
    with pytest.raises(ProtocolError):
        wire.decode_body(good + b"\x00")
    with pytest.raises(ProtocolError):
        wire.decode_body(good[:-1])
    with pytest.raises(ProtocolError):
        wire.decode_body(b"\x91" * 100_000)  # nesting bomb


def test_size_limit_is_a_parameter() -> None:
    big = {"data": b"x" * 1000}
    assert wire.decode(wire.encode_response(1, big, max_frame=2000), max_frame=2000)
    with pytest.raises(ProtocolError, match="exceeds"):
        wire.encode_response(1, big, max_frame=500)
    reader = wire.FrameReader(max_frame=500)
    with pytest.raises(ProtocolError, match="exceeds"):
        reader.feed(wire.LENGTH.pack(501))  # refused from the header alone
    with pytest.raises(ProtocolError, match="empty"):
        wire.FrameReader().feed(wire.LENGTH.pack(0))
    assert wire.DEFAULT_MAX_FRAME > wire.MAX_BLOCK_BYTES


def test_chunk_sized_frame() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    frame = wire.decode(wire.encode_response(7, {"data": data}))
    assert frame.payload == {"data": data}


@settings(max_examples=50)
@given(maps, st.lists(st.sampled_from([wire.BIG_BIN - 1, wire.BIG_BIN, 300_000]), max_size=3),
       st.booleans())
def test_parts_are_the_frame_unjoined(args: dict, sizes: list[int], mutable: bool) -> None:
    """Large bins travel as their own, uncopied parts; joined, the parts are the frame."""
    args = dict(args)
    for i, size in enumerate(sizes):
        blob = bytes([i]) * size
        args[f"big{i}"] = bytearray(blob) if mutable else blob
    body = msgpack.packb([wire.VERSION, wire.REQUEST, 3, "M", args], use_bin_type=True)
    want = wire.LENGTH.pack(len(body)) + body
    parts = wire.encode_request_parts(3, "M", args)
    assert b"".join(parts) == want == wire.encode_request(3, "M", args)
    bigs = [v for v in args.values() if isinstance(v, bytes | bytearray) and len(v) >= wire.BIG_BIN]
    assert sum(any(p is v for p in parts) for v in bigs) == len(bigs)
    resp = wire.encode_response_parts(3, args)
    assert b"".join(resp) == wire.encode_response(3, args)
    assert wire.decode(wire.encode_response(3, args)).payload == {
        k: bytes(v) if isinstance(v, bytearray) else v for k, v in args.items()}
    with pytest.raises(ProtocolError, match="exceeds"):
        wire.encode_request_parts(3, "M", {**args, "x": b"x" * wire.BIG_BIN},
                                  max_frame=wire.BIG_BIN)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0, 100, wire.DIRECT_BYTES - 40, wire.DIRECT_BYTES, 200_000]),
                min_size=1, max_size=5), st.data())
def test_reader_fills_large_bodies_in_place(sizes: list[int], data: st.DataObject) -> None:
    """Frames with large bodies, the stream cut anywhere, read as ``FrameStream`` does: into
    ``direct_view`` while a large body is in progress (a receive there gets at most what the
    view holds), by ``feed`` otherwise; the frames come out whole and in order."""
    fs = [wire.Frame(wire.RESPONSE, request_id=i + 1, payload={"data": bytes([i]) * n})
          for i, n in enumerate(sizes)]
    stream = memoryview(b"".join(wire.encode(f) for f in fs))
    reader = wire.FrameReader()
    got: list[memoryview] = []
    pos = 0
    while pos < len(stream):
        want = data.draw(st.integers(1, 70_000))
        view = reader.direct_view()
        if view is not None:
            n = min(want, len(view), len(stream) - pos)
            view[:n] = stream[pos : pos + n]
            got += reader.filled(n)
        else:
            n = min(want, len(stream) - pos)
            got += reader.feed(stream[pos : pos + n])
        pos += n
    assert [wire.decode_body(b) for b in got] == fs
    assert reader.pending_bytes == 0 and reader.direct_view() is None
