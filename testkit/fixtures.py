"""Fixtures any test folder may request (``tests/conftest.py`` loads this module as a pytest
plugin): a swarm CA, a foreign CA, node identities."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhtfs.trust import pki
from testkit.nodehelpers import IdentityFactory, make_identity


@pytest.fixture(scope="session")
def swarm_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A swarm CA directory (ca.key, ca.crt) shared by the whole session."""
    d = tmp_path_factory.mktemp("ca")
    pki.init_ca(d)
    return d


@pytest.fixture(scope="session")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA, with the same subject name as the swarm CA (so only signatures differ)."""
    d = tmp_path_factory.mktemp("foreign-ca")
    pki.init_ca(d)
    return d


@pytest.fixture
def identity(swarm_ca: Path, tmp_path: Path) -> IdentityFactory:
    """``identity()`` → a fresh node identity of the swarm CA."""
    return lambda: make_identity(swarm_ca, tmp_path)
