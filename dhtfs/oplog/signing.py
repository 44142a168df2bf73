"""Signatures of log entries: this node's, and its peers' checked against the swarm CA.

Entries of one origin form a hash chain (``dhtfs.oplog.entries.chain_link``: each link covers
the previous link, the entry's seq and its body, ``encode_op``'s canonical bytes for a mount).
A signature covers ``signed_message(origin, seq, link)``, so one signature at the end of a
batch authenticates every entry of the batch and everything before it: an origin signs once
per batch it sends, a receiver verifies once per batch it accepts, and a relay can neither
forge, alter, drop from the middle nor reorder another node's entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dhtfs.base.errors import AuthError
from dhtfs.trust import pki


def signed_message(origin: bytes, seq: int, link: bytes) -> bytes:
    """What a signature covers: domain tag, origin, seq and the chain link of that entry."""
    return b"dhtfs-log-sig-v1\0" + origin + seq.to_bytes(8, "big") + link


class Signatures:
    """Signs this node's entries and verifies others' with certificates from the swarm CA.

    ``check_cert`` accepts a certificate only if it chains to the CA and its key hashes to the
    claimed origin (``pki.verify_node_cert_der``); public keys are cached by origin once
    their certificate has verified, and ``verify`` knows only those.
    """

    def __init__(self, identity: pki.Identity) -> None:
        self.own_id = identity.node_id
        self._key = pki.load_private_key(identity.key)
        self._ca = pki.load_cert(identity.ca_cert)
        self.own_cert = pki.load_cert(identity.cert).public_bytes(serialization.Encoding.DER)
        self._keys: dict[bytes, ec.EllipticCurvePublicKey] = {}

    def sign(self, origin: bytes, seq: int, link: bytes) -> bytes:
        return self._key.sign(signed_message(origin, seq, link), ec.ECDSA(hashes.SHA256()))

    def knows(self, origin: bytes) -> bool:
        return origin in self._keys

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

    def verify(self, origin: bytes, seq: int, link: bytes, sig: bytes) -> bool:
        """True if ``sig`` is ``origin``'s signature of entry ``seq`` with chain ``link``."""
        key = self._keys.get(origin)
        if key is None:
            return False
        try:
            key.verify(sig, signed_message(origin, seq, link), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


class Signer(Protocol):
    """What the replicator needs of ``Signatures`` (the simulator uses a cheaper one)."""

    own_id: bytes
    own_cert: bytes

    def sign(self, origin: bytes, seq: int, link: bytes) -> bytes: ...

    def knows(self, origin: bytes) -> bool: ...

    def check_cert(self, origin: bytes, der: bytes) -> bool: ...

    def verify(self, origin: bytes, seq: int, link: bytes, sig: bytes) -> bool: ...


class KeyedSigner:
    """A stand-in for ``Signatures`` in the simulator: the "signature" is a SHA-256 keyed with
    a per-origin secret the whole simulated world shares (``secret_of``), so a forged entry
    (wrong key) still fails. Not for real nodes: any holder of the world can sign for all."""

    def __init__(self, own_id: bytes, secret_of: Callable[[bytes], bytes]) -> None:
        self.own_id = own_id
        self.own_cert = b"sim:" + own_id
        self._secret_of = secret_of

    def sign(self, origin: bytes, seq: int, link: bytes) -> bytes:
        return hashlib.sha256(self._secret_of(origin) + signed_message(origin, seq, link)).digest()

    def knows(self, origin: bytes) -> bool:
        return True

    def check_cert(self, origin: bytes, der: bytes) -> bool:
        return der == b"sim:" + origin

    def verify(self, origin: bytes, seq: int, link: bytes, sig: bytes) -> bool:
        return sig == self.sign(origin, seq, link)
