"""Swarm keys of the config: several bootstrap addresses on one -o line, identity keys given
together or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhtfs.base.config import Config, apply_options, load_config, parse_mount_options
from dhtfs.base.errors import ConfigError
from dhtfs.trust.identity import configured_identity


def test_bootstrap_addresses_separated_by_plus_on_an_fstab_line() -> None:
    options = parse_mount_options("rw,_netdev,bootstrap=10.1.0.1:7420+[fd00::2]:7420,listen=:0")
    config = apply_options(Config(), options)
    assert config.bootstrap == ("10.1.0.1:7420", "[fd00::2]:7420")
    assert config.listen == ":0"


def test_bootstrap_as_a_toml_list(tmp_path: Path) -> None:
    toml = tmp_path / "dhtfs.toml"
    toml.write_text('bootstrap = ["a:1", "b:2"]\nlisten = "127.0.0.5:0"\n')
    assert load_config(toml, {}).bootstrap == ("a:1", "b:2")


def test_identity_keys_go_together(tmp_path: Path) -> None:
    assert configured_identity(Config()) is None
    with pytest.raises(ConfigError, match="missing cert, cert_key"):
        configured_identity(apply_options(Config(), {"ca": str(tmp_path / "ca.crt")}))
