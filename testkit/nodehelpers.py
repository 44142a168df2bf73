"""Helpers shared by the node tests (identities, including bad ones; hostile wire peers; XOR
orderings of node ids, as the simulator tests check lookups against them)."""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Callable
from pathlib import Path

import msgpack
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import strategies as st

from dhtfs.base.errors import ProtocolError
from dhtfs.base.ids import to_int
from dhtfs.net import wire
from dhtfs.net.network import Contact
from dhtfs.net.transport import tls_context
from dhtfs.trust import pki
from dhtfs.trust.pki import Identity

_names = itertools.count()

IdentityFactory = Callable[..., pki.Identity]


def make_identity(ca_dir: Path, out: Path, trust: Path | None = None) -> pki.Identity:
    """Issue a node cert from ``ca_dir``; ``trust`` is the CA cert the node itself trusts."""
    name = f"n{next(_names)}"
    cert, key, node_id = pki.issue_node_cert(ca_dir, name, out)
    return pki.Identity(trust or ca_dir / pki.CA_CERT_NAME, cert, key, node_id)


def make_self_signed(out: Path, trust: Path) -> pki.Identity:
    """A node whose certificate is signed by its own key (no CA at all)."""
    name = f"self{next(_names)}"
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.build_node_cert(key, name, None, key)
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return pki.Identity(trust, cert_path, key_path, pki.node_id_of(cert))


async def tls_client(ident: Identity, target: Contact) -> trio.SSLStream:
    tcp = await trio.open_tcp_stream(target.host, target.port)
    tls = trio.SSLStream(tcp, tls_context(ident, server_side=False), server_side=False)
    await tls.do_handshake()
    return tls


def rejected(stream_bytes: bytes) -> bool:
    """Whether a receiver must reject this byte stream (rather than wait for more)."""
    reader = wire.FrameReader()
    try:
        bodies = reader.feed(stream_bytes)
        frames = [wire.decode_body(b) for b in bodies]
    except ProtocolError:
        return True
    kinds = [f.kind for f in frames]
    return wire.HELLO in kinds[1:] or wire.RESPONSE in kinds or wire.ERROR in kinds


async def raw_session(ident: Identity, target: Contact, payload: bytes, tls: bool) -> None:
    """Send ``payload`` (after the TLS handshake if ``tls``); if the server must reject it,
    wait until it closes the connection, else close ours."""
    with trio.fail_after(10):
        if tls:
            stream: trio.abc.Stream = await tls_client(ident, target)
        else:
            stream = await trio.open_tcp_stream(target.host, target.port)
        try:
            await stream.send_all(payload)
            if not tls:
                await stream.send_eof()  # type: ignore[attr-defined]
            if not tls or rejected(payload):
                while await stream.receive_some(65536):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


garbage = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.builds(lambda b: wire.LENGTH.pack(len(b)) + b, st.binary(min_size=1, max_size=300)),
    st.builds(lambda n: wire.LENGTH.pack(n), st.integers(wire.DEFAULT_MAX_FRAME + 1, 2**32 - 1)),
    st.builds(
        lambda o: (lambda b: wire.LENGTH.pack(len(b)) + b)(msgpack.packb(o, use_bin_type=True)),
        st.lists(st.integers(0, 5) | st.text(max_size=5), max_size=6),
    ),
)


def draw_garbage(n: int) -> list[bytes]:
    """``n`` hostile byte strings drawn by hypothesis from ``garbage``."""
    from hypothesis import HealthCheck, given, settings

    payloads: list[bytes] = []

    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(garbage)
    def collect(p: bytes) -> None:
        payloads.append(p)

    collect()
    return payloads


def ids_of(contacts: list[Contact]) -> list[bytes]:
    return [c.node_id for c in contacts]


def xor_sorted(ids: list[bytes], target: bytes) -> list[bytes]:
    t = to_int(target)
    return sorted(ids, key=lambda i: to_int(i) ^ t)
