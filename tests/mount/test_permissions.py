"""Permission checks as the kernel's default_permissions enforces them, for an ordinary user."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from testkit.mounting import Mount, is_mounted
from testkit.shell import NOBODY, as_user

pytestmark = pytest.mark.mount

OTHER = 65533  # a second unprivileged uid for the sticky-directory case


def _write(path: Path, text: str = "x") -> list[str]:
    return ["sh", "-c", f'printf %s "{text}" > "{path}"']


def test_unprivileged_cannot_touch_root_files(public_mount: Mount) -> None:
    """nobody cannot write a 0644 root file, create in a 0755 root dir, or read a 0600 file."""
    m = public_mount.mountpoint
    f = m / "rootfile"
    f.write_text("root data")
    f.chmod(0o644)
    (m / "rootdir").mkdir(mode=0o755)
    secret = m / "secret"
    secret.write_text("s")
    secret.chmod(0o600)

    assert as_user(NOBODY, ["cat", f]).stdout == "root data"
    denied = as_user(NOBODY, _write(f, "evil"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert f.read_text() == "root data"
    assert as_user(NOBODY, ["truncate", "-s", "0", f]).returncode != 0
    assert as_user(NOBODY, ["touch", m / "rootdir" / "new"]).returncode != 0
    assert as_user(NOBODY, ["mkdir", m / "rootdir" / "newdir"]).returncode != 0
    assert as_user(NOBODY, ["touch", m / "at-root"]).returncode != 0
    assert as_user(NOBODY, ["rm", "-f", f]).returncode != 0
    assert as_user(NOBODY, ["cat", secret]).returncode != 0
    assert as_user(NOBODY, ["chmod", "666", f]).returncode != 0
    assert as_user(NOBODY, ["setfattr", "-n", "user.x", "-v", "1", f]).returncode != 0
    assert sorted(os.listdir(m / "rootdir")) == []
    assert f.exists()
    assert f.read_text() == "root data"


def test_unprivileged_can_use_open_dir(public_mount: Mount) -> None:
    """In a 0777 directory nobody creates, writes and removes files it owns."""
    m = public_mount.mountpoint
    shared = m / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    mine = shared / "mine"
    assert as_user(NOBODY, _write(mine, "hello")).returncode == 0
    st = mine.stat()
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert mine.read_text() == "hello"
    assert as_user(NOBODY, ["mkdir", shared / "sub"]).returncode == 0
    assert (shared / "sub").stat().st_uid == NOBODY
    assert as_user(NOBODY, ["chmod", "600", mine]).returncode == 0
    assert as_user(NOBODY, ["cat", mine]).stdout == "hello"
    assert as_user(OTHER, ["cat", mine]).returncode != 0
    assert as_user(NOBODY, ["mv", mine, shared / "renamed"]).returncode == 0
    assert as_user(NOBODY, ["rm", shared / "renamed"]).returncode == 0
    assert sorted(os.listdir(shared)) == ["sub"]


def test_sticky_directory(public_mount: Mount) -> None:
    """In a 1777 directory users may only remove or rename their own entries."""
    m = public_mount.mountpoint
    tmp = m / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    theirs = tmp / "theirs"
    assert as_user(OTHER, _write(theirs)).returncode == 0
    (tmp / "roots").write_text("r")
    assert as_user(NOBODY, ["rm", "-f", theirs]).returncode != 0
    assert as_user(NOBODY, ["mv", theirs, tmp / "stolen"]).returncode != 0
    assert as_user(NOBODY, ["rm", "-f", tmp / "roots"]).returncode != 0
    assert theirs.exists() and (tmp / "roots").exists()
    assert as_user(NOBODY, _write(tmp / "own")).returncode == 0
    assert as_user(NOBODY, ["rm", tmp / "own"]).returncode == 0
    assert as_user(OTHER, ["rm", theirs]).returncode == 0
    assert sorted(os.listdir(tmp)) == ["roots"]


def test_group_and_execute_bits(public_mount: Mount) -> None:
    """Group bits grant by gid; execute and search bits are enforced."""
    m = public_mount.mountpoint
    team = m / "team"
    team.write_text("t")
    os.chown(team, 0, 4242)
    team.chmod(0o664)
    assert as_user(NOBODY, _write(team, "member"), gid=4242).returncode == 0
    assert team.read_text() == "member"
    assert as_user(NOBODY, _write(team, "outsider")).returncode != 0
    assert team.read_text() == "member"

    script = m / "script"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    assert as_user(NOBODY, [script]).returncode != 0
    script.chmod(0o755)
    assert as_user(NOBODY, [script]).stdout == "ran\n"

    closed = m / "closed"
    closed.mkdir()
    (closed / "inside").write_text("i")
    closed.chmod(0o744)  # readable, not searchable, by others
    assert as_user(NOBODY, ["cat", closed / "inside"]).returncode != 0
    closed.chmod(0o711)  # searchable, not readable
    assert as_user(NOBODY, ["cat", closed / "inside"]).stdout == "i"
    assert as_user(NOBODY, ["ls", closed]).returncode != 0


def test_setgid_directory_inheritance(public_mount: Mount) -> None:
    """In a set-group-ID directory new entries take its group; subdirectories keep the bit."""
    m = public_mount.mountpoint
    proj = m / "proj"
    proj.mkdir()
    os.chown(proj, 0, 4242)
    proj.chmod(0o2777)
    (proj / "f").write_text("x")
    (proj / "sub").mkdir()
    os.symlink("f", proj / "l")
    os.mkfifo(proj / "p")
    assert as_user(NOBODY, _write(proj / "theirs")).returncode == 0
    for name in ("f", "sub", "l", "p", "theirs"):
        assert (proj / name).lstat().st_gid == 4242, name
    assert (proj / "sub").stat().st_mode & 0o2000
    assert not (proj / "f").stat().st_mode & 0o2000
    assert (proj / "theirs").stat().st_uid == NOBODY
    (proj / "sub" / "deeper").mkdir()
    assert (proj / "sub" / "deeper").stat().st_gid == 4242
    plain = m / "plain"
    plain.mkdir()
    os.chown(plain, 0, 4242)
    (plain / "g").write_text("g")
    assert (plain / "g").stat().st_gid == 0


def test_unprivileged_write_clears_setuid(public_mount: Mount) -> None:
    """As on ext4: an unprivileged write or truncate of a set-user-ID file clears S_ISUID and
    S_ISGID; root's own write keeps them."""
    f = public_mount.mountpoint / "suid"
    f.write_text("x")
    f.chmod(0o6777)
    with open(f, "a") as fh:
        fh.write("r")
    assert f.stat().st_mode & 0o7777 == 0o6777
    assert as_user(NOBODY, ["sh", "-c", f'echo y >> "{f}"']).returncode == 0
    assert f.read_text() == "xry\n"
    assert f.stat().st_mode & 0o7777 == 0o777
    f.chmod(0o6777)
    assert as_user(NOBODY, ["truncate", "-s", "1", f]).returncode == 0
    assert f.read_text() == "x"
    assert f.stat().st_mode & 0o7777 == 0o777


def test_allow_other_off_keeps_others_out(tmp_path: Path) -> None:
    """With allow_other=false only the mounting user gets in, even to a 0777 directory."""
    top = Path(tempfile.mkdtemp(prefix="dhtfs-private-", dir="/tmp"))
    os.chmod(top, 0o755)
    m = Mount(top / "mnt", tmp_path / "state", options=["allow_other=false"])
    try:
        m.start()
        (m.mountpoint / "open").mkdir(mode=0o777)
        (m.mountpoint / "open").chmod(0o777)
        assert as_user(NOBODY, ["ls", m.mountpoint / "open"]).returncode != 0
        assert as_user(NOBODY, ["touch", m.mountpoint / "open" / "x"]).returncode != 0
        assert os.listdir(m.mountpoint / "open") == []
    finally:
        m.close()
        if not is_mounted(m.mountpoint):
            shutil.rmtree(top, ignore_errors=True)
