"""Fault switches of one transport, for tests of the read path against bad peers and of
partitions: ``delay``, ``tamper``, ``mute``, ``hold`` and ``isolated``.

All off by default, and reachable only through the root-only control socket (``faults`` and
``isolate``, ``dhtfs.runtime``); ``Transport.set_faults`` and ``Transport.isolate`` set them.
Where each one acts:

- ``delay``, ``mute``, ``tamper``: on the answers this node serves
  (``dhtfs.net.connection.Connection``);
- ``hold``: on this node's own outgoing calls (``Transport.call`` waits in ``held``);
- ``isolated``: on every call, every inbound connection and the open ones
  (``dhtfs.net.transport``).

Invariant: a switch left None by ``set`` keeps its setting, and a rejected argument changes
nothing that comes after it in ``set``'s order (hold, delay, tamper, mute).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import trio

from dhtfs.net import rpc
from dhtfs.net.network import Message


class Faults:
    """The switches of one transport; one object shared by all its connections."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.tamper = False
        self.mute = False
        self.hold: frozenset[str] = frozenset()
        self.isolated = False
        self._hold_lifted = trio.Event()
        self._hold_lifted.set()

    def set(
        self,
        *,
        delay: float | None = None,
        tamper: bool | None = None,
        mute: bool | None = None,
        hold: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """Change the switches given (see ``Transport.set_faults``); the settings now in force."""
        if hold is not None:
            if isinstance(hold, str | bytes) or not all(isinstance(m, str) for m in hold):
                raise ValueError(f"fault hold must be a list of method names, not {hold!r}")
            self.hold = frozenset(hold)
            if self.hold and self._hold_lifted.is_set():
                self._hold_lifted = trio.Event()
            elif not self.hold:
                self._hold_lifted.set()
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, int | float) or not (
                0 <= delay < math.inf
            ):
                raise ValueError(f"fault delay must be a non-negative number, not {delay!r}")
            self.delay = float(delay)
        if tamper is not None:
            self.tamper = bool(tamper)
        if mute is not None:
            self.mute = bool(mute)
        return {"delay": self.delay, "tamper": self.tamper, "mute": self.mute,
                "hold": sorted(self.hold)}

    async def held(self, method: str) -> None:
        """Wait while outgoing calls of ``method`` are held (the caller holds the deadline)."""
        if self.hold and method in self.hold:
            await self._hold_lifted.wait()

    def tampered(self, method: str, answer: Message) -> Message:
        """``answer`` as this node serves it: with ``tamper`` on, a GET_BLOCK answer's block
        ``data`` has its first byte flipped (same length, a hash that no longer matches)."""
        if self.tamper and method == rpc.GET_BLOCK and answer.get("data"):
            real = answer["data"]
            return {**answer, "data": bytes([real[0] ^ 0xFF]) + bytes(real[1:])}
        return answer
