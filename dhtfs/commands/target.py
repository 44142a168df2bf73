"""What the node-facing commands (status, peers, stat, fsck, sync) share: finding a running
node from a PATH on its mount or its ``--state`` directory, one request to its control socket,
and printing (tables through ``rich``, imported only when a table is printed; ``--json``).

A mount names its control socket in the ``user.dhtfs.control`` xattr of every file; a node's
socket is ``<state>/control.sock`` (root only). The client here is synchronous (a plain Unix
socket speaking ``dhtfs.net.wire`` frames, as ``dhtfs.net.control`` defines them): it
spares a command the start-up cost of trio, which the mount's own client needs.

Exit status of these commands: 0 done; 1 an error (one line on stderr); 2 bad usage;
``EXIT_NO_NODE`` (3) no node runs there (not on a dhtfs mount, no socket, nobody answering);
``EXIT_PROBLEMS`` (4) ``fsck`` found problems it did not repair.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dhtfs.base.errors import DhtfsError
from dhtfs.base.sockaddr import socket_address
from dhtfs.net import wire

EXIT_NO_NODE = 3
EXIT_PROBLEMS = 4
SOCKET_NAME = "control.sock"  # dhtfs.net.control.CONTROL_SOCKET_NAME (that module brings trio)
CALL_TIMEOUT = 60.0

EXIT_HELP = ("exit status: 0 done; 1 error; 2 bad usage; 3 no node runs at PATH/--state "
             "(not on a dhtfs mount, or the node is not running)")


class NoNode(DhtfsError):
    """No node runs where the user pointed (exit status ``EXIT_NO_NODE``)."""


# -- finding the node --------------------------------------------------------------------------


def add_target(p: argparse.ArgumentParser) -> None:
    """PATH (default: the current directory) or ``--state DIR``; ``--json``."""
    p.add_argument("path", type=Path, nargs="?",
                   help="a path on the node's dhtfs mount (default: the current directory)")
    p.add_argument("--state", type=Path, metavar="DIR",
                   help="the node's state directory instead (a headless node, or a mount)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def control_socket(path: Path) -> Path:
    """The control socket of the dhtfs mount ``path`` is on (NoNode when it is on none)."""
    try:
        return Path(os.getxattr(path, "user.dhtfs.control").decode())
    except FileNotFoundError:
        raise DhtfsError(f"{path}: no such file or directory") from None
    except OSError as exc:
        where = path.absolute()
        if exc.errno == errno.ENOTCONN:
            raise NoNode(f"no node runs at {where}: its dhtfs mount's process is gone; "
                         f"unmount it (umount.dhtfs) and mount it again") from None
        why = "" if exc.errno in (errno.ENODATA, errno.ENOTSUP) else f" ({exc.strerror})"
        raise NoNode(f"no node runs at {where}: it is not on a dhtfs mount{why}; give a path "
                     f"inside a mount, or --state DIR of a running node") from None


def socket_of(args: argparse.Namespace) -> Path:
    """The control socket that ``args.path`` / ``args.state`` point at."""
    if args.state is not None and args.path is not None:
        raise DhtfsError("give a PATH on a mount or --state DIR, not both")
    if args.state is not None:
        sock = args.state / SOCKET_NAME
        if not args.state.is_dir():
            raise NoNode(f"no node runs with state directory {args.state}: it does not "
                         f"exist; give the --state of a running node")
        if not sock.exists():
            raise NoNode(f"no node runs with state directory {args.state} (no {SOCKET_NAME}"
                         f" there); start it, or give the --state of a running node")
        return sock
    return control_socket(args.path if args.path is not None else Path("."))




class Control:
    """A blocking connection to a node's control socket: ``call`` is one request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.reader = wire.FrameReader()
        self.next_id = 0
        try:
            with socket_address(path) as address:
                self.sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise NoNode(f"no node answers at {path} (it is not running); start it, or "
                         f"point at a running node") from None
        except PermissionError:
            self.sock.close()
            raise DhtfsError(f"{path}: permission denied (the control socket is root's: "
                             f"run this as root)") from None
        except OSError as exc:
            self.sock.close()
            raise DhtfsError(f"cannot reach {path}: {exc.strerror or exc}") from None

    def call(self, method: str, args: dict[str, Any] | None = None, *,
             timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        self.next_id += 1
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(wire.encode_request(self.next_id, method, args or {}))
            while True:
                data = self.sock.recv(256 * 1024)
                if not data:
                    raise DhtfsError(f"the node at {self.path} closed the connection")
                bodies = self.reader.feed(data)
                if bodies:
                    frame = wire.decode_body(bodies[0])
                    break
        except TimeoutError:
            raise DhtfsError(f"{method}: no answer from {self.path} within {timeout:g}s") \
                from None
        except OSError as exc:
            raise DhtfsError(f"{method}: {self.path}: {exc.strerror or exc}") from None
        if frame.kind == wire.ERROR:
            if "unknown control method" in frame.message:
                raise DhtfsError(f"the node at {self.path} does not offer {method!r} "
                                 f"(an older version, or a headless node)")
            raise DhtfsError(f"{method}: the node answered: {frame.message}")
        assert frame.payload is not None
        return frame.payload

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exits_3_without_node(func: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """``func``, with ``NoNode`` printed as one line and exit status ``EXIT_NO_NODE``."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except NoNode as exc:
            print(f"dhtfs: error: {exc}", file=sys.stderr)
            return EXIT_NO_NODE

    return wrapper


# -- printing ----------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """``value`` with bytes as hex (node and block IDs), for JSON."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def print_json(value: Any) -> None:
    json.dump(plain(value), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def console(stderr: bool = False) -> Any:
    """A rich console; off a terminal wide enough that no ID is ever cut or folded."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 4096,
                   highlight=False, soft_wrap=False)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
                title: str | None = None, header: bool = True) -> None:
    """One table on stdout (``rich``); cells are printed as they are (no markup)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_header=header, box=None,
                  pad_edge=False, title_justify="left", header_style="bold")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(c if not isinstance(c, str) else Text(c) for c in row))
    out = console()
    if out.is_terminal:
        out.print(table)
        return
    with out.capture() as captured:  # off a terminal: no padding at the ends of lines
        out.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def size_text(n: float | int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def ms_text(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"
