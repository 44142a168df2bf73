"""Shared fixtures for node-level tests in the simulator (virtual clock, in-memory network)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from dhtfs.sim.network import SimWorld
from dhtfs.sim.swarm import Swarm


@pytest.fixture
def world() -> SimWorld:
    """50 ms ± 20 ms links, deterministic."""
    return SimWorld(seed=7)


@pytest.fixture
def make_swarm(world: SimWorld, nursery: trio.Nursery) -> Callable[..., Swarm]:
    """``make_swarm(**node_kwargs)``: a Swarm on ``world``. Tests must also take the
    ``autojump_clock`` fixture *directly* (pytest-trio only looks at the test's own arguments)
    so that simulated time jumps instead of passing in real time."""

    def make(*, seed: int = 7, maintenance: bool = False, **kw: object) -> Swarm:
        return Swarm(world, nursery, seed=seed, maintenance=maintenance, **kw)

    return make

