"""Background passes that run every so often and never die of an error, and the doorbell that
wakes one when there is work (``Doorbell``)."""

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


class Doorbell:
    """A wake-up made before both sides and given to each in its constructor: one rings it
    (synchronous, cheap, on the trio thread), one task waits on it. A ring while nobody waits
    is kept (once) until ``clear``; the waiter clears it when it takes the work, so a ring
    after that wakes it again."""

    def __init__(self) -> None:
        self._rung = trio.Event()

    def ring(self) -> None:
        """There is work: wake the waiter (now, or at its next ``wait``)."""
        self._rung.set()

    async def wait(self) -> None:
        """Until the doorbell has rung since the last ``clear``."""
        await self._rung.wait()

    def clear(self) -> None:
        """Forget the rings so far: the next ``wait`` waits for a new one."""
        self._rung = trio.Event()
