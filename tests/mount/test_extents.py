"""File versions as extents over content-addressed blocks, on a real mount.

``user.dhtfs.extents`` is a JSON list of ``[file_offset, length, block_id_hex, block_offset]``
in file order (holes are not listed); ``user.dhtfs.chunks`` lists the block id of each
extent. A small write makes a small block, holes cost nothing, compaction rewrites a chunk of
many small extents into one block in the background, and state directories from before
extents (tests/data/state-v8.tar.gz) are migrated at mount.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import json
import os
import random
import stat
import tarfile
import threading
from collections.abc import Collection
from pathlib import Path

import pytest

from testkit.mounting import Mount
from testkit.wait import wait_until
from tests.mount.conftest import SMALL_CHUNK

pytestmark = pytest.mark.mount

KIB = 1024
MIB = 1024 * KIB
PIB = 2**50
DATA = Path(__file__).resolve().parent.parent / "data"
OFF_T_MAX = 2**63 - 1


# -- helpers ------------------------------------------------------------------------------------


def _assert_same(actual: bytes, expected: bytes, what: str) -> None:
    """Equal bytes, or a failure naming the first differing offset (not 2 MiB of repr)."""
    if actual == expected:
        return
    n = min(len(actual), len(expected))
    first = next((i for i in range(n) if actual[i] != expected[i]), n)
    raise AssertionError(
        f"{what}: {len(actual)} bytes read, {len(expected)} expected; first difference at "
        f"offset {first}: got {actual[first : first + 16].hex()} "
        f"expected {expected[first : first + 16].hex()}"
    )


def _pread_all(fd: int, limit: int) -> bytes:
    """Everything from offset 0 to EOF (at most ``limit`` bytes)."""
    parts = []
    pos = 0
    while pos < limit:
        part = os.pread(fd, min(limit - pos, MIB), pos)
        if not part:
            break
        parts.append(part)
        pos += len(part)
    return b"".join(parts)


def _uncached_read(fd: int, limit: int) -> bytes:
    """Read through the daemon, not the kernel's page cache (the mount keeps caches across
    opens and writes are not write-back, so the cached pages are clean and droppable)."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return _pread_all(fd, limit)


def _xattr_json(path: Path, name: str) -> list:
    try:
        raw = os.getxattr(path, name)
    except OSError as exc:
        raise AssertionError(
            f"getxattr({path.name}, {name}) failed with "
            f"{errno.errorcode.get(exc.errno, exc.errno)}: the mount does not expose extents"
        ) from None
    return json.loads(raw)


def _extents(path: Path, *, with_chunks: bool = True) -> list[list]:
    """``user.dhtfs.extents`` of ``path``, checked well-formed: sorted, non-overlapping,
    non-empty extents of 64-hex-digit block ids; ``with_chunks``: and ``user.dhtfs.chunks``
    names the block of each extent in the same order (only while nothing changes the file:
    the two are separate reads)."""
    extents = _xattr_json(path, "user.dhtfs.extents")
    end = 0
    for ext in extents:
        assert isinstance(ext, list) and len(ext) == 4, f"{path.name}: bad extent {ext!r}"
        offset, length, block, block_offset = ext
        assert offset >= end, f"{path.name}: {ext} overlaps or is out of order: {extents}"
        assert length > 0 and block_offset >= 0, f"{path.name}: bad extent {ext}"
        assert len(block) == 64 and int(block, 16) >= 0, f"{path.name}: bad block id {ext}"
        end = offset + length
    if not with_chunks:
        return extents
    chunks = _xattr_json(path, "user.dhtfs.chunks")
    assert chunks == [ext[2] for ext in extents], f"{path.name}: chunks {chunks} != extents"
    return extents


def _errno_of_truncate(path: Path, length: int) -> int:
    """errno of truncate(2) given ``length``'s low 64 bits (0 if it succeeds): reaches lengths
    os.truncate refuses to pass."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.truncate.argtypes = [ctypes.c_char_p, ctypes.c_uint64]
    libc.truncate.restype = ctypes.c_int
    if libc.truncate(bytes(path), length % 2**64) == 0:
        return 0
    return ctypes.get_errno()


def _block_file(state: Path, block: str) -> Path:
    return state / "chunks" / block[:2] / block[2:]


def _disk_usage(root: Path) -> tuple[int, list[tuple[int, str]]]:
    """Bytes allocated under ``root`` (du, not apparent size) and the largest files."""
    sizes = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            sizes.append((path.lstat().st_blocks * 512, str(path.relative_to(root))))
    return sum(s for s, _ in sizes), sorted(sizes, reverse=True)[:5]


# -- a) random writes against a shadow copy -----------------------------------------------------

OPS = 1500
SPAN = 2 * MIB
MAX_WRITE = 200 * KIB


def _random_op(rng: random.Random, size: int) -> tuple:
    """One op on a file of ``size`` bytes: ("write", offset, data), ("truncate", size, how)
    or ("fsync",)."""
    r = rng.random()
    if r < 0.75:
        length = rng.choice(
            [rng.randint(1, 512), rng.randint(1, 8 * KIB), rng.randint(1, MAX_WRITE)]
        )
        where = rng.random()
        if where < 0.6 and size:  # inside the file
            offset = rng.randrange(size)
        elif where < 0.85:  # anywhere in the span (past EOF if the file is short)
            offset = rng.randrange(SPAN)
        else:  # just past EOF: leaves a hole
            offset = min(size + rng.randint(1, 300 * KIB), SPAN)
        return ("write", offset, rng.randbytes(length))
    if r < 0.95:
        if rng.random() < 0.5:
            new = rng.randint(0, size)  # down (or unchanged)
        else:
            new = min(size + rng.randint(1, 512 * KIB), SPAN + MAX_WRITE)  # up
        if rng.random() < 0.3:  # on or next to a chunk boundary
            new = max(0, new - new % SMALL_CHUNK + rng.choice([-1, 0, 1]))
        return ("truncate", new, rng.choice(["path", "fd"]))
    return ("fsync",)


def test_random_writes_match_shadow(small_mount: Mount) -> None:
    """1,500 seeded random pwrites (1 B..200 KiB, inside the file, anywhere in 2 MiB, past
    EOF leaving holes), truncates up and down and fsyncs on a 64 KiB-chunk mount read back
    exactly like a bytearray given the same ops: every 100 ops (through the daemon, not the
    page cache), after a clean remount, and after kill -9 of the daemon (everything fsynced
    and closed before the kill is there)."""
    m = small_mount
    path = m.mountpoint / "f"
    rng = random.Random(0x5EED)
    shadow = bytearray()

    def compare(fd: int, what: str) -> None:
        assert os.fstat(fd).st_size == len(shadow), f"{what}: st_size"
        assert os.stat(path).st_size == len(shadow), f"{what}: st_size by path"
        _assert_same(_uncached_read(fd, len(shadow) + 1), bytes(shadow), what)

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for n in range(1, OPS + 1):
            op = _random_op(rng, len(shadow))
            if op[0] == "write":
                _, offset, data = op
                assert os.pwrite(fd, data, offset) == len(data), f"op {n}: short write"
                if offset > len(shadow):
                    shadow.extend(bytes(offset - len(shadow)))
                shadow[offset : offset + len(data)] = data
            elif op[0] == "truncate":
                _, new, how = op
                if how == "path":
                    os.truncate(path, new)
                else:
                    os.ftruncate(fd, new)
                if new < len(shadow):
                    del shadow[new:]
                else:
                    shadow.extend(bytes(new - len(shadow)))
            else:
                os.fsync(fd)
            if n % 100 == 0:
                compare(fd, f"after op {n} ({op[0]})")
            if n == 500:
                os.close(fd)
                fd = -1
                assert m.stop() == 0, m.log_text()
                m.start()
                fd = os.open(path, os.O_RDWR)
                compare(fd, "after a clean remount at op 500")
            elif n == 1000:
                os.fsync(fd)
                os.close(fd)
                fd = -1
                m.kill()  # SIGKILL; the stale mount is removed
                m.start()
                fd = os.open(path, os.O_RDWR)
                compare(fd, "after kill -9 and restart at op 1000")
    finally:
        if fd >= 0:
            os.close(fd)
    assert m.stop() == 0, m.log_text()
    m.start()
    with open(path, "rb") as fh:
        _assert_same(fh.read(), bytes(shadow), "after the final remount")


# -- b) holes cost nothing ------------------------------------------------------------------


def test_sparse_petabyte_file(small_mount: Mount) -> None:
    """A 1 PiB file is all hole: truncate to 2**50 succeeds and allocates nothing (st_blocks,
    state directory), reads anywhere return zeros, 4 KiB writes in the middle and at the very
    end read back (also after a remount) without changing the size; truncating down drops them
    (growing again reads zeros, not the old data); truncate to 2**63 is EFBIG or EINVAL (not
    EIO) and changes nothing."""
    m = small_mount
    f = m.mountpoint / "huge"
    f.write_bytes(b"")
    os.truncate(f, PIB)
    st = f.stat()
    assert st.st_size == PIB
    assert st.st_blocks * 512 < MIB, f"an empty 1 PiB file claims {st.st_blocks} blocks"
    rng = random.Random(50)
    middle, tail, head = rng.randbytes(4096), rng.randbytes(4096), rng.randbytes(3000)
    zeros = bytes(4096)
    fd = os.open(f, os.O_RDWR)
    try:
        for offset in (0, PIB // 2, PIB - 4096):
            assert os.pread(fd, 4096, offset) == zeros, f"hole at {offset}"
        assert os.pwrite(fd, middle, PIB // 2) == 4096
        assert os.pwrite(fd, tail, PIB - 4096) == 4096
        assert os.pwrite(fd, head, 1000) == 3000
        assert os.fstat(fd).st_size == PIB, "writes inside the file changed its size"
        assert os.pread(fd, 12288, PIB // 2 - 4096) == zeros + middle + zeros
        assert os.pread(fd, 8192, PIB - 8192) == zeros + tail
        assert os.pread(fd, 4096, PIB) == b""
        os.fsync(fd)
    finally:
        os.close(fd)
    assert f.stat().st_blocks * 512 < MIB

    assert m.stop() == 0, m.log_text()
    m.start()
    st = f.stat()
    assert st.st_size == PIB
    assert st.st_blocks * 512 < MIB, f"1 PiB with 11 KiB of data claims {st.st_blocks} blocks"
    with open(f, "rb", buffering=0) as fh:
        fd = fh.fileno()
        assert os.pread(fd, 12288, PIB // 2 - 4096) == zeros + middle + zeros
        assert os.pread(fd, 8192, PIB - 8192) == zeros + tail
        assert os.pread(fd, 8192, 0) == bytes(1000) + head + bytes(4192)
        assert os.pread(fd, 4096, 3 * (PIB // 4) + 12345) == zeros
    used, largest = _disk_usage(m.state)
    assert used < 20 * MIB, f"the state directory uses {used} bytes for a sparse file: {largest}"

    os.truncate(f, 4096)
    assert f.stat().st_size == 4096
    expected = bytes(1000) + head + bytes(96)
    _assert_same(f.read_bytes(), expected, "after truncating 1 PiB down to 4096")
    os.truncate(f, PIB)  # growing again: the dropped writes must not come back
    with open(f, "rb", buffering=0) as fh:
        assert os.pread(fh.fileno(), 4096, PIB // 2) == zeros
        assert os.pread(fh.fileno(), 4096, PIB - 4096) == zeros
    os.truncate(f, 4096)

    # 2**63 does not fit in off_t (os.truncate raises OverflowError before the syscall): its
    # 64 bits as truncate(2) gets them are refused, and nothing changes.
    assert _errno_of_truncate(f, 2**63) in (errno.EFBIG, errno.EINVAL)
    assert f.stat().st_size == 4096
    _assert_same(f.read_bytes(), expected, "after a refused truncate to 2**63")
    # 2**63 - 1, the kernel's limit, reaches the daemon: taken (and all hole) or refused
    # with EFBIG/EINVAL changing nothing, never EIO.
    try:
        os.truncate(f, OFF_T_MAX)
    except OSError as exc:
        assert exc.errno in (errno.EFBIG, errno.EINVAL), exc
        assert f.stat().st_size == 4096
    else:
        assert f.stat().st_size == OFF_T_MAX
        with open(f, "rb", buffering=0) as fh:
            assert os.pread(fh.fileno(), 4096, OFF_T_MAX - 4096) == zeros
        os.truncate(f, 4096)
    _assert_same(f.read_bytes(), expected, "after truncating to 2**63 - 1")


# -- c) background compaction ---------------------------------------------------------------


class _Reader(threading.Thread):
    """Reads a file whole, through the daemon, in a loop until ``finish``; keeps what it saw."""

    def __init__(self, path: Path, expected: bytes) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.expected = expected
        self.done = threading.Event()
        self.reads = 0
        self.mismatches: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.done.is_set() and len(self.errors) < 20:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    got = _uncached_read(fd, len(self.expected) + 1)
                finally:
                    os.close(fd)
            except OSError as exc:
                self.errors.append(repr(exc))
                self.done.wait(0.05)
                continue
            try:
                _assert_same(got, self.expected, f"read {self.reads}")
            except AssertionError as exc:
                self.mismatches.append(str(exc))
            self.reads += 1
            self.done.wait(0.02)  # pacing, to leave the daemon CPU for compaction

    def finish(self) -> None:
        self.done.set()
        self.join(30)
        assert not self.is_alive(), "the reader is stuck"


def test_compaction_under_concurrent_reads(small_mount: Mount) -> None:
    """400 random 4 KiB writes (each fsynced) into the first four 64 KiB chunks leave many
    small extents; once the file is idle, background compaction rewrites each of those
    chunks as one block (extent ``[i * chunk, chunk, sha256(chunk), 0]``) while a reader
    keeps reading the whole file: every read, before, during and after, returns exactly the
    written bytes. The compacted layout is what a remount finds, and its blocks are in the
    block store."""
    m = small_mount
    c = SMALL_CHUNK
    f = m.mountpoint / "compact.bin"
    rng = random.Random(400)
    data = bytearray(rng.randbytes(16 * c))
    f.write_bytes(data)
    with open(f, "r+b", buffering=0) as fh:
        for _ in range(400):
            offset = rng.randrange(4 * c - 4096 + 1)
            patch = rng.randbytes(4096)
            assert os.pwrite(fh.fileno(), patch, offset) == 4096
            os.fsync(fh.fileno())  # each write its own version: no write buffer merges them
            data[offset : offset + 4096] = patch
    expected = bytes(data)

    def head() -> list[list]:
        return [ext for ext in _extents(f, with_chunks=False) if ext[0] < 4 * c]

    before = head()
    assert len(before) > 4, f"400 small writes left only {len(before)} extents: {before}"

    reader = _Reader(f, expected)
    reader.start()
    last: list[list] = before
    try:

        def compacted() -> bool:
            nonlocal last
            last = head()
            return len(last) == 4

        try:
            wait_until(compacted, "compaction", timeout=60)
        except TimeoutError:
            pytest.fail(
                f"no compaction within 60 s: chunks 0..3 still hold {len(last)} extents "
                f"(first: {last[:6]})"
            )
        wanted = max(5, reader.reads + 3)  # some reads of the compacted layout too
        wait_until(lambda: reader.reads >= wanted or not reader.is_alive(), "reads after it")
    finally:
        reader.finish()
    assert reader.errors == [], reader.errors
    assert reader.mismatches == [], reader.mismatches[:3]
    assert reader.reads >= 5, f"only {reader.reads} complete reads"

    compacted_head = [
        [i * c, c, hashlib.sha256(expected[i * c : (i + 1) * c]).hexdigest(), 0] for i in range(4)
    ]
    assert last == compacted_head
    _extents(f)  # and user.dhtfs.chunks agrees, now that the file is quiet
    for ext in compacted_head:
        assert _block_file(m.state, ext[2]).is_file(), ext

    assert m.stop() == 0, m.log_text()
    m.start()
    _assert_same(f.read_bytes(), expected, "after compaction and a remount")
    assert head() == compacted_head, "the compacted layout did not survive a remount"
    for ext in _extents(f):
        assert _block_file(m.state, ext[2]).is_file(), f"block of {ext} is gone"


# -- d) small writes make small blocks -----------------------------------------------------------


def test_small_write_makes_small_block(mount: Mount) -> None:
    """On a 1 MiB-chunk mount, a 4 KiB write into the middle of a 4 MiB file is stored as a
    4 KiB block of its own (id: SHA-256 of those bytes, sealed in the block store at
    chunks/ab/cdef...), not as a rewrite of the 1 MiB chunk around it; the file's extents
    still cover all 4 MiB and the content reads back."""
    f = mount.mountpoint / "four.bin"
    rng = random.Random(4)
    data = bytearray(rng.randbytes(4 * MIB))
    f.write_bytes(data)
    offset = MIB + 8 * KIB
    patch = rng.randbytes(4096)
    with open(f, "r+b", buffering=0) as fh:
        assert os.pwrite(fh.fileno(), patch, offset) == 4096
    data[offset : offset + 4096] = patch

    extents = _extents(f)
    block = hashlib.sha256(patch).hexdigest()
    assert [offset, 4096, block, 0] in extents, extents
    assert extents[0][0] == 0
    for prev, nxt in itertools.pairwise(extents):
        assert prev[0] + prev[1] == nxt[0], f"a hole or gap between {prev} and {nxt}"
    assert extents[-1][0] + extents[-1][1] == 4 * MIB, extents[-1]
    path = _block_file(mount.state, block)
    assert path.is_file(), f"{path} is not in the chunk store"
    assert path.stat().st_size < 2 * 4096, f"a 4 KiB write stored {path.stat().st_size} bytes"
    _assert_same(f.read_bytes(), bytes(data), "four.bin")


# -- e) migration of a state directory made before extents ---------------------------------


def _check_manifest(root: Path, manifest: dict[str, dict], skip: Collection[str] = ()) -> None:
    """Every manifest entry (type, mode, size, content hash, link count, user xattrs, symlink
    target) matches the tree, and the tree has no other entries."""
    problems: list[str] = []
    present = {
        str((Path(d) / n).relative_to(root)) for d, ds, fs in os.walk(root) for n in [*ds, *fs]
    }
    if present != set(manifest):
        problems.append(
            f"missing {sorted(set(manifest) - present)}, extra {sorted(present - set(manifest))}"
        )
    for rel, want in manifest.items():
        if rel in skip or rel not in present:
            continue
        path = root / rel
        st = path.lstat()
        kind = {stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFREG: "file"}.get(
            stat.S_IFMT(st.st_mode)
        )
        got: dict[str, object] = {"type": kind, "mode": stat.S_IMODE(st.st_mode)}
        if kind == "symlink":
            got["target"] = os.readlink(path)
        else:
            got["xattrs"] = {k: os.getxattr(path, k).decode() for k in os.listxattr(path)}
        if kind == "file":
            got["size"] = st.st_size
            got["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            got["nlink"] = st.st_nlink
        for key, value in got.items():
            if value != want[key]:
                problems.append(f"{rel}: {key} is {value!r}, expected {want[key]!r}")
    assert not problems, "\n".join(problems)


def test_migrates_state_from_v8(tmp_path: Path) -> None:
    """A state directory written by 0dbd79b (one block id per 64 KiB chunk, holes as null ids;
    see tests/data/README.md) mounts with the current code: every file, directory, hard link,
    symlink and xattr is as it was; a write across a chunk boundary of a migrated file, a
    truncate of a migrated sparse file into its data and back up, and an append through one
    name of a hard link read back after a remount, with the rest unchanged; migrated files
    expose well-formed extents that stay inside each file and skip its holes."""
    with tarfile.open(DATA / "state-v8.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    manifest: dict[str, dict] = json.loads((DATA / "state-v8.json").read_text())
    m = Mount(tmp_path / "mnt", tmp_path / "state", options=[f"chunk_size={SMALL_CHUNK}"])
    m.start()
    try:
        root = m.mountpoint
        _check_manifest(root, manifest)
        assert (root / "patched.bin").stat().st_ino == (root / "a/patched-link.bin").stat().st_ino

        multi = root / "a/b/c/multi.bin"
        multi_data = bytearray(multi.read_bytes())
        patch = random.Random(88).randbytes(10_000)
        offset = 2 * SMALL_CHUNK - 5000
        with open(multi, "r+b", buffering=0) as fh:
            assert os.pwrite(fh.fileno(), patch, offset) == len(patch)
        multi_data[offset : offset + len(patch)] = patch

        sparse = root / "sparse.bin"
        cut = 5 * MIB + 1000  # through the middle of its only 4 KiB of data
        sparse_data = sparse.read_bytes()[:cut] + bytes(8 * MIB - cut)
        os.truncate(sparse, cut)
        os.truncate(sparse, 8 * MIB)

        linked = (root / "patched.bin").read_bytes() + b"appended through the other name"
        with open(root / "a/patched-link.bin", "ab") as fh:
            fh.write(b"appended through the other name")

        assert m.stop() == 0, m.log_text()
        m.start()
        _assert_same(multi.read_bytes(), bytes(multi_data), "multi.bin after a remount")
        _assert_same(sparse.read_bytes(), sparse_data, "sparse.bin after a remount")
        _assert_same((root / "patched.bin").read_bytes(), linked, "patched.bin")
        _assert_same((root / "a/patched-link.bin").read_bytes(), linked, "patched-link.bin")
        changed = {"a/b/c/multi.bin", "sparse.bin", "patched.bin", "a/patched-link.bin"}
        _check_manifest(root, manifest, skip=changed)

        for rel, want in manifest.items():
            if want["type"] != "file":
                continue
            path = root / rel
            extents = _extents(path)
            size = path.stat().st_size
            assert all(ext[0] + ext[1] <= size for ext in extents), f"{rel}: {extents}"
            for ext in extents:
                assert _block_file(m.state, ext[2]).is_file(), f"{rel}: block of {ext} is gone"
        assert _extents(root / "empty") == []
        sparse_extents = _extents(sparse)
        covered = sum(ext[1] for ext in sparse_extents)
        assert covered <= SMALL_CHUNK, f"holes of sparse.bin are stored: {sparse_extents}"
    finally:
        m.close()
