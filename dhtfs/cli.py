"""``dhtfs``: the command-line tool. This module only parses the top level and dispatches.

Each command group lives in ``dhtfs.commands.<group>`` and exposes ``register(subparsers)``,
which adds its parser(s) and sets ``func(args) -> int`` on them. To add a group (status, peers,
stat, sync, fsck, ...), write the module and list it in ``GROUPS``.

Errors: a ``DhtfsError`` (bad input, missing file, unreachable node) prints one line
``dhtfs: error: ...`` and exits 1; argparse usage errors exit 2; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dhtfs.base.errors import DhtfsError
from dhtfs.base.logs import setup_logging

GROUPS = ("ca", "node", "chunk", "swarm", "sync", "status", "fsck")
COMMANDS = {"peers": "status", "stat": "status"}  # commands a group of another name registers


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; given the ``command`` about to run, only its group is imported (start-up
    time: the node groups import trio, cryptography and more)."""
    parser = argparse.ArgumentParser(
        prog="dhtfs", description="Manage a dhtfs swarm: its CA, storage nodes and chunks."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    parser.add_argument("--debug", action="store_true", help="log everything (DEBUG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    group = COMMANDS.get(command or "", command)
    for name in (group,) if group in GROUPS else GROUPS:
        importlib.import_module(f"dhtfs.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    setup_logging(args.debug, level=logging.INFO if args.verbose else None)
    try:
        return int(args.func(args) or 0)
    except DhtfsError as exc:
        print(f"dhtfs: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
