"""``dhtfs node ...``: run a headless storage node (no mount)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dhtfs.base.config import load_config, parse_mount_options
from dhtfs.base.malloc import tune_malloc
from dhtfs.runtime import headless


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "node",
        help="run a storage node without a mount",
        description="Run a headless DHT storage node until SIGTERM/SIGINT. Every option can "
        "also be given in the TOML config (keys: state, ca, cert, cert_key, listen, "
        "bootstrap, key); flags win.",
    )
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--state", help="state directory (chunks, master key, control socket)")
    p.add_argument("--ca", help="the swarm CA certificate")
    p.add_argument("--cert", help="this node's certificate")
    p.add_argument("--key", dest="cert_key", help="this node's private key")
    p.add_argument("--listen", help="HOST:PORT to listen on (port 0: any free port)")
    p.add_argument("--bootstrap", action="extend", nargs="+", metavar="HOST[:PORT]",
                   help="node(s) to join through (repeatable; the port defaults to 7420, "
                   "as for a mount)")
    p.add_argument("--master-key", dest="key",
                   help="at-rest key: a path, 'ephemeral', or empty for <state>/master.key")
    p.add_argument("--fold-interval", dest="fold_interval", type=float, metavar="SECONDS",
                   help="how often to drop op-log entries every member holds (default 10)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="KEY=VALUE,...",
                   help="any config key, as for mount.dhtfs (e.g. gc_grace=600,cache_disk=4G)")
    p.set_defaults(func=cmd_node)


def cmd_node(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        k: getattr(args, k)
        for k in ("state", "ca", "cert", "cert_key", "listen", "key", "fold_interval")
        if getattr(args, k) is not None
    }
    for text in args.options:
        options.update(parse_mount_options(text))
    if args.bootstrap:
        options["bootstrap"] = args.bootstrap
    config = load_config(args.config, options)
    tune_malloc()  # blocks arrive and leave as fresh megabyte buffers
    return headless.run(config)
