"""Revocation lists: made by the CA, adopted by nodes only when CA-signed and newer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dhtfs.base.errors import ConfigError
from dhtfs.trust import pki, revocation
from dhtfs.trust.revocation import RevocationList


def der_of(path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pki.load_cert(path).public_bytes(serialization.Encoding.DER)


def test_lists_are_adopted_only_when_signed_by_the_ca_and_newer(tmp_path: Path) -> None:
    ca, other = tmp_path / "ca", tmp_path / "other"
    pki.init_ca(ca)
    pki.init_ca(other)
    bad, _, _ = pki.issue_node_cert(ca, "bad")
    good, _, _ = pki.issue_node_cert(ca, "good")
    foreign, _, _ = pki.issue_node_cert(other, "x")
    state = tmp_path / "state"
    state.mkdir()
    rl = RevocationList(pki.load_cert(ca / pki.CA_CERT_NAME), state, None)
    assert not rl.is_revoked(der_of(bad))
    with pytest.raises(ConfigError):  # a certificate of another swarm cannot be revoked here
        revocation.revoke(ca, foreign)
    path, number = revocation.revoke(ca, bad)
    assert number == 1
    first = path.read_bytes()
    revocation.revoke(ca, good)
    second = path.read_bytes()
    # Another CA's list naming the same serials is refused, and so is junk.
    revocation.revoke(other, foreign)
    assert not rl.offer((other / revocation.CRL_NAME).read_bytes(), source="test")
    assert not rl.offer(b"junk", source="test")
    assert rl.offer(first, source="test") and rl.number == 1
    assert rl.is_revoked(der_of(bad)) and not rl.is_revoked(der_of(good))
    assert rl.offer(second, source="test") and rl.is_revoked(der_of(good))
    assert not rl.offer(first, source="test")  # no rollback
    assert rl.number == 2
    # Adopted lists survive a restart; an older configured file does not roll them back.
    configured = tmp_path / "crl.pem"
    configured.write_bytes(first)
    again = RevocationList(pki.load_cert(ca / pki.CA_CERT_NAME), state, configured)
    assert again.number == 2 and again.is_revoked(der_of(good))
    assert oct(os.stat(state / revocation.ADOPTED_NAME).st_mode & 0o777) == "0o600"
    assert revocation.list_revoked(ca)[0] == 2


def test_a_configured_list_is_reread_when_it_changes(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    cert, _, _ = pki.issue_node_cert(ca, "n")
    configured = tmp_path / "crl.pem"
    state = tmp_path / "state"
    state.mkdir()
    rl = RevocationList(pki.load_cert(ca / pki.CA_CERT_NAME), state, configured)
    assert rl.number == 0 and not rl.reload_configured()  # no file yet: nothing revoked
    path, _ = revocation.revoke(ca, cert)
    configured.write_bytes(path.read_bytes())
    assert rl.reload_configured() and rl.is_revoked(der_of(cert))
    assert not rl.reload_configured()  # unchanged: not read again
