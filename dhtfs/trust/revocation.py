"""Revocation: shutting a compromised node out without re-keying the swarm.

The CA side (``dhtfs ca revoke DIR NAME``): ``revoke`` adds a node certificate's serial number
to ``DIR/crl.pem``, an X.509 CRL signed by the swarm CA with a CRL number one higher than the
last (``list_revoked`` reads it back).

The node side (``RevocationList``): a node loads the newest CRL it has (its configured
``-o crl=PATH``, re-read when the file changes, and the one it adopted earlier, kept in its
state directory) and refuses revoked peers at the handshake (``Transport.revoked``). Nodes
spread a newer list to each other (``dhtfs.dht.revocations``: the ``CRL`` service); a node that
adopts one drops its connections to the nodes it revokes and forgets them (``on_adopted``).

Invariants:
- a list is adopted only if the swarm CA signed it, it names the CA as issuer, and its CRL
  number is higher than the one held: a peer cannot forge, roll back or replace the list;
- the adopted list is written (temp file + fsync + rename) before it is used, so a restarted
  node never falls back to an older one;
- revocation is by certificate serial number, as X.509 has it: a node re-issued a certificate
  for the same key (same node ID) is a new certificate, not revoked unless listed too.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from dhtfs.base.errors import ConfigError
from dhtfs.trust import pki

log = logging.getLogger(__name__)

CRL_NAME = "crl.pem"
ADOPTED_NAME = "crl.der"
CRL_VALIDITY = dt.timedelta(days=3650)


# -- the CA side -------------------------------------------------------------------------------


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise ConfigError("not a certificate revocation list (PEM or DER)") from None


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def revoke(ca_dir: Path, cert_path: Path) -> tuple[Path, int]:
    """Add the certificate at ``cert_path`` to ``ca_dir/crl.pem`` (created if missing), signed
    by the CA with the next CRL number; returns (its path, the new number)."""
    ca_cert = pki.load_cert(ca_dir / pki.CA_CERT_NAME)
    ca_key = pki.load_private_key(ca_dir / pki.CA_KEY_NAME)
    cert = pki.load_cert(cert_path)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # InvalidSignature, ValueError, TypeError
        raise ConfigError(f"{cert_path} was not issued by the CA in {ca_dir}") from None
    path = ca_dir / CRL_NAME
    now = dt.datetime.now(dt.UTC)
    entries: list[x509.RevokedCertificate] = []
    number = 0
    if path.exists():
        old = _load_crl(path.read_bytes())
        number = crl_number(old)
        entries = list(old)
    if any(e.serial_number == cert.serial_number for e in entries):
        raise ConfigError(f"{cert_path} is already revoked (CRL number {number})")
    entries.append(
        x509.RevokedCertificateBuilder()
        .serial_number(cert.serial_number)
        .revocation_date(now)
        .build()
    )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - pki.CLOCK_SKEW)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number + 1), critical=False)
    )
    for e in entries:
        builder = builder.add_revoked_certificate(e)
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_atomically(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return path, number + 1


def list_revoked(ca_dir: Path) -> tuple[int, list[tuple[int, dt.datetime]]]:
    """(CRL number, [(serial, revocation time)]) of ``ca_dir/crl.pem``; (0, []) if none."""
    path = ca_dir / CRL_NAME
    if not path.exists():
        return 0, []
    crl = _load_crl(path.read_bytes())
    return crl_number(crl), [(e.serial_number, e.revocation_date_utc) for e in crl]


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- the node side -----------------------------------------------------------------------------


class RevocationList:
    """The newest valid CRL this node knows (see the module docstring). Lives on the trio
    thread; ``is_revoked`` is cheap (a set lookup after one certificate parse)."""

    def __init__(
        self, ca: x509.Certificate, state_dir: Path, configured: Path | None,
        *, on_adopted: Callable[[], None] | None = None,
    ) -> None:
        """``on_adopted``: told after each newer list is adopted (loading the ones at hand
        included)."""
        self.ca = ca
        self.adopted_path = state_dir / ADOPTED_NAME
        self.configured = configured
        self.number = 0
        self.der: bytes | None = None
        self.serials: frozenset[int] = frozenset()
        self.on_adopted = on_adopted
        self._configured_stamp: tuple[int, int] | None = None
        if self.adopted_path.exists():
            self.offer(self.adopted_path.read_bytes(), source="the state directory")
        self.reload_configured()

    def is_revoked(self, cert_der: bytes) -> bool:
        if not self.serials:
            return False
        try:
            serial = x509.load_der_x509_certificate(cert_der).serial_number
        except ValueError:
            return True
        return serial in self.serials

    def offer(self, data: bytes, *, source: str) -> bool:
        """Adopt ``data`` (a CRL, PEM or DER) if it is valid and newer; True if adopted."""
        try:
            crl = _load_crl(data)
        except ConfigError as exc:
            log.warning("ignoring a revocation list from %s: %s", source, exc)
            return False
        if crl.issuer != self.ca.subject or not crl.is_signature_valid(self.ca.public_key()):
            log.warning("ignoring a revocation list from %s: not signed by the swarm CA", source)
            return False
        number = crl_number(crl)
        if number <= self.number:
            return False
        der = crl.public_bytes(serialization.Encoding.DER)
        _write_atomically(self.adopted_path, der, 0o600)
        self.number, self.der = number, der
        self.serials = frozenset(e.serial_number for e in crl)
        log.warning("adopted revocation list number %d from %s: %d certificates revoked",
                    number, source, len(self.serials))
        if self.on_adopted is not None:
            self.on_adopted()
        return True

    def reload_configured(self) -> bool:
        """Re-read ``-o crl=PATH`` if it changed since the last look; True if adopted."""
        if self.configured is None:
            return False
        try:
            st = os.stat(self.configured)
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._configured_stamp:
            return False
        self._configured_stamp = stamp
        return self.offer(self.configured.read_bytes(), source=str(self.configured))
