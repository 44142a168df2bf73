"""Who may use the gateway: TLS and client authentication (``-o http_cert``, ``http_key``,
``http_token``).

The rule: a gateway on a loopback address without ``http_cert`` speaks plain HTTP to anyone
on this machine. On any other address, or with ``http_cert``, it speaks TLS (1.2 or newer)
with ``http_cert``/``http_key``, else with the node's own certificate (issued by the swarm
CA), and every client must authenticate: with the bearer token of ``http_token`` (a file of
at least ``MIN_TOKEN`` characters that only its owner may read) when given, else with a
client certificate issued by the swarm CA and not revoked by its revocation list. A token
given without TLS is required too.

Invariants: a token is compared in constant time (``hmac.compare_digest``); an
unauthenticated request gets 401 and nothing of the tree; a client certificate is checked
against the revocation list in force when its connection opens.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dhtfs.base.errors import ConfigError

MIN_TOKEN = 16


@dataclass(frozen=True)
class Access:
    """What a connection must pass: TLS (``context``), then a bearer ``token`` or a client
    certificate not ``revoked``. ``Access()``: plain HTTP, no authentication."""

    context: ssl.SSLContext | None = None
    token: bytes | None = None
    revoked: Callable[[bytes], bool] | None = None

    @property
    def client_certificates(self) -> bool:
        return self.context is not None and self.context.verify_mode == ssl.CERT_REQUIRED

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        """Whether a request's headers carry the token (always true without one)."""
        if self.token is None:
            return True
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)


def read_token(path: Path) -> bytes:
    """The bearer token in ``path``; ConfigError if others may read it or it is short."""
    try:
        info = os.stat(path)
        token = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"http_token={path}: {exc.strerror or exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"http_token={path}: others may read it (chmod 600 it)")
    if len(token) < MIN_TOKEN or any(c <= 0x20 or c >= 0x7F for c in token):
        raise ConfigError(f"http_token={path}: the token must be at least {MIN_TOKEN} "
                          f"printable characters without spaces")
    return token


def gateway_access(host: str, *, cert: Path | None, key: Path | None, token: Path | None,
                   node_cert: Path, node_key: Path, ca_cert: Path,
                   revoked: Callable[[bytes], bool]) -> Access:
    """The ``Access`` the module docstring's rule gives (``node_*``, ``ca_cert``: the node's
    own swarm certificate, key and CA)."""
    secret = read_token(token) if token is not None else None
    if ipaddress.ip_address(host).is_loopback and cert is None:
        return Access(token=secret)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert or node_cert), str(key or node_key))
        if secret is None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(ca_cert))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"http: cannot use the certificate {cert or node_cert}: "
                          f"{exc}") from None
    return Access(ctx, secret, revoked if secret is None else None)
