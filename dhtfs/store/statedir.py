"""Opening a node's state directory: the same for a mount and for a headless node.

Invariants: the directory is 0700 (tightened if it existed looser); the master key matches
the data sealed there (``verify_key_check``) before any block is read or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from dhtfs.base.errors import ConfigError
from dhtfs.store.blockstore import BlockStore
from dhtfs.store.masterkey import load_master_key, verify_key_check


def prepare_state_dir(state: Path) -> None:
    """Create ``state`` if needed and make it root-only; ConfigError with the reason otherwise."""
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create state directory {state}: {exc.strerror}") from None


def open_block_store(state: Path, key_spec: str) -> BlockStore:
    """Load (or create) the master key named by ``key_spec`` and open ``state/chunks``."""
    master = load_master_key(key_spec, state)
    verify_key_check(master, state)
    return BlockStore(state / "chunks", master)
