"""At rest: no plaintext in the state directory, tight modes, ephemeral keys, corrupt blocks."""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.mounting import Mount

pytestmark = pytest.mark.mount

MIB = 1024 * 1024


def _all_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (not the control socket)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_socket():
                yield path


def _stopped(m: Mount) -> None:
    assert m.stop() == 0


def _scan(mount: Mount, needles: list[bytes]) -> tuple[int, set[str]]:
    """Assert no needle occurs in any state file or the log; (bytes scanned, file names)."""
    scanned = 0
    names: set[str] = set()
    assert mount.log is not None
    for path in [*_all_files(mount.state), mount.log]:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:  # a temp file that went away meanwhile
            continue
        scanned += len(blob)
        names.add(path.name)
        for needle in needles:
            assert needle not in blob, f"plaintext found in {path}"
    return scanned, names


@pytest.mark.parametrize("debug", [False, True], ids=["quiet", "debug-log"])
def test_no_plaintext_in_state_dir(tmp_path: Path, debug: bool) -> None:
    """A random marker written through the mount appears in no byte of any state file
    (block files, SQLite db and WAL while mounted and after unmount, logs, even at debug level)."""
    mount = Mount(tmp_path / "mnt", tmp_path / "state", options=["debug"] if debug else [])
    mount.start()
    try:
        _write_markers(mount)
    finally:
        mount.close()


def _write_markers(mount: Mount) -> None:
    marker = secrets.token_hex(32).encode()  # 64 random hex characters
    needles = [marker, marker[:24], marker[40:]]
    root = mount.mountpoint
    (root / "only-marker").write_bytes(marker)
    (root / "repeated").write_bytes(marker * 40_000)  # 2.4 MiB over several chunks
    (root / "embedded").write_bytes(os.urandom(777) + marker + os.urandom(MIB))
    with open(root / "patched", "wb") as fh:
        fh.write(os.urandom(3 * MIB))
        fh.seek(MIB - 10)  # straddles a chunk boundary
        fh.write(marker)
    os.rename(root / "embedded", root / "embedded-renamed")
    os.truncate(root / "repeated", 100_000)
    with open(root / "fsynced", "wb") as fh:
        fh.write(marker * 3)
        fh.flush()
        os.fsync(fh.fileno())
    assert (root / "only-marker").read_bytes() == marker
    scanned, names = _scan(mount, needles)  # while mounted: the WAL is live
    assert scanned > 3 * MIB  # the encrypted blocks were there to scan
    assert {"namespace.db", "namespace.db-wal"} <= names
    _stopped(mount)
    scanned, names = _scan(mount, needles)
    assert scanned > 3 * MIB
    assert "namespace.db" in names


def test_state_modes_and_key_file(tmp_path: Path) -> None:
    """State dir 0700 (even if it existed looser), key file 0600 of 32 bytes, no file readable
    by group or others."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    m = Mount(tmp_path / "mnt", state).start()
    try:
        (m.mountpoint / "f").write_bytes(os.urandom(2 * MIB))
        (m.mountpoint / "d").mkdir()
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
    finally:
        _stopped(m)
    key = state / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in [*_all_files(state), *(p for p in state.rglob("*") if p.is_dir())]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {mode:o}"


def test_ephemeral_key(tmp_path: Path) -> None:
    """key=ephemeral writes no key; after a restart old blocks are discarded with a warning
    and old files read as EIO, never as garbage; new writes work."""
    state = tmp_path / "state"
    m = Mount(tmp_path / "mnt", state, options=["key=ephemeral"]).start()
    try:
        old = os.urandom(2 * MIB + 5)
        (m.mountpoint / "old").write_bytes(old)
        (m.mountpoint / "old-small").write_bytes(b"small")
        assert (m.mountpoint / "old").read_bytes() == old
        _stopped(m)
        assert not (state / "master.key").exists()
        # No at-rest key anywhere; the swarm identity (state/swarm: the private swarm's CA
        # and node certificate keys) is not an at-rest key and stays, so the node ID does.
        assert not [
            p for p in _all_files(state)
            if p.name.endswith((".key", ".key.tmp")) and p.parent != state / "swarm"
        ]
        assert len(list((state / "chunks").rglob("*/*"))) >= 3

        m.start()
        log = m.log_text()
        assert "WARNING" in log and "discarding" in log
        assert sorted(os.listdir(m.mountpoint)) == ["old", "old-small"]
        assert (m.mountpoint / "old").stat().st_size == len(old)
        for name in ("old", "old-small"):
            with pytest.raises(OSError) as info:
                (m.mountpoint / name).read_bytes()
            assert info.value.errno == errno.EIO
        assert not list((state / "chunks").rglob("*/*"))
        fresh = os.urandom(MIB + 1)
        (m.mountpoint / "new").write_bytes(fresh)
        assert (m.mountpoint / "new").read_bytes() == fresh
        (m.mountpoint / "old").write_bytes(b"rewritten")
        assert (m.mountpoint / "old").read_bytes() == b"rewritten"
    finally:
        m.close()


def _block_path(state: Path, block_hex: str) -> Path:
    return state / "chunks" / block_hex[:2] / block_hex[2:]


def _check_reads(path: Path, data: bytes, bad_offsets: list[int]) -> None:
    """Every read returns the right bytes or EIO; reads at ``bad_offsets`` give EIO."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in range(0, len(data), 256 * 1024):
            try:
                got = os.pread(fd, 4096, off)
            except OSError as exc:
                assert exc.errno == errno.EIO
                continue
            assert got == data[off : off + 4096], f"wrong bytes at {off}"
        for off in bad_offsets:
            with pytest.raises(OSError) as info:
                os.pread(fd, 4096, off)
            assert info.value.errno == errno.EIO
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        path.read_bytes()
    assert info.value.errno == errno.EIO


def test_corrupt_blocks_give_eio(mount: Mount) -> None:
    """A flipped byte, a truncated, a swapped and a missing block file each read as EIO."""
    root = mount.mountpoint
    files = {name: os.urandom(3 * MIB + 100) for name in ("flip", "trunc", "swap", "gone")}
    files["intact"] = os.urandom(2 * MIB)
    for name, data in files.items():
        (root / name).write_bytes(data)
    blocks = {name: json.loads(os.getxattr(root / name, "user.dhtfs.chunks")) for name in files}
    _stopped(mount)

    flip = _block_path(mount.state, blocks["flip"][1])
    blob = bytearray(flip.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    flip.write_bytes(bytes(blob))
    trunc = _block_path(mount.state, blocks["trunc"][2])
    trunc.write_bytes(trunc.read_bytes()[:20])
    swap = _block_path(mount.state, blocks["swap"][0])
    swap.write_bytes(_block_path(mount.state, blocks["swap"][1]).read_bytes())
    _block_path(mount.state, blocks["gone"][1]).unlink()

    mount.start()
    _check_reads(root / "flip", files["flip"], [MIB + 12345])
    _check_reads(root / "trunc", files["trunc"], [2 * MIB + 4096])
    _check_reads(root / "swap", files["swap"], [0])
    _check_reads(root / "gone", files["gone"], [MIB])
    assert (root / "intact").read_bytes() == files["intact"]
    assert "Traceback" not in mount.log_text()
    # The mount survives: writes and reads still work.
    (root / "after").write_bytes(b"still serving")
    assert (root / "after").read_bytes() == b"still serving"


def test_daemon_mode_log_file_is_private(tmp_path: Path) -> None:
    """In daemon mode the log goes to <state>/dhtfs.log, readable by root only."""
    import subprocess

    from testkit.env import MOUNT, UMOUNT
    from testkit.mounting import cleanup

    state, mnt = tmp_path / "state", tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run([MOUNT, str(mnt), "-o", f"state={state}"], check=True, timeout=30)
        (mnt / "f").write_bytes(b"x")
    finally:
        subprocess.run([UMOUNT, str(mnt)], check=False, timeout=90)
        cleanup(mnt)
    log = state / "dhtfs.log"
    assert log.exists()
    assert stat.S_IMODE(log.stat().st_mode) & 0o077 == 0
