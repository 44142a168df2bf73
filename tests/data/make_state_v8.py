"""Make tests/data/state-v8.tar.gz and state-v8.json with the dhtfs that ``python`` imports.

Run it against an old checkout (the fixture was made at commit 0dbd79b, before extents)::

    git worktree add /tmp/old-dhtfs 0dbd79b
    PYTHONPATH=/tmp/old-dhtfs .venv/bin/python tests/data/make_state_v8.py
    git worktree remove --force /tmp/old-dhtfs

It mounts a fresh state directory with 64 KiB chunks, builds a small tree that covers every
kind of content the old format stores (multi-chunk, overwritten in the middle, sparse,
truncated to an unaligned size, hard link, symlink, empty, xattrs, renamed, unlinked), records
a manifest of the mounted tree, unmounts cleanly, mounts again to check the manifest with the
same code (that restart also collects the blocks the unlink and overwrites left behind),
unmounts, and tars the state directory. Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import dhtfs

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the harness, testkit/
from testkit.env import child_env
from testkit.mounting import is_mounted
from testkit.wait import wait_until

CHUNK = 64 * 1024
OPTIONS = [f"chunk_size={CHUNK}"]
SEED = 8
KIB = 1024
MIB = 1024 * KIB
HERE = Path(__file__).resolve().parent
CHECKOUT = Path(dhtfs.__file__).resolve().parent.parent
# The daemon runs ``python -m`` from the checkout, so it imports the very dhtfs this script
# imported (``-m`` puts the working directory first on sys.path, ahead of PYTHONPATH).
ENV = child_env(PYTHONPATH=os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")]))


def mount(mnt: Path, state: Path, log: Path) -> subprocess.Popen:
    mnt.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"state={state}", *OPTIONS])
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dhtfs.mount", str(mnt), "-f", "-o", opts],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            cwd=CHECKOUT,
        )
    wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, f"mount of {mnt}")
    if proc.poll() is not None:
        raise RuntimeError(f"mount exited {proc.returncode}: {log.read_text(errors='replace')}")
    return proc


def unmount(mnt: Path, proc: subprocess.Popen) -> None:
    """Clean unmount with the same code's umount.dhtfs; the daemon must exit 0."""
    subprocess.run(
        [sys.executable, "-m", "dhtfs.umount", str(mnt)], check=True, env=ENV, cwd=CHECKOUT
    )
    if proc.wait(60) != 0:
        raise RuntimeError(f"the daemon exited {proc.returncode}")


def build_tree(root: Path) -> None:
    rng = random.Random(SEED)
    (root / "a" / "b" / "c").mkdir(parents=True)
    os.chmod(root / "a" / "b", 0o750)
    os.setxattr(root / "a", "user.note", b"a directory with an xattr")

    # Multi-chunk: 200 KiB = 3 full chunks and a 8 KiB tail.
    (root / "a" / "b" / "c" / "multi.bin").write_bytes(rng.randbytes(200 * KIB))

    # Written, then overwritten in the middle across the chunk 0/1 boundary.
    patched = root / "patched.bin"
    patched.write_bytes(rng.randbytes(100_000))
    fd = os.open(patched, os.O_WRONLY)
    try:
        os.pwrite(fd, rng.randbytes(8000), CHUNK - 3000)
    finally:
        os.close(fd)

    # Sparse: 10 MiB with 4 KiB of data at 5 MiB, the rest holes.
    sparse = root / "sparse.bin"
    sparse.write_bytes(b"")
    os.truncate(sparse, 10 * MIB)
    fd = os.open(sparse, os.O_WRONLY)
    try:
        os.pwrite(fd, rng.randbytes(4 * KIB), 5 * MIB)
    finally:
        os.close(fd)

    # Truncated down to a size that is not a multiple of the chunk size.
    truncated = root / "truncated.bin"
    truncated.write_bytes(rng.randbytes(150_000))
    os.truncate(truncated, 70_001)
    os.chmod(truncated, 0o640)

    # A hard link (two names, one file), a symlink, an empty file, an executable.
    os.link(patched, root / "a" / "patched-link.bin")
    os.symlink("a/b/c/multi.bin", root / "link-to-multi")
    (root / "empty").write_bytes(b"")
    script = root / "a" / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho v8\n")
    os.chmod(script, 0o755)

    # User xattrs on a file.
    tagged = root / "tagged.txt"
    tagged.write_bytes(b"a file with xattrs\n")
    os.setxattr(tagged, "user.color", b"blue")
    os.setxattr(tagged, "user.comment", b"made by dhtfs 0dbd79b")

    # A rename (across directories) and an unlink.
    (root / "before-rename.txt").write_bytes(b"renamed across directories\n")
    os.rename(root / "before-rename.txt", root / "a" / "b" / "after-rename.txt")
    (root / "doomed.bin").write_bytes(rng.randbytes(30_000))
    os.unlink(root / "doomed.bin")


def manifest_of(root: Path) -> dict[str, dict]:
    """{relative path: type, size, sha256, mode, nlink, xattrs, target} of every entry."""
    out: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath) / name
            st = path.lstat()
            entry: dict[str, object] = {
                "type": None,
                "size": None,
                "sha256": None,
                "mode": stat.S_IMODE(st.st_mode),
                "nlink": None,
                "xattrs": {},
                "target": None,
            }
            if stat.S_ISDIR(st.st_mode):
                entry["type"] = "dir"
            elif stat.S_ISLNK(st.st_mode):
                entry["type"] = "symlink"
                entry["target"] = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                entry["type"] = "file"
                entry["size"] = st.st_size
                entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                entry["nlink"] = st.st_nlink
            else:
                raise AssertionError(f"{path}: unexpected file type {st.st_mode:o}")
            if not stat.S_ISLNK(st.st_mode):
                entry["xattrs"] = {
                    key: os.getxattr(path, key).decode() for key in sorted(os.listxattr(path))
                }
            out[str(path.relative_to(root))] = entry
    return dict(sorted(out.items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE, help="where to write the two files")
    args = p.parse_args()
    commit = subprocess.run(
        ["git", "-C", str(CHECKOUT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"dhtfs from {CHECKOUT} (commit {commit or 'unknown'})", file=sys.stderr)
    child = subprocess.run(
        [sys.executable, "-c", "import dhtfs.mount; print(dhtfs.mount.__file__)"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=CHECKOUT,
        check=True,
    ).stdout.strip()
    if not Path(child).resolve().is_relative_to(CHECKOUT):
        raise RuntimeError(f"the daemon would import {child}, not the dhtfs in {CHECKOUT}")
    work = Path(tempfile.mkdtemp(prefix="dhtfs-v8-", dir="/tmp"))
    mnt, state, log = work / "mnt", work / "state", work / "mount.log"
    proc = None
    try:
        proc = mount(mnt, state, log)
        build_tree(mnt)
        manifest = manifest_of(mnt)
        unmount(mnt, proc)
        proc = mount(mnt, state, log)  # same code reads it back; the restart collects garbage
        again = manifest_of(mnt)
        if again != manifest:
            raise AssertionError(f"the tree changed across a remount: {manifest} != {again}")
        unmount(mnt, proc)
        proc = None
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "state-v8.json").write_text(json.dumps(manifest, indent=2) + "\n")
        with tarfile.open(args.out / "state-v8.tar.gz", "w:gz") as tar:
            tar.add(state, arcname="state")
        size = (args.out / "state-v8.tar.gz").stat().st_size
        print(f"wrote {args.out}/state-v8.tar.gz ({size} bytes) and state-v8.json")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        if not is_mounted(mnt):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
