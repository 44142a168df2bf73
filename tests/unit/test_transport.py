"""The TLS transport between in-process nodes on 127.0.0.x: auth, multiplexing, robustness."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from dhtfs.base.errors import AuthError, CallTimeout, PeerUnreachable, ProtocolError, RemoteError
from dhtfs.net import wire
from dhtfs.net.network import Contact, Message
from dhtfs.net.transport import Transport, tls_context
from dhtfs.trust.pki import Identity
from testkit.nodehelpers import (
    IdentityFactory,
    draw_garbage,
    make_identity,
    make_self_signed,
    raw_session,
    rejected,
)
from testkit.wait import wait_until_async


async def echo(caller: Contact, method: str, args: Message) -> Message:
    if method == "boom":
        raise ValueError("kaboom")
    if method == "refuse":
        raise RemoteError("no thanks")
    if method == "sleep":
        await trio.sleep(args["s"])
    if method == "bad":
        return "not a dict"  # type: ignore[return-value]
    return {"method": method, "args": args, "caller": caller.node_id, "port": caller.port}


@asynccontextmanager
async def serving(ident: Identity, host: str = "127.0.0.1", **kw) -> AsyncIterator[Transport]:
    t = Transport(ident, host, 0, handler=echo, **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(t.serve)
        yield t
        nursery.cancel_scope.cancel()


async def test_call_round_trip_and_authenticated_caller(identity: IdentityFactory) -> None:
    async with serving(identity(), "127.0.0.2") as a, serving(identity(), "127.0.0.3") as b:
        assert a.local.port != 0 and a.local.host == "127.0.0.2"
        answer = await b.call(a.local, "PING", {"x": b"\x00" * 3}, timeout=5)
        assert answer == {"method": "PING", "args": {"x": b"\x00" * 3},
                          "caller": b.identity.node_id, "port": b.local.port}
        # the same connection serves the other direction
        back = await a.call(b.local, "PONG", {}, timeout=5)
        assert back["caller"] == a.identity.node_id
        assert len(a.connected_peers()) == 1 and len(b.connected_peers()) == 1
        assert a.connected_peers()[0] == b.local


async def test_wildcard_listener_is_seen_at_its_source_address(
    identity: IdentityFactory,
) -> None:
    async with serving(identity(), "127.0.0.2") as a, serving(identity(), "0.0.0.0") as b:
        answer = await b.call(a.local, "PING", {}, timeout=5)
        assert answer["caller"] == b.identity.node_id and answer["port"] == b.local.port
        assert a.connected_peers()[0].host == "127.0.0.1"  # the source address b dialed from


async def test_contact_at_learns_node_id(identity: IdentityFactory) -> None:
    async with serving(identity()) as a, serving(identity()) as b:
        c = await b.contact_at(a.local.host, a.local.port, timeout=5)
        assert c == a.local


async def test_multiplexed_concurrent_calls(identity: IdentityFactory) -> None:
    async with serving(identity()) as a, serving(identity()) as b:
        results: dict[int, Message] = {}

        async def one(i: int) -> None:
            results[i] = await b.call(a.local, "sleep", {"s": (i % 5) * 0.01, "i": i}, timeout=10)

        async with trio.open_nursery() as n:
            for i in range(100):
                n.start_soon(one, i)
        assert all(results[i]["args"]["i"] == i for i in range(100))
        assert len(b.connected_peers()) == 1


async def test_handler_errors_become_remote_errors(identity: IdentityFactory) -> None:
    async with serving(identity()) as a, serving(identity()) as b:
        with pytest.raises(RemoteError, match="kaboom"):
            await b.call(a.local, "boom", {}, timeout=5)
        with pytest.raises(RemoteError, match="no thanks"):
            await b.call(a.local, "refuse", {}, timeout=5)
        with pytest.raises(RemoteError, match="not a dict"):
            await b.call(a.local, "bad", {}, timeout=5)
        assert (await b.call(a.local, "ok", {}, timeout=5))["method"] == "ok"


async def test_timeout_leaves_connection_usable(identity: IdentityFactory) -> None:
    async with serving(identity()) as a, serving(identity()) as b:
        t0 = trio.current_time()
        with pytest.raises(CallTimeout):
            await b.call(a.local, "sleep", {"s": 0.5}, timeout=0.1)
        assert trio.current_time() - t0 < 0.4
        assert (await b.call(a.local, "ok", {}, timeout=5))["method"] == "ok"
        await trio.sleep(0.5)  # let the late answer arrive: it must be ignored, not fatal
        assert (await b.call(a.local, "ok2", {}, timeout=5))["method"] == "ok2"
        assert a.protocol_errors == 0 and b.protocol_errors == 0


async def test_foreign_and_self_signed_refused(
    identity: IdentityFactory, foreign_ca: Path, swarm_ca: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dhtfs.net.transport")
    # a foreign node trusts our CA (so it would accept us) but has a cert from another CA
    foreign = make_identity(foreign_ca, tmp_path, trust=swarm_ca / "ca.crt")
    selfie = make_self_signed(tmp_path, swarm_ca / "ca.crt")
    async with serving(identity()) as a:
        for intruder in (foreign, selfie):
            async with serving(intruder) as x:
                with pytest.raises(AuthError):
                    await x.call(a.local, "PING", {}, timeout=5)
        assert a.refusals == 2
        assert sum("refused peer" in r.getMessage() for r in caplog.records) == 2
        # and in the other direction: we refuse a server with a foreign certificate
        async with serving(foreign) as x:
            with pytest.raises(AuthError):
                await a.contact_at(x.local.host, x.local.port, timeout=5)
        # still serving the swarm
        async with serving(identity()) as b:
            assert (await b.call(a.local, "ok", {}, timeout=5))["method"] == "ok"


async def test_node_id_mismatch(identity: IdentityFactory) -> None:
    async with serving(identity()) as a, serving(identity()) as b:
        liar = Contact(bytes(32), a.local.host, a.local.port)
        with pytest.raises(AuthError, match="node id mismatch"):
            await b.call(liar, "PING", {}, timeout=5)


async def test_silent_peer_times_out(identity: IdentityFactory) -> None:
    async with serving(identity()) as b:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.4"))[0]
        port = listener.socket.getsockname()[1]
        accepted = []
        async with trio.open_nursery() as n:
            async def accept_forever() -> None:
                while True:
                    accepted.append(await listener.accept())  # and never answer
            n.start_soon(accept_forever)
            t0 = trio.current_time()
            with pytest.raises(CallTimeout):
                await b.call(Contact(bytes(32), "127.0.0.4", port), "PING", {}, timeout=0.3)
            with pytest.raises(CallTimeout):
                await b.contact_at("127.0.0.4", port, timeout=0.3)
            assert trio.current_time() - t0 < 1.0
            n.cancel_scope.cancel()
        for s in accepted:
            await s.aclose()
        await listener.aclose()


async def test_unreachable(identity: IdentityFactory) -> None:
    async with serving(identity()) as b:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.5"))[0]
        port = listener.socket.getsockname()[1]
        await listener.aclose()
        with pytest.raises(PeerUnreachable):
            await b.call(Contact(bytes(32), "127.0.0.5", port), "PING", {}, timeout=3)


@pytest.mark.slow
async def test_malformed_frames_leave_server_serving(identity: IdentityFactory) -> None:
    client_ident = identity()
    async with serving(identity()) as a, serving(identity()) as b:
        payloads = draw_garbage(40)
        hello = wire.encode_hello("127.0.0.1", 9)
        for p in payloads:
            await raw_session(client_ident, a.local, hello + p, tls=True)   # after auth
            await raw_session(client_ident, a.local, p, tls=False)          # pre-handshake
        # an answer to a request never made, and a second HELLO, are unexpected frames
        await raw_session(client_ident, a.local, hello + wire.encode_response(99, {}), tls=True)
        await raw_session(client_ident, a.local, hello + hello, tls=True)
        # garbage inside the first frame counts as a refusal, later garbage as a protocol error
        expected = sum(rejected(hello + p) for p in payloads) + 2
        assert a.protocol_errors + a.refusals + a.aborted >= expected + len(payloads)
        assert (await b.call(a.local, "ok", {}, timeout=5))["method"] == "ok"


async def test_peer_sending_garbage_fails_pending_calls(identity: IdentityFactory) -> None:
    """A server answering with garbage: our pending call fails fast, nothing else breaks."""
    server_ident = identity()
    async with serving(identity()) as b:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.6"))[0]
        port = listener.socket.getsockname()[1]

        async def evil() -> None:
            tcp = await listener.accept()
            tls = trio.SSLStream(tcp, tls_context(server_ident, server_side=True),
                                 server_side=True)
            await tls.do_handshake()
            await tls.receive_some(65536)  # their HELLO
            await tls.send_all(wire.encode_hello("127.0.0.6", port))
            await tls.receive_some(65536)  # the request
            await tls.send_all(wire.LENGTH.pack(5) + b"\xc1\xc1\xc1\xc1\xc1")
            await trio.sleep_forever()

        async with trio.open_nursery() as n:
            n.start_soon(evil)
            peer = Contact(server_ident.node_id, "127.0.0.6", port)
            with pytest.raises(ProtocolError):
                await b.call(peer, "PING", {}, timeout=5)
            n.cancel_scope.cancel()
        await listener.aclose()


async def test_first_frame_of_a_dialed_peer_must_be_hello(identity: IdentityFactory) -> None:
    """A call's request goes out before the peer's HELLO arrives; a peer whose first frame is
    anything else fails that call with ProtocolError."""
    server_ident = identity()
    async with serving(identity()) as b:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.7"))[0]
        port = listener.socket.getsockname()[1]
        got_request = trio.Event()

        async def evil() -> None:
            tcp = await listener.accept()
            tls = trio.SSLStream(tcp, tls_context(server_ident, server_side=True),
                                 server_side=True)
            await tls.do_handshake()
            seen = b""
            while wire.REQUEST not in (f.kind for f in _frames(seen)):
                seen += await tls.receive_some(65536)  # their HELLO, then the request
            got_request.set()
            await tls.send_all(wire.encode_response(1, {}))  # no HELLO first
            await trio.sleep_forever()

        async with trio.open_nursery() as n:
            n.start_soon(evil)
            peer = Contact(server_ident.node_id, "127.0.0.7", port)
            with pytest.raises(ProtocolError, match="HELLO"):
                await b.call(peer, "PING", {}, timeout=5)
            assert got_request.is_set()  # it was sent before any HELLO came back
            n.cancel_scope.cancel()
        await listener.aclose()


def _frames(data: bytes) -> list[wire.Frame]:
    return [wire.decode_body(b) for b in wire.FrameReader().feed(data)]


async def test_big_frames_and_limit(identity: IdentityFactory) -> None:
    async with serving(identity(), max_frame=2 * 1024 * 1024) as a, serving(
        identity(), max_frame=2 * 1024 * 1024
    ) as b:
        data = bytes(range(256)) * 4096
        answer = await b.call(a.local, "put", {"data": data}, timeout=10)
        assert answer["args"]["data"] == data
        with pytest.raises(ProtocolError, match="exceeds"):
            await b.call(a.local, "put", {"data": data * 3}, timeout=10)
        assert (await b.call(a.local, "ok", {}, timeout=5))["method"] == "ok"


async def test_idle_connections_close_and_calls_reconnect(identity: IdentityFactory) -> None:
    async with serving(identity(), idle_timeout=0.2) as a, serving(identity()) as b:
        assert (await b.call(a.local, "one", {}, timeout=5))["method"] == "one"
        assert len(b.connected_peers()) == 1
        await wait_until_async(lambda: not a.connected_peers() and not b.connected_peers(),
                               "both idle connections to close", 5.0)
        assert a.closed_idle >= 1
        assert (await b.call(a.local, "two", {}, timeout=5))["method"] == "two"


async def test_busy_connection_is_not_idle(identity: IdentityFactory) -> None:
    async with serving(identity(), idle_timeout=0.3) as a, serving(identity()) as b:
        answer = await b.call(a.local, "sleep", {"s": 1.0}, timeout=5)  # handled for 1 s
        assert answer["method"] == "sleep" and a.closed_idle == 0


async def test_connection_cap_closes_least_recently_used(identity: IdentityFactory) -> None:
    async with serving(identity(), max_connections=2) as a:
        clients = []
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                clients.append(await nursery.start(_client, identity()))
            for c in clients:
                assert (await c.call(a.local, "hi", {}, timeout=5))["method"] == "hi"
            await wait_until_async(lambda: len(a.connected_peers()) <= 2, "the cap", 5.0)
            for c in clients:  # the ones cut off reconnect
                assert (await c.call(a.local, "again", {}, timeout=5))["method"] == "again"
            nursery.cancel_scope.cancel()


async def _client(ident: Identity, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    t = Transport(ident, "127.0.0.1", 0, handler=echo)
    async with trio.open_nursery() as nursery:
        await nursery.start(t.serve)
        task_status.started(t)


async def test_call_retries_once_when_the_peer_closed_the_pooled_connection(
    identity: IdentityFactory,
) -> None:
    async with serving(identity()) as a, serving(identity()) as b:
        assert (await b.call(a.local, "one", {}, timeout=5))["method"] == "one"
        a.disconnect(b.identity.node_id)     # a drops it; b has not noticed yet
        assert b.connected_peers()
        assert (await b.call(a.local, "two", {}, timeout=5))["method"] == "two"
