"""Signatures of log entries: this node's, and its peers' checked against the swarm CA.

A signature covers ``signed_message(origin, seq, body)``: a domain tag, the origin's node ID,
the entry's place in the origin's log and the body (``encode_op``'s canonical bytes for a
mount), so a relay can neither forge an entry nor move one to another place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dhtfs.errors import AuthError
from dhtfs.node import pki
from dhtfs.node.logwire import LogEntry


def signed_message(origin: bytes, seq: int, body: bytes) -> bytes:
    """What an entry's signature covers: domain tag, origin, seq and the body's bytes."""
    return b"dhtfs-log-v1\0" + origin + seq.to_bytes(8, "big") + body


class Signatures:
    """Signs this node's entries and verifies others' with certificates from the swarm CA.

    ``verify`` checks the certificate chains to the CA and hashes to the claimed origin
    (``pki.verify_node_cert_der``), then the ECDSA P-256 signature. Public keys are cached by
    origin once their certificate has verified.
    """

    def __init__(self, identity: pki.Identity) -> None:
        self.own_id = identity.node_id
        self._key = pki.load_private_key(identity.key)
        self._ca = pki.load_cert(identity.ca_cert)
        self.own_cert = pki.load_cert(identity.cert).public_bytes(serialization.Encoding.DER)
        self._keys: dict[bytes, ec.EllipticCurvePublicKey] = {}

    def sign(self, origin: bytes, seq: int, body: bytes) -> bytes:
        return self._key.sign(signed_message(origin, seq, body), ec.ECDSA(hashes.SHA256()))

    def check_cert(self, origin: bytes, der: bytes) -> bool:
        """True if ``der`` is a valid swarm certificate whose key hashes to ``origin``."""
        if origin in self._keys:
            return True
        try:
            pki.verify_node_cert_der(der, self._ca, expected_id=origin)
            key = x509.load_der_x509_certificate(der).public_key()
        except (AuthError, ValueError):
            return False
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        self._keys[origin] = key
        return True

    def verify(self, entry: LogEntry) -> bool:
        """True if ``entry.sig`` is ``entry.origin``'s signature (its cert checked first)."""
        key = self._keys.get(entry.origin)
        if key is None or entry.sig is None:
            return False
        try:
            key.verify(entry.sig, signed_message(entry.origin, entry.seq, entry.body),
                       ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


class Signer(Protocol):
    """What the replicator needs of ``Signatures`` (the simulator uses a cheaper one)."""

    own_id: bytes
    own_cert: bytes

    def sign(self, origin: bytes, seq: int, body: bytes) -> bytes: ...

    def check_cert(self, origin: bytes, der: bytes) -> bool: ...

    def verify(self, entry: LogEntry) -> bool: ...


class KeyedSigner:
    """A stand-in for ``Signatures`` in the simulator: the "signature" is a SHA-256 keyed with
    a per-origin secret the whole simulated world shares (``secret_of``), so a forged entry
    (wrong key) still fails. Not for real nodes: any holder of the world can sign for all."""

    def __init__(self, own_id: bytes, secret_of: Callable[[bytes], bytes]) -> None:
        self.own_id = own_id
        self.own_cert = b"sim:" + own_id
        self._secret_of = secret_of

    def sign(self, origin: bytes, seq: int, body: bytes) -> bytes:
        return hashlib.sha256(self._secret_of(origin) + signed_message(origin, seq, body)).digest()

    def check_cert(self, origin: bytes, der: bytes) -> bool:
        return der == b"sim:" + origin

    def verify(self, entry: LogEntry) -> bool:
        return entry.sig == self.sign(entry.origin, entry.seq, entry.body)
