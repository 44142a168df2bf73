"""Helpers shared by the node tests (identities, including bad ones)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dhtfs.node import pki

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
