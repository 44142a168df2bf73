"""Unit tests of the swarm PKI: CA creation, issuing, node IDs, verification refusals."""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dhtfs.base.errors import AuthError, ConfigError
from dhtfs.trust import pki


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_and_issue_layout(tmp_path: Path) -> None:
    ca_cert_path = pki.init_ca(tmp_path / "ca")
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    ca = pki.load_cert(ca_cert_path)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    cert_path, key_path, node_id = pki.issue_node_cert(tmp_path / "ca", "alpha", tmp_path / "n")
    assert _mode(key_path) == 0o600
    cert = pki.load_cert(cert_path)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert node_id == hashlib.sha256(spki).digest() == pki.node_id_of(cert)
    assert pki.verify_node_cert(cert, ca) == node_id
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ident = pki.Identity.load(ca_cert_path, cert_path, key_path)
    assert ident.node_id == node_id


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    pki.init_ca(tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        pki.init_ca(tmp_path)
    pki.issue_node_cert(tmp_path, "a")
    with pytest.raises(ConfigError, match="already exists"):
        pki.issue_node_cert(tmp_path, "a")
    with pytest.raises(ConfigError):
        pki.issue_node_cert(tmp_path, "../evil")


def test_foreign_ca_refused(swarm_ca: Path, foreign_ca: Path, tmp_path: Path) -> None:
    cert_path, _, _ = pki.issue_node_cert(foreign_ca, "x", tmp_path)
    ca = pki.load_cert(swarm_ca / "ca.crt")
    with pytest.raises(AuthError, match="does not verify"):
        pki.verify_node_cert(pki.load_cert(cert_path), ca)


def test_self_signed_refused(swarm_ca: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.build_node_cert(key, "self", None, key)
    with pytest.raises(AuthError, match="not the swarm CA"):
        pki.verify_node_cert(cert, pki.load_cert(swarm_ca / "ca.crt"))


def test_expired_and_not_yet_valid_refused(swarm_ca: Path) -> None:
    ca = pki.load_cert(swarm_ca / "ca.crt")
    ca_key = pki.load_private_key(swarm_ca / "ca.key")
    key = ec.generate_private_key(ec.SECP256R1())
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    old = pki.build_node_cert(key, "old", ca, ca_key, validity=dt.timedelta(days=1),
                              not_before=past)
    with pytest.raises(AuthError, match="not valid now"):
        pki.verify_node_cert(old, ca)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    early = pki.build_node_cert(key, "early", ca, ca_key, not_before=future)
    with pytest.raises(AuthError, match="not valid now"):
        pki.verify_node_cert(early, ca)


def test_node_id_mismatch_refused(swarm_ca: Path, tmp_path: Path) -> None:
    cert_path, _, node_id = pki.issue_node_cert(swarm_ca, "m", tmp_path)
    ca = pki.load_cert(swarm_ca / "ca.crt")
    cert = pki.load_cert(cert_path)
    assert pki.verify_node_cert(cert, ca, expected_id=node_id) == node_id
    with pytest.raises(AuthError, match="node id mismatch"):
        pki.verify_node_cert(cert, ca, expected_id=bytes(32))


def test_ca_cert_cannot_be_node_cert(swarm_ca: Path) -> None:
    ca = pki.load_cert(swarm_ca / "ca.crt")
    with pytest.raises(AuthError):
        pki.verify_node_cert(ca, ca)


def test_identity_load_errors(swarm_ca: Path, tmp_path: Path) -> None:
    c1, _, _ = pki.issue_node_cert(swarm_ca, "k1", tmp_path)
    _, k2, _ = pki.issue_node_cert(swarm_ca, "k2", tmp_path)
    with pytest.raises(ConfigError, match="does not belong"):
        pki.Identity.load(swarm_ca / "ca.crt", c1, k2)
    with pytest.raises(ConfigError, match="cannot read"):
        pki.Identity.load(swarm_ca / "ca.crt", tmp_path / "missing.crt", k2)
    (tmp_path / "junk.crt").write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM"):
        pki.Identity.load(swarm_ca / "ca.crt", tmp_path / "junk.crt", k2)


def test_der_verification_is_remembered_but_rechecked(
    swarm_ca: Path, foreign_ca: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``verify_node_cert_der`` caches acceptances only: a cached certificate is still held
    to its validity window and to the expected ID, and refusals are never cached."""
    ca = pki.load_cert(swarm_ca / "ca.crt")
    cert_path, _, node_id = pki.issue_node_cert(swarm_ca, "c", tmp_path)
    cert = pki.load_cert(cert_path)
    der = cert.public_bytes(serialization.Encoding.DER)
    calls = 0
    real = pki.verify_node_cert

    def counting(*args: object, **kw: object) -> bytes:
        nonlocal calls
        calls += 1
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pki, "verify_node_cert", counting)
    assert pki.verify_node_cert_der(der, ca) == node_id
    assert pki.verify_node_cert_der(der, ca, expected_id=node_id) == node_id
    assert calls == 1
    with pytest.raises(AuthError, match="node id mismatch"):
        pki.verify_node_cert_der(der, ca, expected_id=bytes(32))
    later = cert.not_valid_after_utc + dt.timedelta(days=1)
    monkeypatch.setattr(pki, "_now", lambda: later)
    with pytest.raises(AuthError, match="not valid now"):
        pki.verify_node_cert_der(der, ca)
    monkeypatch.undo()
    foreign_path, _, _ = pki.issue_node_cert(foreign_ca, "f", tmp_path / "f")
    foreign = pki.load_cert(foreign_path).public_bytes(serialization.Encoding.DER)
    for _ in range(2):
        with pytest.raises(AuthError, match="does not verify"):
            pki.verify_node_cert_der(foreign, ca)
    with pytest.raises(AuthError, match="does not parse"):
        pki.verify_node_cert_der(b"garbage", ca)
