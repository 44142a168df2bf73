"""Structured, quiet-by-default logs: one event per line, ``key=value`` (logfmt).

Every line is ``ts=… level=… logger=… pid=… msg="…"``, then the event's own fields
(``extra={"fields": {...}}``, e.g. ``event=start mountpoint=/mnt/swarm``), then ``exc="…"``
for an exception (its traceback escaped onto the same line). Values with spaces, quotes or
control characters are double-quoted with backslash escapes, so a line never breaks and
``grep``/``journalctl -g`` see whole events.

Default level WARNING (operators forget the mount is there), plus the lifecycle events of
``dhtfs.lifecycle`` (a mount's start and stop lines); ``debug`` turns on DEBUG everywhere.
What C libraries (libfuse's request trace with ``-o debug``, its ``fuse: …`` errors) write
to fd 2 is turned into events of logger ``libfuse`` (``capture_native_stderr``).

journald: when stderr is the journal (``$JOURNAL_STREAM``, as systemd sets it for a
service), each line starts with its syslog priority (``<4>``), so ``journalctl -p warning``
works.

Secrets: messages never include file contents or key material (names of files appear at
DEBUG only). As a safety net, a ``bytes`` argument is logged as its length only and a PEM
private key block as ``[private key redacted]``.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import re
import sys
import threading
import traceback
from pathlib import Path
from typing import TextIO

LIFECYCLE = "dhtfs.lifecycle"
NATIVE = "libfuse"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_BARE = re.compile(r"[A-Za-z0-9_.,:/@+%#-]+")
_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r",
            ord("\t"): "\\t"}
_ESCAPES.update({c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c not in _ESCAPES})
_PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL
)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def quote(value: object) -> str:
    """A logfmt value: bare when safe, else double-quoted with escapes (never a newline)."""
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    return '"' + text.translate(_ESCAPES) + '"'


def _safe(arg: object) -> object:
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return f"<{len(arg)} bytes>"  # contents and keys never reach a log
    return arg


def redact(text: str) -> str:
    return _PEM_PRIVATE.sub("[private key redacted]", text)


class KeyValueFormatter(logging.Formatter):
    """``ts level logger pid msg [fields…] [exc]`` as one logfmt line (see the module doc)."""

    def __init__(self, priority_prefix: bool = False) -> None:
        super().__init__()
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        msg = str(record.msg)
        if record.args:
            args = record.args
            safe = tuple(map(_safe, args)) if isinstance(args, tuple) else args
            try:
                msg = msg % safe
            except (TypeError, ValueError):
                msg = f"{msg} {safe!r}"
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        parts = [
            f"ts={ts.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}",
            f"level={record.levelname}",
            f"logger={quote(record.name)}",
            f"pid={record.process}",
            f"msg={quote(redact(msg))}",
        ]
        fields = getattr(record, "fields", None) or {}
        parts += [f"{key}={quote(redact(str(_safe(v))))}" for key, v in fields.items()]
        if record.exc_info:
            exc = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            parts.append(f"exc={quote(redact(exc))}")
        line = " ".join(parts)
        if self.priority_prefix:
            line = f"<{_PRIORITY.get(record.levelno, 4 if record.levelno < 40 else 2)}>{line}"
        return line


def is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal's stream socket (``$JOURNAL_STREAM=dev:inode``)."""
    try:
        dev, ino = (int(x) for x in os.environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(
    debug: bool, *, stream: TextIO | None = None, file: Path | None = None, level: int | None = None
) -> None:
    """Log to ``file`` (appending) or ``stream`` (default stderr), one logfmt line per event."""
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(file)
        prefix = False
    else:
        out = stream or sys.stderr
        handler = logging.StreamHandler(out)
        prefix = is_journal(out)
    handler.setFormatter(KeyValueFormatter(priority_prefix=prefix))
    logging.basicConfig(
        level=logging.DEBUG if debug else (level or logging.WARNING), handlers=[handler], force=True
    )
    logging.getLogger(LIFECYCLE).setLevel(logging.DEBUG if debug else logging.INFO)
    logging.captureWarnings(True)


def event(name: str, msg: str, **fields: object) -> None:
    """A lifecycle event (logged even when quiet): ``msg=… event=NAME key=value…``."""
    logging.getLogger(LIFECYCLE).info(msg, extra={"fields": {"event": name, **fields}})


def capture_native_stderr() -> threading.Thread:
    """Turn what C code writes to fd 2 (libfuse) into ``logger=libfuse`` events.

    Python's own ``sys.stderr`` moves to a copy of the old fd 2 (so tracebacks and the log
    handler, set up after this, write there directly); fd 2 becomes a pipe read by a
    thread. Its write end is non-blocking: under a flood of ``-o debug`` trace, libfuse loses
    lines rather than blocking the FUSE loop. ``fuse: …`` lines are warnings, the rest
    (request trace) debug. Call before ``setup_logging``.
    """
    sys.stderr.flush()
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    os.set_blocking(write_fd, False)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stderr = open(original, "w", buffering=1, errors="backslashreplace")  # noqa: SIM115
    thread = threading.Thread(target=_pump, args=(read_fd,), name="native-stderr", daemon=True)
    thread.start()
    return thread


def _pump(fd: int) -> None:
    log = logging.getLogger(NATIVE)
    pending = b""
    with open(fd, "rb", buffering=0) as pipe:
        while data := pipe.read(1 << 16):
            *lines, pending = (pending + data).split(b"\n")
            for raw in lines:
                text = raw.decode(errors="backslashreplace").strip()
                if text:
                    lvl = logging.WARNING if text.startswith("fuse:") else logging.DEBUG
                    log.log(lvl, "%s", text)
