"""The synthetic source repository the git benchmarks clone (``devwork.py``, ``swarm.py``),
and running git without any user or system configuration.

The repository is deterministic: 4,400 files in 300 nested directories (4,700 entries), 41 MB
in all, like xfstests' tree: ~22 MB of text files of 0.3-16 KiB made of seeded pseudo-words
and 40 binary files of 0.2-0.8 MB of seeded random bytes; one commit with fixed author, dates
and message, so the same commit id every time. It is made once, on the disk, in
``/var/tmp/dhtfs-bench-gitsrc-v<VERSION>-<FILES>`` (atomically: made beside, then renamed)
and kept for later runs; ``quick`` makes a quarter-size one (1,100 files, ~10 MB).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

from _common import DISK_BASE, BenchError, note

SOURCE_VERSION = 1  # bump when the generator changes: the cached source is keyed by it
FULL_FILES, FULL_DIRS, BINARIES = 4400, 300, 40
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@dhtfs",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@dhtfs",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def git(*args: str, cwd: Path | None = None) -> str:
    home = DISK_BASE  # no user config: HOME points at a directory without .gitconfig
    proc = subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd, text=True,
                          capture_output=True, check=False,
                          env={**os.environ, **GIT_ENV, "HOME": str(home)})
    if proc.returncode != 0:
        raise BenchError(f"git {' '.join(args)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return proc.stdout


def make_source_tree(root: Path, nfiles: int, ndirs: int, nbin: int) -> int:
    """The synthetic tree (see the module docstring) under ``root``; → bytes written."""
    rng = random.Random(f"gitsrc:{SOURCE_VERSION}")
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randrange(2, 11)))
             for _ in range(3000)]
    dirs = [root]
    for i in range(ndirs):  # nested: a directory's parent is an earlier one
        parent = rng.choice(dirs[: max(1, len(dirs) // 2 + 1)])
        dirs.append(parent / f"dir{i:03d}")
        dirs[-1].mkdir(parents=True)
    total = 0
    for i in range(nfiles):
        parent = rng.choice(dirs)
        if i < nbin:
            data = rng.randbytes(rng.randrange(200_000, 800_000))
            name = f"blob{i:03d}.bin"
        else:
            size = int(min(16384, max(300, rng.lognormvariate(8.2, 0.9))))
            words: list[str] = []
            length = 0
            while length < size:
                line = " ".join(rng.choices(vocab, k=rng.randrange(3, 14)))
                words.append(line)
                length += len(line) + 1
            data = ("\n".join(words) + "\n").encode()
            name = f"file{i:04d}.{rng.choice(('c', 'h', 'sh', 'out', 'txt', 'py'))}"
        (parent / name).write_bytes(data)
        total += len(data)
    return total


def source_repo(quick: bool) -> Path:
    """The cached source repository (made on first use, atomically by a rename)."""
    scale = 4 if quick else 1
    path = DISK_BASE / f"dhtfs-bench-gitsrc-v{SOURCE_VERSION}-{FULL_FILES // scale}"
    if (path / ".git" / "HEAD").exists():
        return path
    temp = Path(f"{path}.tmp{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    total = make_source_tree(temp, FULL_FILES // scale, FULL_DIRS // scale, BINARIES // scale)
    git("init", "-q", cwd=temp)
    git("add", "-A", cwd=temp)
    git("commit", "-q", "-m", "synthetic source tree for the dhtfs benchmark", cwd=temp)
    git("gc", "-q", cwd=temp)
    os.rename(temp, path)
    note(f"made source repository {path}: {total / 1e6:.1f} MB of files")
    return path


def describe_source(src: Path) -> str:
    files = dirs = size = 0
    for top, dnames, fnames in os.walk(src):
        if top == str(src):
            dnames.remove(".git")
        dirs += len(dnames)
        files += len(fnames)
        size += sum(os.lstat(os.path.join(top, f)).st_size for f in fnames)
    pack = sum(p.stat().st_size for p in (src / ".git" / "objects").rglob("*") if p.is_file())
    return (f"source {src.name}: {files} files + {dirs} dirs = {files + dirs} "
            f"entries, {size / 1e6:.1f} MB; .git objects {pack / 1e6:.1f} MB; "
            f"commit {git('rev-parse', 'HEAD', cwd=src).strip()[:12]}")
