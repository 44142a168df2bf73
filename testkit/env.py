"""Where things are and the environment every child process of a test or benchmark gets.

Invariant: a child process started by the harness never reads the system config
(``DHTFS_NO_SYSTEM_CONFIG=1``) and never speaks mDNS on the host's network: importing this
module sets ``DHTFS_DISCOVERY=off`` in ``os.environ`` unless the caller set it, so even a child
that simply inherits ``os.environ`` has discovery off unless its options turn it on
(tests/swarm/test_discovery.py does, inside network namespaces of its own).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
os.environ.setdefault("DHTFS_DISCOVERY", "off")


def tool(name: str) -> str:
    """The path of the venv's console script ``name`` (``dhtfs``, ``mount.dhtfs``, ...)."""
    return str(VENV_BIN / name)


MOUNT = tool("mount.dhtfs")
UMOUNT = tool("umount.dhtfs")


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without the system config, plus ``extra``."""
    return {**os.environ, "DHTFS_NO_SYSTEM_CONFIG": "1", **extra}
