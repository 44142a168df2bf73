"""The swarm's own PKI: one CA per swarm, one certificate per node.

Layout written by ``dhtfs ca init DIR`` / ``dhtfs ca issue DIR NAME``::

    DIR/ca.key          CA private key (EC P-256, PKCS#8 PEM, mode 0600)
    DIR/ca.crt          self-signed CA certificate (basicConstraints CA:TRUE, pathlen 0)
    OUT/NAME.key        node private key (EC P-256, mode 0600)
    OUT/NAME.crt        node certificate signed by the CA (CA:FALSE, digitalSignature,
                        serverAuth + clientAuth)

Invariants:
- ``node_id = SHA-256(DER SubjectPublicKeyInfo)`` of the node certificate's key: it cannot be
  chosen without a CA-signed key and cannot be claimed by anyone without that key;
- private keys are created 0600 (temp file + rename) and never overwritten;
- ``verify_node_cert`` accepts a certificate only if it is directly issued by the swarm CA
  (signature checks), is inside its validity window, is not itself a CA, and (when asked) its
  key hashes to the expected node ID. Every refusal raises ``AuthError`` with the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dhtfs.base.errors import AuthError, ConfigError

CA_KEY_NAME = "ca.key"
CA_CERT_NAME = "ca.crt"
CA_VALIDITY = dt.timedelta(days=3650)
NODE_VALIDITY = dt.timedelta(days=825)
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Identity:
    """Paths of the material a node needs to join a swarm, plus its derived node ID."""

    ca_cert: Path
    cert: Path
    key: Path
    node_id: bytes

    @classmethod
    def load(cls, ca_cert: Path, cert: Path, key: Path) -> Identity:
        """Check the files exist, the cert chains to the CA and the key matches the cert."""
        ca = load_cert(ca_cert)
        node_cert = load_cert(cert)
        private = load_private_key(key)
        if private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != _spki(node_cert):
            raise ConfigError(f"key {key} does not belong to certificate {cert}")
        try:
            node_id = verify_node_cert(node_cert, ca)
        except AuthError as exc:
            raise ConfigError(f"certificate {cert}: {exc}") from None
        return cls(ca_cert=ca_cert, cert=cert, key=key, node_id=node_id)


def node_id_of(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo of ``cert``."""
    return hashlib.sha256(_spki(cert)).digest()


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- verification ----------------------------------------------------------------------------


def verify_node_cert(
    cert: x509.Certificate,
    ca: x509.Certificate,
    *,
    expected_id: bytes | None = None,
    now: dt.datetime | None = None,
) -> bytes:
    """Return the node ID of ``cert`` if it is a valid node certificate of the swarm ``ca``.

    Raises ``AuthError`` naming the reason otherwise.
    """
    now = now or _now()
    if cert.issuer != ca.subject:
        raise AuthError(f"certificate issuer {cert.issuer.rfc4514_string()!r} is not the swarm CA")
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as exc:  # InvalidSignature, ValueError, TypeError
        raise AuthError(
            f"certificate signature does not verify against the swarm CA ({exc})"
        ) from None
    if not cert.not_valid_before_utc - CLOCK_SKEW <= now <= cert.not_valid_after_utc:
        raise AuthError(
            f"certificate not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
        )
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise AuthError("a CA certificate cannot be a node certificate")
    except x509.ExtensionNotFound:
        pass
    node_id = node_id_of(cert)
    if expected_id is not None and node_id != expected_id:
        raise AuthError(
            f"node id mismatch: certificate key hashes to {node_id.hex()[:16]}…, "
            f"expected {expected_id.hex()[:16]}…"
        )
    return node_id


_VERIFIED_MAX = 4096
_verified: OrderedDict[tuple[bytes, bytes], tuple[bytes, dt.datetime, dt.datetime]] = (
    OrderedDict()
)


def verify_node_cert_der(
    der: bytes, ca: x509.Certificate, *, expected_id: bytes | None = None
) -> bytes:
    """``verify_node_cert`` for a DER certificate as TLS hands it over, remembering the
    outcome: a certificate (exact bytes) already accepted under ``ca`` is only checked again
    for its validity window and the expected ID. Every connection of a node, and of every node
    in the process, to the same peer presents the same bytes; parsing and verifying them again
    was ~10% of a swarm's start-up. Refusals are never cached."""
    key = (ca.fingerprint(hashes.SHA256()), der)
    hit = _verified.get(key)
    if hit is None:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise AuthError("peer certificate does not parse") from None
        node_id = verify_node_cert(cert, ca, expected_id=expected_id)
        _verified[key] = (node_id, cert.not_valid_before_utc, cert.not_valid_after_utc)
        if len(_verified) > _VERIFIED_MAX:
            _verified.popitem(last=False)
        return node_id
    _verified.move_to_end(key)
    node_id, not_before, not_after = hit
    if not not_before - CLOCK_SKEW <= _now() <= not_after:
        raise AuthError(
            f"certificate not valid now (valid {not_before:%Y-%m-%d %H:%M} to "
            f"{not_after:%Y-%m-%d %H:%M} UTC)"
        )
    if expected_id is not None and node_id != expected_id:
        raise AuthError(
            f"node id mismatch: certificate key hashes to {node_id.hex()[:16]}…, "
            f"expected {expected_id.hex()[:16]}…"
        )
    return node_id


# -- files -----------------------------------------------------------------------------------


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read certificate {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate") from None


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read private key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: expected an EC P-256 key")
    return key


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never overwriting) via a temp file and rename."""
    if path.exists():
        raise ConfigError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dhtfs swarm"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def init_ca(directory: Path, name: str = "dhtfs swarm CA") -> Path:
    """Create a new swarm CA in ``directory``; returns the CA certificate path."""
    key_path, cert_path = directory / CA_KEY_NAME, directory / CA_CERT_NAME
    for p in (key_path, cert_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; refusing to overwrite a CA")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    subject = _name(name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(key_path, _key_pem(key), 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path


def issue_node_cert(
    ca_dir: Path,
    name: str,
    out_dir: Path | None = None,
    *,
    validity: dt.timedelta = NODE_VALIDITY,
) -> tuple[Path, Path, bytes]:
    """Create ``NAME.key`` + ``NAME.crt`` signed by the CA in ``ca_dir``.

    Returns (cert path, key path, node ID).
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"node name {name!r}: use a plain file name")
    ca_cert = load_cert(ca_dir / CA_CERT_NAME)
    ca_key = load_private_key(ca_dir / CA_KEY_NAME)
    out = out_dir or ca_dir
    key_path, cert_path = out / f"{name}.key", out / f"{name}.crt"
    for p in (key_path, cert_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_node_cert(key, name, ca_cert, ca_key, validity=validity)
    out.mkdir(parents=True, exist_ok=True)
    _write_new(key_path, _key_pem(key), 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path, node_id_of(cert)


def build_node_cert(
    key: ec.EllipticCurvePrivateKey,
    name: str,
    issuer_cert: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    validity: dt.timedelta = NODE_VALIDITY,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """A node certificate for ``key``; ``issuer_cert=None`` makes it self-signed (tests)."""
    start = not_before or (_now() - CLOCK_SKEW)
    issuer = issuer_cert.subject if issuer_cert is not None else _name(name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    return builder.sign(issuer_key, hashes.SHA256())
