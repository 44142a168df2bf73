"""Run tools, compare trees, act as an unprivileged user (mostly for the real-mount tests)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from testkit.env import child_env

NOBODY = 65534
ENV = child_env(LC_ALL="C")


def sh(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    check: bool = True,
    input: bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a tool; on failure the assertion message carries its stderr."""
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, f"{args} exited {result.returncode}: {result.stderr}"
    return result


def as_user(
    uid: int, args: Sequence[str | os.PathLike[str]], *, gid: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` as ``uid`` (no supplementary groups); never raises on failure."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid if gid is not None else uid}"]
    return sh([*prefix, "--clear-groups", *args], check=False)


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything ``cp -a``/``rsync -a``/``tar`` should preserve, keyed by relative path."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            entry: list[object] = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)]
            entry += [st.st_uid, st.st_gid, st.st_mtime_ns]
            if stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                entry += [st.st_size, path.read_bytes()]
            out[str(path.relative_to(root))] = tuple(entry)
    return out


def make_tree(root: Path) -> None:
    """A small tree with modes, times, symlinks, empty and multi-chunk files."""
    root.mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_text("hello dhtfs\n")
    (root / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 4097))
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    secret = root / "secret"
    secret.write_bytes(b"s" * 100)
    secret.chmod(0o600)
    sub = root / "sub" / "deeper"
    sub.mkdir(parents=True)
    (sub / "leaf").write_bytes(os.urandom(70_000))
    (root / "sub" / "ro").write_text("read only\n")
    (root / "sub" / "ro").chmod(0o444)
    (root / "link-rel").symlink_to("small.txt")
    (root / "sub" / "link-up").symlink_to("../big.bin")
    (root / "dangling").symlink_to("no/such/target")
    (root / "private").mkdir(mode=0o700)
    (root / "private" / "f").write_text("p")
    base = 1_600_000_000_000_000_000
    for i, path in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        times = (base + i * 1_000_000_123, base + i * 7_000_000_321)
        os.utime(path, ns=times, follow_symlinks=False)
    os.utime(root, ns=(base, base))
