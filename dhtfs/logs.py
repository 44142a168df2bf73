"""Structured, quiet-by-default logging: ``time level logger message key=value …`` lines.

Default level WARNING (operators forget the mount is there); ``debug`` turns on DEBUG.
Messages never include file contents; names of files appear at DEBUG only.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"


def setup_logging(
    debug: bool, *, stream: TextIO | None = None, file: Path | None = None, level: int | None = None
) -> None:
    handlers: list[logging.Handler] = []
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(file))
    else:
        handlers.append(logging.StreamHandler(stream or sys.stderr))
    for h in handlers:
        h.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(
        level=logging.DEBUG if debug else (level or logging.WARNING), handlers=handlers, force=True
    )
