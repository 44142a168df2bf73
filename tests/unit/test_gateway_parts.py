"""The gateway's pure parts: Range parsing and multipart framing, request targets decoded
without leaving the tree, validators and preconditions, listings escaping names."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtfs.base.config import Config, apply_options
from dhtfs.base.errors import ConfigError
from dhtfs.gateway import paths
from dhtfs.gateway.ranges import MAX_RANGES, Multipart, Unsatisfiable, parse_range
from dhtfs.gateway.validators import evaluate, http_date, parse_date, range_applies

# -- ranges ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "size", "want"), [
    (b"bytes=0-9", 100, [(0, 9)]),
    (b"bytes=90-", 100, [(90, 99)]),
    (b"bytes=-10", 100, [(90, 99)]),
    (b"bytes=-1000", 100, [(0, 99)]),
    (b"bytes=95-200", 100, [(95, 99)]),
    (b"bytes=0-0,-1", 100, [(0, 0), (99, 99)]),
    (b"bytes= 1-2 , 5-6", 100, [(1, 2), (5, 6)]),
    (b"bytes=0-9,200-300", 100, [(0, 9)]),  # the unsatisfiable one is dropped
    (b"BYTES=0-1", 100, [(0, 1)]),
    (b"items=0-9", 100, None),  # another unit: ignored
    (b"bytes=9-0", 100, None),  # invalid: the whole header is ignored
    (b"bytes=a-b", 100, None),
    (b"bytes=", 100, None),
    (b"bytes=-", 100, None),
    (b"bytes=0-1" + b",0-1" * MAX_RANGES, 100, None),  # too many: the whole file
])
def test_parse_range(header: bytes, size: int, want: list | None) -> None:
    assert parse_range(header, size) == want


@pytest.mark.parametrize(("header", "size"), [
    (b"bytes=100-", 100), (b"bytes=100-200", 100), (b"bytes=-0", 100), (b"bytes=-5", 0),
    (b"bytes=0-", 0), (b"bytes=150-160,200-", 100),
])
def test_unsatisfiable(header: bytes, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


@given(st.binary(max_size=200), st.integers(0, 1 << 40))
def test_parse_range_never_fails_otherwise(header: bytes, size: int) -> None:
    try:
        got = parse_range(header, size)
    except Unsatisfiable:
        return
    if got is not None:
        assert all(0 <= f <= last < size for f, last in got)


@given(st.lists(st.tuples(st.integers(0, 999), st.integers(0, 999)), min_size=2, max_size=5))
def test_multipart_length_is_exact(pairs: list[tuple[int, int]]) -> None:
    ranges = [(min(a, b), max(a, b)) for a, b in pairs]
    data = bytes(range(256)) * 4
    mp = Multipart.build(ranges, 1000, b"text/plain")
    body = b"".join(h + data[f : last + 1] for h, (f, last) in zip(mp.heads, ranges,
                                                                    strict=True)) + mp.tail
    assert len(body) == mp.length
    assert mp.boundary not in data


# -- paths ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("target", "names"), [
    (b"/", []),
    (b"/a/b", [b"a", b"b"]),
    (b"/a//b/./", [b"a", b"b"]),
    (b"/with%20space", [b"with space"]),
    (b"/caf%C3%A9?x=1", ["café".encode()]),
    (b"/%2E", []),
])
def test_split_target(target: bytes, names: list[bytes]) -> None:
    assert paths.split_target(target)[0] == names


@pytest.mark.parametrize("target", [
    b"/../etc/passwd", b"/a/../../x", b"/%2e%2e/x", b"/.%2E/x", b"/a%2fb", b"/a%2F..%2Fb",
    b"/nul%00", b"/bad%zz", b"/bad%4", b"relative", b"http://host/x", b"*",
    b"/" + b"x" * 256,
])
def test_split_target_refuses(target: bytes) -> None:
    with pytest.raises(paths.BadTarget):
        paths.split_target(target)


@given(st.lists(st.binary(min_size=1, max_size=30).filter(
    lambda n: n not in (b".", b"..") and b"/" not in n and b"\0" not in n), max_size=4))
def test_quote_path_round_trips(names: list[bytes]) -> None:
    assert paths.split_target(paths.quote_path(names).encode())[0] == names


@given(st.binary(max_size=300))
def test_split_target_never_yields_an_escape(target: bytes) -> None:
    try:
        names, _ = paths.split_target(target)
    except paths.BadTarget:
        return
    assert all(n not in (b"", b".", b"..") and b"/" not in n and b"\0" not in n for n in names)


# -- validators -------------------------------------------------------------------------------

ETAG = b'"abc-1"'


@pytest.mark.parametrize(("headers", "want"), [
    ({}, None),
    ({b"if-none-match": ETAG}, 304),
    ({b"if-none-match": b'"x", W/"abc-1"'}, 304),  # weak comparison
    ({b"if-none-match": b"*"}, 304),
    ({b"if-none-match": b'"old"'}, None),
    ({b"if-modified-since": http_date(1000)}, 304),
    ({b"if-modified-since": http_date(999)}, None),
    ({b"if-none-match": b'"old"', b"if-modified-since": http_date(2000)}, None),
    ({b"if-match": b'"old"'}, 412),
    ({b"if-match": ETAG}, None),
    ({b"if-unmodified-since": http_date(999)}, 412),
    ({b"if-modified-since": b"not a date"}, None),
])
def test_preconditions(headers: dict[bytes, bytes], want: int | None) -> None:
    assert evaluate(headers, ETAG, 1000) == want


def test_if_range() -> None:
    assert range_applies({}, ETAG, 5)
    assert range_applies({b"if-range": ETAG}, ETAG, 5)
    assert not range_applies({b"if-range": b'"old"'}, ETAG, 5)
    assert not range_applies({b"if-range": b'W/"abc-1"'}, ETAG, 5)  # weak never matches
    assert range_applies({b"if-range": http_date(5)}, ETAG, 5)
    assert not range_applies({b"if-range": http_date(4)}, ETAG, 5)
    assert parse_date(http_date(1234567)) == 1234567


# -- the option -------------------------------------------------------------------------------

def test_http_option() -> None:
    assert apply_options(Config(), {"http": "127.0.0.1:0"}).http == "127.0.0.1:0"
    assert apply_options(Config(), {"http": "[::1]:8080"}).http == "[::1]:8080"
    assert apply_options(Config(), {"http": "off"}).http == ""
    assert apply_options(Config(), {"http": "0.0.0.0:8080"}).http == "0.0.0.0:8080"  # TLS
    with pytest.raises(ConfigError, match="go together"):
        apply_options(Config(), {"http": "0.0.0.0:8080", "http_cert": "/x.pem"})
    with pytest.raises(ConfigError, match="IP address and a port"):
        apply_options(Config(), {"http": "nonsense"})
    with pytest.raises(ConfigError, match=r"0\.\.65535"):
        apply_options(Config(), {"http": "127.0.0.1:70000"})


def test_json_of_listing_entry_names_are_valid_json() -> None:
    # undecodable bytes are replaced in "name", kept exactly in "href"
    from dhtfs.gateway.paths import quote_path
    assert json.loads(json.dumps({"href": quote_path([b"\xff\xfe"])}))["href"] == "/%FF%FE"
