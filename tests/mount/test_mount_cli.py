"""mount.dhtfs / umount.dhtfs as mount(8), fstab and an operator use them."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dhtfs.umount import daemon_pid, process_alive
from testkit.env import MOUNT, UMOUNT
from testkit.mounting import Mount, is_mounted, unmount_and_reap
from testkit.shell import sh
from testkit.wait import wait_until

pytestmark = pytest.mark.mount



@contextmanager
def cleaned(mountpoint: Path) -> Iterator[None]:
    """Whatever a test mounts at ``mountpoint`` in the background is gone afterwards."""
    try:
        yield
    finally:
        unmount_and_reap(mountpoint, timeout=20)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Non-zero exit, exactly one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mount.dhtfs: ")
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "cli-mnt"  # not "mnt": the ``mount`` fixture may use that
    path.mkdir()
    with cleaned(path):
        yield path


FOREGROUND = pytest.mark.parametrize("fg", [[], ["-f"]], ids=["daemon", "foreground"])


@FOREGROUND
@pytest.mark.parametrize(
    ("option", "word"),
    [
        ("bogus=1", "bogus"),
        ("chunk_size=banana", "chunk_size"),
        ("chunk_size=100", "chunk_size"),
        ("chunk_size=1G", "chunk_size"),
        ("debug=maybe", "debug"),
        ("commit_interval=0", "commit_interval"),
        ("commit_interval=soon", "commit_interval"),
        ("swarm=bad/name", "swarm"),
    ],
)
def test_bad_option(mnt: Path, tmp_path: Path, fg: list[str], option: str, word: str) -> None:
    """A bad -o option is one line on stderr and a non-zero exit, and nothing is mounted."""
    result = sh([MOUNT, mnt, *fg, "-o", f"state={tmp_path / 's'},{option}"], check=False)
    assert_one_line_error(result, word)
    assert not is_mounted(mnt)


def test_unknown_flag(mnt: Path, tmp_path: Path) -> None:
    """An unknown command-line flag is a usage error (exit 2) naming the flag, no traceback."""
    result = sh([MOUNT, mnt, "--bogus", "-o", f"state={tmp_path / 's'}"], check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--bogus" in result.stderr.strip().splitlines()[-1]
    assert not is_mounted(mnt)


@FOREGROUND
def test_missing_mountpoint(tmp_path: Path, fg: list[str]) -> None:
    """A mount point that does not exist is a one-line error."""
    missing = tmp_path / "nope"
    result = sh([MOUNT, missing, *fg, "-o", f"state={tmp_path / 's'}"], check=False)
    assert_one_line_error(result, str(missing), "does not exist")


def test_mountpoint_is_a_file(tmp_path: Path) -> None:
    """A mount point that is a regular file is a one-line error."""
    f = tmp_path / "file"
    f.write_text("x")
    result = sh([MOUNT, f, "-o", f"state={tmp_path / 's'}"], check=False)
    assert_one_line_error(result, "not a directory")


@FOREGROUND
def test_already_mounted(mount: Mount, tmp_path: Path, fg: list[str]) -> None:
    """Mounting over a live mount is refused with one line; the live mount keeps working."""
    (mount.mountpoint / "f").write_text("still here")
    result = sh([MOUNT, mount.mountpoint, *fg, "-o", f"state={tmp_path / 'other'}"], check=False)
    assert_one_line_error(result, "already")
    assert (mount.mountpoint / "f").read_text() == "still here"
    assert mount.proc is not None and mount.proc.poll() is None


def test_state_dir_in_use(mount: Mount, mnt: Path) -> None:
    """A second mount of the same state directory is refused with one line."""
    result = sh([MOUNT, mnt, "-o", f"state={mount.state}"], check=False)
    assert_one_line_error(result, "in use")
    assert not is_mounted(mnt)


def test_daemon_mode_and_umount(mnt: Path, tmp_path: Path) -> None:
    """Without -f, mount.dhtfs returns once the mount is live and leaves a daemon;
    umount.dhtfs unmounts, the daemon exits, and no stale mount is left."""
    state = tmp_path / "state"
    result = sh([MOUNT, mnt, "-o", f"state={state}"], timeout=60)
    assert result.stderr == ""
    assert is_mounted(mnt)  # live on return, no polling
    (mnt / "f").write_text("daemonized")
    pid = daemon_pid(mnt)
    assert pid is not None and process_alive(pid)
    assert sh([UMOUNT, mnt], timeout=90).returncode == 0
    assert not is_mounted(mnt)
    assert not process_alive(pid)
    os.stat(mnt)  # no "Transport endpoint is not connected"
    assert os.listdir(mnt) == []
    log = (state / "dhtfs.log").read_text() if (state / "dhtfs.log").exists() else ""
    assert "Traceback" not in log
    sh([MOUNT, mnt, "-o", f"state={state}"], timeout=60)
    assert (mnt / "f").read_text() == "daemonized"
    sh([UMOUNT, mnt], timeout=90)
    assert not is_mounted(mnt)


def test_umount_not_mounted(mnt: Path) -> None:
    """umount.dhtfs of something not mounted fails with one line and no traceback."""
    result = sh([UMOUNT, mnt], check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_fstab_argv_shape(mnt: Path, tmp_path: Path) -> None:
    """The argv mount(8) builds from an fstab line works; generic options are ignored."""
    state = tmp_path / "state"
    opts = f"rw,_netdev,nofail,noatime,x-systemd.automount,state={state}"
    sh([MOUNT, "dhtfs", mnt, "-o", opts], timeout=60)
    assert is_mounted(mnt)
    with open("/proc/mounts") as fh:
        line = next(ln for ln in fh if ln.split()[1] == str(mnt))
    assert line.split()[2] == "fuse.dhtfs"
    (mnt / "x").write_bytes(b"fstab")
    assert (mnt / "x").read_bytes() == b"fstab"
    # mount(8) may add -s/-n before the options, and spells the swarm in the SPEC field.
    sh([UMOUNT, mnt], timeout=90)
    other = tmp_path / "state2"
    sh([MOUNT, "dhtfs#lab", mnt, "-n", "-s", "-o", f"defaults,state={other}"], timeout=60)
    with open("/proc/mounts") as fh:
        line = next(ln for ln in fh if ln.split()[1] == str(mnt))
    assert line.split()[0] == "dhtfs:lab"
    sh([UMOUNT, mnt], timeout=90)


def test_key_path_option(mnt: Path, tmp_path: Path) -> None:
    """-o key=PATH creates and uses that key file; another key is refused with one line."""
    state = tmp_path / "state"
    key = tmp_path / "keys" / "node.key"
    data = os.urandom(200_000)
    sh([MOUNT, mnt, "-o", f"state={state},key={key}"], timeout=60)
    (mnt / "f").write_bytes(data)
    sh([UMOUNT, mnt], timeout=90)
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_bytes()) == 32
    assert not (state / "master.key").exists()
    sh([MOUNT, mnt, "-o", f"state={state},key={key}"], timeout=60)
    assert (mnt / "f").read_bytes() == data
    sh([UMOUNT, mnt], timeout=90)
    wrong = sh([MOUNT, mnt, "-o", f"state={state},key={tmp_path / 'other.key'}"], check=False)
    assert_one_line_error(wrong, "key")
    assert not is_mounted(mnt)
    key.chmod(0o644)
    loose = sh([MOUNT, mnt, "-o", f"state={state},key={key}"], check=False)
    assert_one_line_error(loose, "chmod 600")
    assert not is_mounted(mnt)


def test_config_file(mnt: Path, tmp_path: Path) -> None:
    """--config FILE (TOML: state, chunk_size) is used; -o overrides it; a bad file is one line."""
    state = tmp_path / "from-config"
    conf = tmp_path / "dhtfs.toml"
    conf.write_text(f'state = "{state}"\nchunk_size = "64KiB"\n')
    sh([MOUNT, mnt, "--config", conf], timeout=60)
    (mnt / "f").write_bytes(os.urandom(200_000))
    assert os.getxattr(mnt / "f", "user.dhtfs.chunk_size") == b"65536"
    assert len(json.loads(os.getxattr(mnt / "f", "user.dhtfs.chunks"))) == 4
    sh([UMOUNT, mnt], timeout=90)
    assert (state / "namespace.db").exists()
    sh([MOUNT, mnt, "--config", conf, "-o", "chunk_size=131072"], timeout=60)
    (mnt / "g").write_bytes(os.urandom(200_000))
    assert os.getxattr(mnt / "g", "user.dhtfs.chunk_size") == b"131072"
    assert os.getxattr(mnt / "f", "user.dhtfs.chunk_size") == b"65536"
    sh([UMOUNT, mnt], timeout=90)
    sh([MOUNT, mnt, "-o", f"config={conf}"], timeout=60)
    assert sorted(os.listdir(mnt)) == ["f", "g"]
    sh([UMOUNT, mnt], timeout=90)
    bad = tmp_path / "bad.toml"
    bad.write_text("chunk_size = [\n")
    assert_one_line_error(sh([MOUNT, mnt, "--config", bad], check=False), str(bad))
    bad.write_text('chunk_size = "huge"\n')
    assert_one_line_error(sh([MOUNT, mnt, "--config", bad], check=False), "chunk_size")
    bad.write_text('colour = "blue"\n')
    assert_one_line_error(sh([MOUNT, mnt, "--config", bad], check=False), "colour")
    missing = tmp_path / "missing.toml"
    assert_one_line_error(sh([MOUNT, mnt, "--config", missing], check=False), str(missing))
    assert not is_mounted(mnt)


def test_sigterm_flushes_and_unmounts(mount: Mount) -> None:
    """SIGTERM with a file still open for writing: exit 0, data flushed, no stale mount."""
    data = os.urandom(3 * 1024 * 1024 + 5)
    fd = os.open(mount.mountpoint / "open", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, data) == len(data)
        assert mount.stop() == 0
        assert not is_mounted(mount.mountpoint)
        os.stat(mount.mountpoint)  # raises ENOTCONN on a stale mount
        assert os.listdir(mount.mountpoint) == []
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            assert exc.errno in (errno.ENOTCONN, errno.EIO, errno.ENODEV)
    log = mount.log_text()
    assert "Traceback" not in log
    assert "SIGTERM" in log
    mount.start()
    assert (mount.mountpoint / "open").read_bytes() == data


def test_sigint_stops_foreground_mount(mount: Mount) -> None:
    """SIGINT (Ctrl-C on mount.dhtfs -f) stops cleanly as SIGTERM does."""
    (mount.mountpoint / "f").write_bytes(b"kept")
    assert mount.proc is not None
    mount.proc.send_signal(signal.SIGINT)
    assert mount.proc.wait(30) == 0
    assert not is_mounted(mount.mountpoint)
    os.stat(mount.mountpoint)
    assert "Traceback" not in mount.log_text()
    mount.start()
    assert (mount.mountpoint / "f").read_bytes() == b"kept"


def test_sigterm_to_daemon(mnt: Path, tmp_path: Path) -> None:
    """SIGTERM to a background daemon (as systemd stops it) unmounts and exits, no stale mount."""
    state = tmp_path / "state"
    sh([MOUNT, mnt, "-o", f"state={state}"], timeout=60)
    (mnt / "f").write_bytes(b"x" * 100_000)
    pid = daemon_pid(mnt)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not process_alive(pid), "the daemon to exit")
    assert not is_mounted(mnt)
    os.stat(mnt)
    assert daemon_pid(mnt) is None  # its record is removed
    log = (state / "dhtfs.log").read_text()
    assert "SIGTERM" in log and "Traceback" not in log
    sh([MOUNT, mnt, "-o", f"state={state}"], timeout=60)
    assert (mnt / "f").read_bytes() == b"x" * 100_000
    sh([UMOUNT, mnt], timeout=90)


def test_umount_busy(mnt: Path, tmp_path: Path) -> None:
    """umount.dhtfs of a busy mount fails with one line and leaves it mounted and working."""
    sh([MOUNT, mnt, "-o", f"state={tmp_path / 'state'}"], timeout=60)
    (mnt / "f").write_text("busy")
    holder = subprocess.Popen(["sleep", "60"], cwd=mnt)
    try:
        result = sh([UMOUNT, mnt], check=False)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("umount.dhtfs: "), result.stderr
        assert is_mounted(mnt)
        assert (mnt / "f").read_text() == "busy"
    finally:
        holder.kill()
        holder.wait()
    sh([UMOUNT, mnt], timeout=90)
    assert not is_mounted(mnt)
