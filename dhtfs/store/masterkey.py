"""The per-node master key that encrypts blocks at rest.

Invariants:
- the key is 32 random bytes (AES-256-GCM);
- a key file is written 0600 by create-temp + fsync + rename, so it is never half written;
- a key file with group/other permission bits is refused (fix with ``chmod 600``);
- ``key.check`` in the state directory holds an AES-GCM seal of a fixed label, so a node started
  with the wrong key fails at start with a clear message instead of EIO on every read;
- an ephemeral key lives in memory only and is never written anywhere.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dhtfs.base.durable import fsync_dir
from dhtfs.base.errors import KeyFileError

KEY_BYTES = 32
KEY_FILE_NAME = "master.key"
CHECK_FILE_NAME = "key.check"
_CHECK_LABEL = b"dhtfs master key check v1"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MasterKey:
    """A loaded master key; ``ephemeral`` keys were never written to disk."""

    key: bytes
    ephemeral: bool
    path: Path | None


def load_master_key(spec: str, state_dir: Path) -> MasterKey:
    """Resolve ``spec`` (``""`` = default file in ``state_dir``, ``ephemeral``, or a path).

    A missing key file is created; an existing one is checked for mode and length.
    """
    if spec == "ephemeral":
        return MasterKey(os.urandom(KEY_BYTES), ephemeral=True, path=None)
    path = Path(spec) if spec else state_dir / KEY_FILE_NAME
    if not path.exists():
        _create_key_file(path)
    return MasterKey(_read_key_file(path), ephemeral=False, path=path)


def _create_key_file(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, os.urandom(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from exc
    log.info("created master key file %s", path)


def _read_key_file(path: Path) -> bytes:
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    if len(data) != KEY_BYTES:
        raise KeyFileError(f"key file {path} holds {len(data)} bytes, expected {KEY_BYTES}")
    return data


def verify_key_check(master: MasterKey, state_dir: Path) -> None:
    """Check a persistent ``master`` against ``state_dir/key.check``, creating it if absent.

    Raises KeyFileError when the key does not match the one the state directory was sealed
    with. Ephemeral keys are not checked: they never match old data by construction.
    """
    if master.ephemeral:
        return
    check = state_dir / CHECK_FILE_NAME
    aead = AESGCM(master.key)
    if check.exists():
        blob = check.read_bytes()
        try:
            aead.decrypt(blob[:12], blob[12:], _CHECK_LABEL)
        except (InvalidTag, ValueError):
            raise KeyFileError(
                f"the master key {master.path} does not match the data in {state_dir}: "
                "use the key file this state directory was created with"
            ) from None
        return
    nonce = os.urandom(12)
    tmp = check.with_name(CHECK_FILE_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, nonce + aead.encrypt(nonce, b"", _CHECK_LABEL))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, check)
