"""The gateway over TLS, driven by curl against an in-process server on 127.0.0.1: a bearer
token (401 without it or with a wrong one), or client certificates of the swarm CA (refused
without one, with one of another CA, or with a revoked one); the token file's checks; plain
HTTP only on loopback without a certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dhtfs.base.errors import ConfigError
from dhtfs.gateway.access import gateway_access, read_token
from dhtfs.gateway.routes import Routes
from dhtfs.gateway.server import HttpServer
from dhtfs.runtime.localfs import LocalFilesystem
from dhtfs.trust import pki

TOKEN = b"s3cret-token-0123456789"


def server_cert(ca_dir: Path, out: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 issued by the CA in ``ca_dir`` (what ``http_cert`` takes)."""
    ca_cert = pki.load_cert(ca_dir / pki.CA_CERT_NAME)
    ca_key = pki.load_private_key(ca_dir / pki.CA_KEY_NAME)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = out / "gw.crt", out / "gw.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def curl(url: str, *args: str) -> tuple[int, str]:
    """(curl's exit status, the HTTP status it printed or "")."""
    res = await trio.run_process(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                  "--max-time", "20", *args, url],
                                 capture_stdout=True, capture_stderr=True, check=False)
    return res.returncode, res.stdout.decode()


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "ca")
    return tmp_path / "ca"


async def test_bearer_token_over_tls(fs: LocalFilesystem, nursery: trio.Nursery, ca: Path,
                                     tmp_path: Path) -> None:
    cert, key = server_cert(ca, tmp_path)
    token = tmp_path / "token"
    token.write_bytes(TOKEN + b"\n")
    token.chmod(0o600)
    node_cert, node_key, _ = pki.issue_node_cert(ca, "n1", tmp_path / "n1")
    access = gateway_access("127.0.0.1", cert=cert, key=key, token=token, node_cert=node_cert,
                            node_key=node_key, ca_cert=ca / pki.CA_CERT_NAME,
                            revoked=lambda der: False)
    gw = HttpServer(Routes(fs.tree, fs.contents), "127.0.0.1", 0, access=access)
    await nursery.start(gw.serve)
    url = f"https://127.0.0.1:{gw.address[1]}/"
    tls = ["--cacert", str(ca / pki.CA_CERT_NAME)]
    assert await curl(url, *tls, "-H", f"Authorization: Bearer {TOKEN.decode()}") == (0, "200")
    assert await curl(url, *tls) == (0, "401")
    assert await curl(url, *tls, "-H", "Authorization: Bearer wrong-token-0000000") == (0, "401")
    assert (await curl(url.replace("https", "http")))[1] != "200"  # no plain HTTP
    assert gw.stats.denied >= 2


async def test_client_certificates_of_the_swarm(fs: LocalFilesystem, nursery: trio.Nursery,
                                                ca: Path, tmp_path: Path) -> None:
    cert, key = server_cert(ca, tmp_path)
    member_cert, member_key, _ = pki.issue_node_cert(ca, "member", tmp_path / "m")
    gone_cert, gone_key, _ = pki.issue_node_cert(ca, "gone", tmp_path / "g")
    gone_der = pki.load_cert(gone_cert).public_bytes(serialization.Encoding.DER)
    pki.init_ca(tmp_path / "other")
    alien_cert, alien_key, _ = pki.issue_node_cert(tmp_path / "other", "alien", tmp_path / "a")
    access = gateway_access("127.0.0.1", cert=cert, key=key, token=None, node_cert=member_cert,
                            node_key=member_key, ca_cert=ca / pki.CA_CERT_NAME,
                            revoked=lambda der: der == gone_der)
    gw = HttpServer(Routes(fs.tree, fs.contents), "127.0.0.1", 0, access=access)
    await nursery.start(gw.serve)
    url = f"https://127.0.0.1:{gw.address[1]}/"
    tls = ["--cacert", str(ca / pki.CA_CERT_NAME)]
    assert await curl(url, *tls, "--cert", str(member_cert), "--key", str(member_key)) \
        == (0, "200")
    refused = [await curl(url, *tls),
               await curl(url, *tls, "--cert", str(alien_cert), "--key", str(alien_key)),
               await curl(url, *tls, "--cert", str(gone_cert), "--key", str(gone_key))]
    assert all(code != 0 and status in ("", "000") for code, status in refused), refused
    assert gw.stats.denied == 3 and gw.stats.by_status == {200: 1}


def test_token_file_rules(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_bytes(TOKEN)
    token.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token(token)
    token.chmod(0o600)
    assert read_token(token) == TOKEN
    token.write_bytes(b"short")
    with pytest.raises(ConfigError, match="at least"):
        read_token(token)
    with pytest.raises(ConfigError, match="http_token"):
        read_token(tmp_path / "missing")


def test_plain_only_on_loopback_without_a_certificate(ca: Path, tmp_path: Path) -> None:
    node_cert, node_key, _ = pki.issue_node_cert(ca, "n", tmp_path / "n")
    kw = {"key": None, "token": None, "node_cert": node_cert, "node_key": node_key,
          "ca_cert": ca / pki.CA_CERT_NAME, "revoked": lambda der: False}
    assert gateway_access("127.0.0.1", cert=None, **kw).context is None
    wide = gateway_access("0.0.0.0", cert=None, **kw)  # the node's own certificate
    assert wide.context is not None and wide.client_certificates
