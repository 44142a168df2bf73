"""Background passes that run every so often and never die of an error."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)


async def every(interval: float, what: str, one_pass: Callable[[], Awaitable[object]]) -> None:
    """Run ``one_pass`` every ``interval`` seconds until cancelled. An exception is logged as
    ``"<what> pass failed"`` and the next pass tries again: a pass never ends the loop."""
    while True:
        await trio.sleep(interval)
        try:
            await one_pass()
        except Exception as exc:
            log.error("%s pass failed: %r", what, exc)
