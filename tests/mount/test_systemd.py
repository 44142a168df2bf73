"""systemd and mount(8): the units in systemd/, sd_notify, `mount -t dhtfs`, fstab, umount.

systemd is not necessarily PID 1 where the tests run, so no unit is started for real: the
units are checked by ``systemd-analyze verify`` (also those the fstab example generates),
and what they would run is run by hand — ``ExecStart`` with ``$NOTIFY_SOCKET`` set to a
socket the test listens on, ``ExecStopPost`` on a stale mount. mount(8) and umount(8) are
real: they find /sbin/mount.dhtfs and /sbin/umount.fuse.dhtfs (scripts/setup.sh links them).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtfs.base import systemd
from dhtfs.mount import RUN_DIR
from dhtfs.runtime.assembly import SHUTDOWN_PUSH_DEADLINE, SHUTDOWN_REPLICATION_DEADLINE
from dhtfs.umount import WAIT_SECONDS, daemon_pid, process_alive
from testkit.env import UMOUNT, VENV_BIN
from testkit.mounting import Mount, is_mounted, unmount_and_reap
from testkit.shell import ENV, sh
from testkit.wait import wait_until

UNITS = Path(__file__).resolve().parents[2] / "systemd"
FLUSH_SECONDS = 60  # dhtfs.runtime.service bounds the flush of open files at shutdown by this
STOP_WORK = FLUSH_SECONDS + SHUTDOWN_REPLICATION_DEADLINE + SHUTDOWN_PUSH_DEADLINE
LOOPBACK = "listen=127.0.0.1:0"


def settings(unit: Path) -> dict[str, list[str]]:
    """KEY -> values of a unit file (sections flattened; comments skipped)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and line[0] not in "#;[":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(s|sec|min|)", text)
    assert m, text
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def command(unit: Path, key: str, mountpoint: Path) -> list[str]:
    """The argv of ``key`` (ExecStart, ExecStopPost) for instance ``mountpoint`` (%f)."""
    (line,) = settings(unit)[key]
    return shlex.split(line.lstrip("-").replace("%f", str(mountpoint)))


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze missing: install the systemd package "
                    "(scripts/setup.sh --test does)")
    return path


def verify(*units: Path) -> None:
    """``systemd-analyze verify``: exit 0 and not one complaint about these units (it only
    warns, with exit 0, about unknown keys or values it ignores)."""
    result = subprocess.run([analyze(), "verify", *map(str, units)],
                            capture_output=True, text=True, timeout=120)
    names = [u.name.split("@")[0] for u in units]
    about_ours = [ln for ln in (result.stdout + result.stderr).splitlines()
                  if any(n in ln for n in names)]
    assert result.returncode == 0 and not about_ours, result.stdout + result.stderr


def require_helpers() -> None:
    """mount(8)/umount(8) run /sbin/{mount,umount}[.fuse].dhtfs: they must be this tree's."""
    for link, tool in [("mount.dhtfs", "mount.dhtfs"), ("mount.fuse.dhtfs", "mount.dhtfs"),
                       ("umount.fuse.dhtfs", "umount.dhtfs")]:
        if os.path.realpath(f"/sbin/{link}") != os.path.realpath(VENV_BIN / tool):
            pytest.fail(f"/sbin/{link} is not {VENV_BIN / tool}: run scripts/setup.sh")


def stop_event(state: Path) -> str | None:
    """The ``status=`` of the last ``event=stop`` line of the daemon's log."""
    log = state / "dhtfs.log"
    lines = log.read_text().splitlines() if log.exists() else []
    stops = [ln for ln in lines if " event=stop " in ln]
    m = re.search(r" status=(\S+)", stops[-1]) if stops else None
    return m.group(1) if m else None


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sd-mnt"
    path.mkdir()
    try:
        yield path
    finally:
        unmount_and_reap(path, timeout=30)


# -- the units -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dhtfs@.service", "mnt-swarm.mount", "mnt-swarm.automount"])
def test_unit_verifies(name: str) -> None:
    """Each unit in systemd/ passes systemd-analyze verify (which also checks that the
    programs it runs exist and are executable: the real install paths)."""
    verify(UNITS / name)


def test_service_instance_and_pair_verify(tmp_path: Path) -> None:
    """An instance of the template (dhtfs@mnt-swarm.service: %f = /mnt/swarm) and the
    .mount + .automount pair together verify too."""
    shutil.copy(UNITS / "dhtfs@.service", tmp_path)
    verify(tmp_path / "dhtfs@mnt-swarm.service")
    verify(UNITS / "mnt-swarm.mount", UNITS / "mnt-swarm.automount")


def test_fstab_example_generates_verified_units(tmp_path: Path) -> None:
    """systemd-fstab-generator turns the fstab example into a remote-fs automount of a
    dhtfs .mount unit (nofail, 3 min timeout), and those units verify."""
    analyze()
    generator = next((p for p in ("/lib/systemd/system-generators/systemd-fstab-generator",
                                  "/usr/lib/systemd/system-generators/systemd-fstab-generator")
                      if os.access(p, os.X_OK)), None)
    if generator is None:
        pytest.skip("systemd-fstab-generator missing (systemd package)")
    out = tmp_path / "gen"
    out.mkdir()
    env = dict(os.environ, SYSTEMD_FSTAB=str(UNITS / "fstab.example"), SYSTEMD_LOG_LEVEL="err")
    subprocess.run([generator, out, out, out], env=env, check=True, timeout=60)
    mount = settings(out / "mnt-swarm.mount")
    assert mount["Type"] == ["dhtfs"] and mount["What"] == ["dhtfs:default"]
    assert seconds(mount["TimeoutSec"][0]) > STOP_WORK
    assert (out / "remote-fs.target.wants" / "mnt-swarm.automount").exists()
    verify(out / "mnt-swarm.mount", out / "mnt-swarm.automount")


def test_service_settings() -> None:
    """The service is what the daemon needs: Type=notify from the main process (mount.dhtfs
    -f does not fork), a stop timeout above the flush + replication drain + op push the
    daemon may spend, a lazy unmount of a stale mount after a crash, restart on failure."""
    s = settings(UNITS / "dhtfs@.service")
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    start = command(UNITS / "dhtfs@.service", "ExecStart", Path("/mnt/x"))
    assert start[0] == "/usr/local/sbin/mount.dhtfs" and "-f" in start and start[-1] == "/mnt/x"
    assert os.path.realpath(start[0]) == os.path.realpath(VENV_BIN / "mount.dhtfs"), (
        "run scripts/setup.sh")
    assert seconds(s["TimeoutStopSec"][0]) > STOP_WORK
    assert seconds(settings(UNITS / "mnt-swarm.mount")["TimeoutSec"][0]) > STOP_WORK
    assert WAIT_SECONDS > STOP_WORK  # umount.dhtfs (and so plain umount) waits as long
    assert s["ExecStopPost"][0].startswith("-")  # nothing to clean is no failure
    assert s["Restart"] == ["on-failure"] and s["KillMode"] == ["mixed"]


# -- sd_notify -------------------------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket as systemd's (short path: sun_path holds 108 bytes), passing the
    sender's credentials."""
    top = tempfile.mkdtemp(prefix="dhtfs-notify-", dir="/tmp")
    path = os.path.join(top, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(top, ignore_errors=True)


def receive(sock: socket.socket, timeout: float) -> tuple[int, list[str]] | None:
    """One notification: (sender pid, its KEY=VALUE lines), or None after ``timeout``."""
    sock.settimeout(timeout)
    try:
        data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    except TimeoutError:
        return None
    pid = -1
    for level, kind, cred in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("3i", cred[:12])[0]
    return pid, data.decode().splitlines()


def test_notify_without_socket_and_abstract(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY_SOCKET: nothing is sent (False). "@name" is an abstract socket."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    name = f"dhtfs-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STATUS=x\nREADY=1") is True
        assert sock.recv(100) == b"STATUS=x\nREADY=1"


@pytest.mark.mount
def test_notify_sequence_as_the_unit_runs_it(
    mnt: Path, tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """The unit's ExecStart with NOTIFY_SOCKET set: STATUS while joining, READY=1 (with
    "mounted, N peers") only once the mount is live, and on SIGTERM (systemd's stop)
    STOPPING=1 and "flushing N blocks", in that order, all from the main process (so
    NotifyAccess=main is enough); the daemon exits 0 and leaves no mount."""
    sock, path = notify_socket
    argv = command(UNITS / "dhtfs@.service", "ExecStart", mnt)
    argv += ["-o", f"state={tmp_path / 'state'},{LOOPBACK}"]  # as a drop-in would add
    env = dict(ENV, NOTIFY_SOCKET=path)
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(argv, env=env, stderr=err)
    got: list[tuple[int, str]] = []
    try:
        deadline = time.monotonic() + 60
        while not any(a == "READY=1" for _, a in got):
            assert time.monotonic() < deadline and proc.poll() is None, (
                (tmp_path / "stderr").read_text())
            msg = receive(sock, 1.0)
            if msg:
                got += [(msg[0], a) for a in msg[1]]
        assert is_mounted(mnt)  # READY=1 came once the mount was live
        (mnt / "f").write_bytes(os.urandom(300_000))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_WORK + 30) == 0
        while msg := receive(sock, 0.5):
            got += [(msg[0], a) for a in msg[1]]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not is_mounted(mnt)
    assert {pid for pid, _ in got} == {proc.pid}, got
    seq = [a for _, a in got]
    index = {a: i for i, a in reversed(list(enumerate(seq)))}  # first occurrence

    def first(pattern: str) -> int:
        return next(i for i, a in enumerate(seq) if re.fullmatch(pattern, a))

    assert first(r"STATUS=joining swarm.*") < index["READY=1"], seq
    assert first(r"STATUS=mounted, \d+ peers") == index["READY=1"] + 1, seq  # one datagram
    assert index["READY=1"] < index["STOPPING=1"] < first(r"STATUS=flushing \d+ blocks"), seq
    assert seq.count("READY=1") == 1 and seq.count("STOPPING=1") == 1, seq


@pytest.mark.mount
def test_exec_stop_post_clears_a_stale_mount(mnt: Path, tmp_path: Path) -> None:
    """After a crash (SIGKILL) the mount point is stale ("Transport endpoint is not
    connected"); the unit's ExecStopPost removes it; on a clean mount point it fails
    quietly (and the unit ignores that: "-")."""
    m = Mount(mnt, tmp_path / "state", options=[LOOPBACK]).start()
    assert m.proc is not None
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(30)
    with pytest.raises(OSError):
        os.stat(mnt)
    argv = command(UNITS / "dhtfs@.service", "ExecStopPost", mnt)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert not is_mounted(mnt)
    os.stat(mnt)
    again = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and again.stderr == ""
    for record in RUN_DIR.glob("*.json"):  # the killed daemon could not remove its record
        if f'"mountpoint": "{mnt}"' in record.read_text():
            record.unlink()


# -- mount(8), fstab, umount(8) --------------------------------------------------------------


@pytest.mark.mount
def test_mount_t_dhtfs_and_plain_umount(mnt: Path, tmp_path: Path) -> None:
    """`mount -t dhtfs dhtfs:lab DIR -o _netdev,state=...` mounts through the helper (source
    dhtfs:lab, type fuse.dhtfs); a plain `umount DIR` then runs umount.fuse.dhtfs and so
    returns only once the daemon has flushed and exited 0. Mounted with no option umount(8)
    keeps (no utab entry), umount(8) goes by statfs() type "fuse", finds no helper and just
    unmounts: the daemon still finishes the same way on its own, and exits 0."""
    require_helpers()
    state = tmp_path / "state"
    data = os.urandom(3 * 1024 * 1024 + 17)
    opts = f"state={state},{LOOPBACK}"
    sh(["mount", "-t", "dhtfs", "dhtfs:lab", mnt, "-o", f"_netdev,{opts}"], timeout=90)
    with open("/proc/mounts") as fh:
        source, _, fstype = next(ln for ln in fh if ln.split()[1] == str(mnt)).split()[:3]
    assert (source, fstype) == ("dhtfs:lab", "fuse.dhtfs")
    (mnt / "f").write_bytes(data)
    pid = daemon_pid(mnt)
    assert pid is not None
    sh(["umount", mnt], timeout=STOP_WORK + 30)
    assert not is_mounted(mnt)
    assert not process_alive(pid)  # umount waited for the daemon
    assert stop_event(state) == "0"

    sh(["mount", "-t", "dhtfs", "lab", mnt, "-o", opts], timeout=90)  # bare SWARM works too
    assert (mnt / "f").read_bytes() == data
    (mnt / "g").write_bytes(data[:100_000])
    pid = daemon_pid(mnt)
    assert pid is not None
    sh(["umount", mnt], timeout=STOP_WORK + 30)
    assert not is_mounted(mnt)
    wait_until(lambda: not process_alive(pid), "the daemon to exit", timeout=STOP_WORK + 30)
    assert stop_event(state) == "0"
    sh(["mount", "-t", "dhtfs", "lab", mnt, "-o", f"_netdev,{opts}"], timeout=90)
    assert (mnt / "g").read_bytes() == data[:100_000]
    sh(["umount", mnt], timeout=STOP_WORK + 30)
    assert "replayed" not in (state / "dhtfs.log").read_text()  # every stop was clean


@pytest.mark.mount
def test_kernel_unmount_drains_and_exits(mnt: Path, tmp_path: Path) -> None:
    """`umount -i` (no helper: only the kernel's unmount reaches the daemon, as FUSE
    DESTROY / end of the device): the daemon still flushes, finishes and exits 0, and the
    next mount finds the data and nothing to replay (a clean stop)."""
    require_helpers()
    state = tmp_path / "state"
    opts = f"state={state},{LOOPBACK}"
    sh(["mount", "-t", "dhtfs", "dhtfs:default", mnt, "-o", opts], timeout=90)
    (mnt / "f").write_bytes(b"kernel unmount\n" * 10_000)
    os.mkdir(mnt / "d")
    pid = daemon_pid(mnt)
    assert pid is not None
    sh(["umount", "-i", mnt], timeout=60)
    assert not is_mounted(mnt)
    wait_until(lambda: not process_alive(pid), "the daemon to exit", timeout=STOP_WORK + 30)
    assert stop_event(state) == "0"
    sh(["mount", "-t", "dhtfs", "dhtfs:default", mnt, "-o", opts], timeout=90)
    assert (mnt / "f").read_bytes() == b"kernel unmount\n" * 10_000 and (mnt / "d").is_dir()
    sh(["umount", mnt], timeout=STOP_WORK + 30)
    assert "replayed" not in (state / "dhtfs.log").read_text()


@pytest.mark.mount
def test_fstab_line_and_mount_a(mnt: Path, tmp_path: Path) -> None:
    """An fstab line like the example's (_netdev,nofail,x-systemd.automount + dhtfs
    options) mounts with `mount -a -T FSTAB`; a second `mount -a` sees it mounted and does
    nothing; `mount -T FSTAB DIR` mounts that one line; umount unmounts."""
    require_helpers()
    state = tmp_path / "state"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a temporary fstab\n"
        f"dhtfs:lab {mnt} dhtfs defaults,_netdev,nofail,x-systemd.automount,"
        f"x-systemd.mount-timeout=180,state={state},{LOOPBACK} 0 0\n"
    )
    sh(["mount", "-a", "-T", fstab], timeout=90)
    assert is_mounted(mnt)
    (mnt / "f").write_text("from fstab\n")
    pid = daemon_pid(mnt)
    again = sh(["mount", "-a", "-v", "-T", fstab], timeout=90)
    assert "already mounted" in again.stdout + again.stderr
    assert daemon_pid(mnt) == pid
    sh(["umount", mnt], timeout=STOP_WORK + 30)
    assert not is_mounted(mnt)
    sh(["mount", "-T", fstab, mnt], timeout=90)
    assert (mnt / "f").read_text() == "from fstab\n"
    sh(["umount", mnt], timeout=STOP_WORK + 30)
    assert not is_mounted(mnt) and stop_event(state) == "0"


def test_umount_helper_accepts_umount8_flags(mnt: Path) -> None:
    """umount(8) may pass -n -r -v -t TYPE to the helper: accepted (here: nothing mounted,
    so a one-line error, not a usage error)."""
    result = sh([UMOUNT, mnt, "-n", "-r", "-v", "-t", "fuse.dhtfs"],
                check=False)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
