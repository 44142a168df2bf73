"""Content-addressed block store, encrypted at rest.

Layout: ``<root>/ab/cdef…`` where ``abcdef…`` is the hex SHA-256 of the block's plaintext.
Each file is ``VERSION(1) ‖ nonce(12) ‖ AES-256-GCM(ciphertext ‖ tag)`` with the block ID as
associated data, so a file renamed to another ID, or sealed under another key, fails to open.

Invariants:
- a block file is created exclusively (``O_EXCL``) under its final name and filled by one
  write, or, replacing a torn one, written to a unique temp name and renamed over it. A file
  shorter than its sealed size (``sealed_size``) is a write a crash cut short: ``put`` of that
  ID replaces it, and a reader gets BlockCorrupt, never wrong bytes (the GCM tag);
- plaintext never touches the disk; only sealed bytes are written;
- equal content is stored once (``put`` of a present ID is a no-op);
- ``put`` does not fsync; ``sync(ids)`` makes the named blocks durable against power loss
  (file and directory fsync), and so does ``put(..., durable=True)`` before it returns (one
  call: a replica's store-and-fsync takes one worker-thread hop, not two). A process crash
  loses nothing already ``put``: the kernel holds it.
- every method is synchronous and thread-safe; callers on the trio thread use
  ``trio.to_thread.run_sync`` for anything larger than a few KiB;
- a full disk is an ordinary error: ``put`` of a new block raises ENOSPC (OSError) and
  leaves no file behind, both when the disk itself is full and, for a block stored for
  others (a replica's PUT_CHUNK, a cached copy: every ``put`` not called with
  ``reserved=True``), when it would eat into the margin kept for metadata or into the
  space the filesystem reserved for writes it acknowledged (``space``, see
  ``dhtfs.store.space``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dhtfs.base.durable import fsync_dir, fsync_file, sync_filesystem
from dhtfs.base.errors import BlockCorrupt, BlockMissing
from dhtfs.base.randbytes import random_bytes
from dhtfs.store.masterkey import MasterKey
from dhtfs.store.space import DiskSpace, no_space

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 1 + NONCE_BYTES
ID_BYTES = 32
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def sealed_size(plaintext_size: int) -> int:
    """Bytes on disk of a block of ``plaintext_size`` bytes."""
    return HEADER_BYTES + plaintext_size + TAG_BYTES


def block_id_of(plaintext: bytes | memoryview) -> bytes:
    """The block ID: SHA-256 of the plaintext."""
    return hashlib.sha256(plaintext).digest()


def seal(aead: AESGCM, block_id: bytes, plaintext: bytes | memoryview) -> bytearray:
    """Encrypt ``plaintext`` into the on-disk format, bound to ``block_id``: version ‖ nonce ‖
    ciphertext ‖ tag, sealed straight into one buffer of ``sealed_size`` bytes."""
    blob = bytearray(sealed_size(len(plaintext)))
    blob[0] = FORMAT_VERSION
    nonce = random_bytes(NONCE_BYTES)
    blob[1:HEADER_BYTES] = nonce
    aead.encrypt_into(nonce, plaintext, block_id, memoryview(blob)[HEADER_BYTES:])
    return blob


SCRATCH_MAX = 4 * 1024 * 1024
"""Blocks up to this size are sealed for ``put`` into a buffer kept per thread (see
``_seal_scratch``); larger ones into a fresh buffer each time."""

_scratch = threading.local()


def _seal_scratch(aead: AESGCM, block_id: bytes, plaintext: bytes | memoryview) -> memoryview:
    """``seal`` into this thread's reusable buffer: no zero-filled megabyte and no freshly
    faulted pages per block. The view is valid until this thread seals again: write it out
    and drop it before then."""
    size = sealed_size(len(plaintext))
    if size > SCRATCH_MAX:
        return memoryview(seal(aead, block_id, plaintext))
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        buf = _scratch.buf = bytearray(max(size, 64 * 1024))
    view = memoryview(buf)[:size]
    view[0] = FORMAT_VERSION
    nonce = random_bytes(NONCE_BYTES)
    view[1:HEADER_BYTES] = nonce
    aead.encrypt_into(nonce, plaintext, block_id, view[HEADER_BYTES:])
    return view


def unseal(aead: AESGCM, block_id: bytes, blob: bytes) -> bytes:
    """Decrypt a sealed block; raises BlockCorrupt if the format, tag or binding is wrong."""
    if len(blob) < HEADER_BYTES + TAG_BYTES or blob[0] != FORMAT_VERSION:
        raise BlockCorrupt(block_id, "truncated or unknown format")
    try:
        return aead.decrypt(blob[1:HEADER_BYTES], blob[HEADER_BYTES:], block_id)
    except InvalidTag:
        raise BlockCorrupt(block_id, "authentication tag does not verify") from None


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class BlockStore:
    """Encrypted block files under one directory. See the module docstring for invariants."""

    def __init__(self, root: Path, master: MasterKey) -> None:
        self.root = root
        self._aead = AESGCM(master.key)
        self._lock = threading.Lock()
        self._tmp_seq = 0
        self._root_str = str(root)
        self._dirs: set[str] = set()  # subdirectories known to exist
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.space = DiskSpace(root)
        os.chmod(root, 0o700)
        self._remove_stale_temps()
        if master.ephemeral:
            self._discard_unreadable()

    # -- paths ---------------------------------------------------------------------------------

    def path_of(self, block_id: bytes) -> Path:
        """Where the sealed file of ``block_id`` lives (whether or not it exists)."""
        if len(block_id) != ID_BYTES:
            raise ValueError(f"block id must be {ID_BYTES} bytes, got {len(block_id)}")
        h = block_id.hex()
        return self.root / h[:2] / h[2:]

    # -- operations ----------------------------------------------------------------------------

    def has(self, block_id: bytes) -> bool:
        return self.path_of(block_id).exists()

    def put(
        self,
        block_id: bytes,
        plaintext: bytes | memoryview,
        *,
        durable: bool = False,
        reserved: bool = False,
    ) -> bool:
        """Store ``plaintext`` under ``block_id``; True if it was new. Caller vouches for the ID.

        Three system calls for a new block (open with O_EXCL, write, close); an existing
        complete file ends the call at the open (dedup). A torn file is replaced atomically.
        ``durable``: return only once the block (new or already there) is fsynced, file and
        directory, as ``sync`` would make it. ``reserved``: the space was reserved by the
        caller (the filesystem's writes); else a new block that does not fit beside the
        reservations and the metadata margin is refused with ENOSPC.
        """
        if len(block_id) != ID_BYTES:
            raise ValueError(f"block id must be {ID_BYTES} bytes, got {len(block_id)}")
        h = block_id.hex()
        directory = f"{self._root_str}/{h[:2]}"
        path = f"{directory}/{h[2:]}"
        if directory not in self._dirs:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._dirs.add(directory)
        size = sealed_size(len(plaintext))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if os.stat(path).st_size == size:
                if durable:  # written earlier, maybe not fsynced yet
                    self.sync([block_id])
                return False
            log.warning("replacing torn block file %s", path)
            with self._space_error():
                self._write_atomically(path, seal(self._aead, block_id, plaintext), durable)
            if durable:
                fsync_dir(directory)
            return True
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                self.space.invalidate()
            raise
        try:
            if not reserved and not self.space.room(size):
                self.space.refusals += 1
                raise no_space(f"not storing a block of {size} bytes for others")
            with self._space_error():
                _write_all(fd, _seal_scratch(self._aead, block_id, plaintext))
                if durable:
                    os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        self.space.wrote(size)
        if durable:
            fsync_dir(directory)
        return True

    @contextlib.contextmanager
    def _space_error(self) -> Iterator[None]:
        """A write that failed for want of space makes the next space check measure."""
        try:
            yield
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                self.space.invalidate()
            raise

    def put_verified(
        self, block_id: bytes, plaintext: bytes | memoryview, *, durable: bool = False
    ) -> bool:
        """Like ``put``, but first checks that ``block_id`` is the SHA-256 of ``plaintext``."""
        if block_id_of(plaintext) != block_id:
            raise BlockCorrupt(block_id, "content does not hash to its id")
        return self.put(block_id, plaintext, durable=durable)

    def sealed(self, block_id: bytes) -> bytes:
        """The block's file as stored (ciphertext: what the fsync journal keeps of it);
        BlockMissing if absent."""
        try:
            return self.path_of(block_id).read_bytes()
        except FileNotFoundError:
            raise BlockMissing(block_id, "not stored on this node") from None

    def put_sealed(self, block_id: bytes, blob: bytes) -> bool:
        """Restore a block from its stored bytes (``sealed``) unless a file with exactly those
        bytes is there; True if it wrote. The bytes must open under ``block_id`` with this
        store's key (BlockCorrupt otherwise: nothing is written). Not fsynced: the caller
        syncs (``sync``)."""
        unseal(self._aead, block_id, blob)
        path = self.path_of(block_id)
        try:
            if path.read_bytes() == blob:
                return False
        except FileNotFoundError:
            path.parent.mkdir(mode=0o700, exist_ok=True)
        with self._space_error():
            self._write_atomically(str(path), blob)
        self.space.wrote(len(blob))
        return True

    def get(self, block_id: bytes) -> bytes:
        """The plaintext of ``block_id``; BlockMissing or BlockCorrupt otherwise."""
        try:
            blob = self.path_of(block_id).read_bytes()
        except FileNotFoundError:
            raise BlockMissing(block_id, "not stored on this node") from None
        return unseal(self._aead, block_id, blob)

    def touch(self, block_id: bytes) -> bool:
        """Set the block file's mtime to now (its collection grace starts again); True if
        it is stored."""
        try:
            os.utime(self.path_of(block_id))
            return True
        except FileNotFoundError:
            return False

    def age(self, block_id: bytes, now: float) -> float | None:
        """Seconds since the block file was written or last ``touch``ed; None if absent."""
        try:
            return now - os.stat(self.path_of(block_id)).st_mtime
        except FileNotFoundError:
            return None

    def remove(self, block_id: bytes) -> bool:
        """Delete a block; True if it was present."""
        try:
            self.path_of(block_id).unlink()
            return True
        except FileNotFoundError:
            return False

    def sync(self, block_ids: Iterable[bytes]) -> None:
        """fsync the named block files and their directories (power-loss durability)."""
        dirs: set[Path] = set()
        for block_id in block_ids:
            path = self.path_of(block_id)
            if fsync_file(path):
                dirs.add(path.parent)
        for d in dirs:
            fsync_dir(d)

    def sync_all(self) -> None:
        """Make every block written so far durable (the filesystem's own sync: one call)."""
        sync_filesystem(self.root)

    def ids(self) -> Iterator[bytes]:
        """Every stored block ID (order unspecified)."""
        for sub in self.root.iterdir():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for f in sub.iterdir():
                if len(f.name) == 2 * ID_BYTES - 2 and "." not in f.name:
                    yield bytes.fromhex(sub.name + f.name)

    # -- internals -----------------------------------------------------------------------------

    def _write_atomically(self, path: str, blob: bytes | bytearray, durable: bool = False) -> None:
        with self._lock:
            self._tmp_seq += 1
            seq = self._tmp_seq
        tmp = f"{path}.{os.getpid()}.{seq}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                _write_all(fd, blob)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _remove_stale_temps(self) -> None:
        for tmp in self.root.glob("*/*.tmp"):
            tmp.unlink(missing_ok=True)

    def _discard_unreadable(self) -> None:
        count = sum(1 for _ in self.ids())
        if count:
            log.warning(
                "ephemeral key: discarding %d blocks sealed by an earlier key in %s "
                "(the swarm refills what it still needs)",
                count,
                self.root,
            )
            for sub in self.root.iterdir():
                if sub.is_dir():
                    shutil.rmtree(sub)
