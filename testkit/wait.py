"""Waiting for a condition: poll it under a deadline, never sleep a fixed time.

One rule for both helpers: ``condition`` is called until it returns something true, and
that value is returned; an ``OSError`` from it (a name not there yet, a socket not yet
listening) counts as "not yet"; past ``timeout`` seconds a ``TimeoutError`` names ``what``
and the last ``OSError``. ``wait_until`` sleeps the thread between polls (for code that is not
in trio); ``wait_until_async`` sleeps in trio, and its condition may be a coroutine function.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

DEADLINE = 30.0
INTERVAL = 0.02


def _timed_out(what: str, timeout: float, last: OSError | None) -> TimeoutError:
    return TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last})")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE,
               interval: float = INTERVAL) -> Any:
    """Poll ``condition`` until it returns something true; its value."""
    end = time.monotonic() + timeout
    last: OSError | None = None
    while True:
        try:
            value = condition()
        except OSError as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > end:
            raise _timed_out(what, timeout, last)
        time.sleep(interval)


async def wait_until_async(condition: Callable[[], Any | Awaitable[Any]], what: str,
                           timeout: float = DEADLINE, interval: float = INTERVAL) -> Any:
    """Poll ``condition`` (plain or async) in trio until it returns something true; its value."""
    end = trio.current_time() + timeout
    last: OSError | None = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        except OSError as exc:
            value, last = None, exc
        if value:
            return value
        if trio.current_time() > end:
            raise _timed_out(what, timeout, last)
        await trio.sleep(interval)
