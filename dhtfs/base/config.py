"""One config object for the mount and the headless node.

Sources, lowest precedence first: built-in defaults, the TOML file (``--config``, else
``/etc/dhtfs/dhtfs.toml`` when it exists), then ``-o key=value`` options / command-line flags.
Every key has the same name in all three places. Unknown keys and bad values raise
``ConfigError`` with a one-line message naming the key.

Generic mount(8) options (rw, defaults, _netdev, nofail, noauto, user, …) are accepted and
ignored, so fstab lines work unchanged.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dhtfs.base.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/dhtfs/dhtfs.toml")
DEFAULT_STATE_ROOT = Path("/var/lib/dhtfs")

GENERIC_MOUNT_OPTIONS = frozenset(
    {
        "rw",
        "ro",
        "defaults",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "_netdev",
        "nofail",
        "exec",
        "noexec",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "async",
        "sync",
        "atime",
        "noatime",
        "relatime",
        "strictatime",
        "nodiratime",
        "x-systemd.automount",
    }
)
_GENERIC_PREFIXES = ("x-systemd.", "x-", "comment=")

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
DEFAULT_PORT = 7420
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 64 * 1024**2


@dataclass(frozen=True, slots=True)
class Config:
    """Validated settings. ``swarm`` names the state subdirectory and the mDNS service."""

    swarm: str = "default"
    state: Path | None = None  # None: DEFAULT_STATE_ROOT / swarm
    key: str = ""  # "" = <state>/master.key, "ephemeral", or a path
    chunk_size: int = 1024 * 1024
    cache_size: int = 256 * 1024 * 1024  # decrypted block cache in memory
    debug: bool = False
    allow_other: bool = True
    # Seconds a metadata change may wait for its SQLite commit; until then the op journal
    # keeps it safe from a crash of the daemon (ext4's commit= is the analogue).
    commit_interval: float = 0.05
    # The DHT node (the mount's and the headless node's). None of ca/cert/cert_key: a mount
    # makes a private swarm in <state>/swarm (dhtfs.trust.identity).
    ca: Path | None = None
    cert: Path | None = None
    cert_key: Path | None = None
    # The swarm's certificate revocation list (``dhtfs ca revoke``), re-read when it changes;
    # nodes also hand newer lists to each other (dhtfs.trust.revocation).
    crl: Path | None = None
    listen: str = ""  # "": a mount takes DEFAULT_LISTEN (or any free port if that is taken)
    bootstrap: tuple[str, ...] = field(default_factory=tuple)  # HOST:PORT+HOST:PORT on -o
    # Announce this node and find the swarm's others on the LAN by mDNS (dhtfs.dht.discovery);
    # false for WAN-only setups. Bootstrap addresses work with it or without it. None ("auto",
    # the default): on, except for a private swarm that has no other member yet.
    discovery: bool | None = None
    # Seconds between attempts to fold the op history every member holds (dhtfs.meta.history).
    fold_interval: float = 10.0
    # Seconds a member may stay silent (while others are heard) before it is forgotten, so
    # that folding resumes without it (dhtfs.oplog.membership); 0 = never.
    member_timeout: float = 7 * 86400.0
    # Blocks written here go to the `replicas` XOR-closest nodes (dhtfs.blocks.replication);
    # fsync waits for them up to `replication_deadline` seconds (then EIO); writers wait
    # while more than `replication_backlog` bytes are not yet replicated.
    replicas: int = 3
    replication_deadline: float = 60.0
    replication_backlog: int = 1024 * 1024 * 1024
    # Seconds between repair passes over the blocks held here (dhtfs.blocks.repair).
    repair_interval: float = 60.0
    # Prometheus metrics on this loopback HOST:PORT (dhtfs.runtime.metrics); "" = off.
    metrics: str = ""
    # The read-only HTTP gateway on this HOST:PORT (dhtfs.gateway); "" = off. On an address
    # that is not loopback, or with http_cert, it speaks TLS (http_cert/http_key, else the
    # node's own swarm certificate) and clients authenticate: the bearer token in the file
    # http_token, else a client certificate of the swarm CA (dhtfs.gateway.access).
    http: str = ""
    http_cert: Path | None = None
    http_key: Path | None = None
    http_token: Path | None = None
    # Seconds a read may wait for a block from the swarm before it fails with EIO.
    read_deadline: float = 30.0
    # False: a client-only mount, which stores nothing for others and is never a replica.
    storage: bool = True
    # Bytes of cached copies (blocks fetched for reads, or replicated elsewhere) kept on disk;
    # past it the least recently used go (dhtfs.store.diskcache). Blocks this node holds for the
    # swarm are not counted and never evicted.
    cache_disk: int = 10 * 1024**3
    # Seconds a block nothing references is kept before it is reclaimed (dhtfs.blocks.reclaim).
    gc_grace: float = 3600.0

    @property
    def state_dir(self) -> Path:
        return self.state if self.state is not None else DEFAULT_STATE_ROOT / self.swarm


def parse_size(key: str, text: str | int) -> int:
    """``"1M"``, ``"64KiB"``, ``"1048576"`` → bytes; ConfigError names ``key`` otherwise."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ConfigError(f"{key}={text}: not a size (examples: 1048576, 1M, 256MiB)")
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if value < 0:
        raise ConfigError(f"{key}={text}: must not be negative")
    return value


def _loopback_address(key: str, text: str, example: str, refusal: str) -> tuple[str, int]:
    """``HOST:PORT`` of option ``key`` on a loopback address (port 0: any free one);
    ConfigError with ``refusal`` for any other address."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text) if sep else -1
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ConfigError(f"{key}={text}: expected a loopback HOST:PORT, e.g. "
                          f"{example}") from None
    if not 0 <= port < 65536:
        raise ConfigError(f"{key}={text}: the port must be 0..65535")
    if not loopback:
        raise ConfigError(f"{key}={text}: {refusal}")
    return host, port


def parse_metrics_address(text: str) -> tuple[str, int]:
    """``metrics=HOST:PORT`` on a loopback address (port 0: any free one). Only loopback: the
    numbers describe the node and its peers; a tunnel or a proxy exposes them further."""
    return _loopback_address("metrics", text, "127.0.0.1:9477",
                             "only a loopback address may serve metrics (tunnel or proxy it "
                             "to scrape from elsewhere)")


def parse_http_address(text: str) -> tuple[str, int]:
    """``http=HOST:PORT`` (an IP address; port 0: any free one, which ``dhtfs status``
    shows). Any address but loopback is served over TLS with client authentication
    (``dhtfs.gateway.access``)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text) if sep else -1
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"http={text}: expected an IP address and a port, e.g. "
                          f"127.0.0.1:8080") from None
    if not 0 <= port < 65536:
        raise ConfigError(f"http={text}: the port must be 0..65535")
    return host, port


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}={value}: expected true or false")


def _coerce(key: str, value: Any) -> Any:
    if key in ("chunk_size", "cache_size", "replication_backlog", "cache_disk"):
        return parse_size(key, value)
    if key == "replicas":
        try:
            count = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value}: expected a whole number, e.g. 3") from None
        if not 1 <= count <= 20:
            raise ConfigError(f"{key}={value}: must be between 1 and 20")
        return count
    if key == "discovery" and str(value).strip().lower() == "auto":
        return None
    if key in ("debug", "allow_other", "storage", "discovery"):
        return _parse_bool(key, value)
    if key in ("commit_interval", "fold_interval", "replication_deadline", "repair_interval",
               "read_deadline"):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value}: expected seconds, e.g. 0.05") from None
        if not 0 < seconds <= 3600:
            raise ConfigError(f"{key}={value}: must be more than 0 and at most 3600 seconds")
        return seconds
    if key == "member_timeout":
        if str(value).strip().lower() in ("off", "never", "false", "no"):
            return 0.0
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value}: expected seconds (e.g. 604800), or 0/off")\
                from None
        if not 0 <= seconds <= 3650 * 86400:
            raise ConfigError(f"{key}={value}: must be 0 (off) up to 3650 days in seconds")
        return seconds
    if key == "gc_grace":
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value}: expected seconds, e.g. 3600") from None
        if not 0 < seconds <= 30 * 86400:
            raise ConfigError(f"{key}={value}: must be more than 0 and at most 30 days")
        return seconds
    if key in ("state", "ca", "cert", "cert_key", "crl", "http_cert", "http_key", "http_token"):
        if not str(value):
            raise ConfigError(f"{key}: needs a path")
        return Path(str(value)).expanduser()
    if key == "bootstrap":
        # "+" separates addresses on an fstab/-o line, whose own separator is ","
        items = value if isinstance(value, list | tuple) else re.split(r"[+,\s]", str(value))
        return tuple(str(v).strip() for v in items if str(v).strip())
    if key == "metrics":
        if str(value) in ("", "off"):
            return ""
        parse_metrics_address(str(value))
        return str(value)
    if key == "http":
        if str(value) in ("", "off"):
            return ""
        parse_http_address(str(value))
        return str(value)
    if key in ("swarm", "key", "listen"):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"unknown option {key!r}")


_KEYS = {f.name for f in fields(Config)}


def apply_options(config: Config, options: dict[str, Any]) -> Config:
    """Return ``config`` with ``options`` applied and the result validated."""
    changes: dict[str, Any] = {}
    for raw_key, value in options.items():
        key = raw_key.replace("-", "_")
        if key not in _KEYS:
            raise ConfigError(f"unknown option {raw_key!r} (known: {', '.join(sorted(_KEYS))})")
        changes[key] = _coerce(key, value)
    result = replace(config, **changes)
    validate(result)
    return result


def validate(config: Config) -> None:
    if not MIN_CHUNK_SIZE <= config.chunk_size <= MAX_CHUNK_SIZE:
        raise ConfigError(
            f"chunk_size={config.chunk_size}: must be between {MIN_CHUNK_SIZE} and "
            f"{MAX_CHUNK_SIZE} bytes"
        )
    if (config.http_cert is None) != (config.http_key is None):
        raise ConfigError("http_cert and http_key go together: the gateway's certificate "
                          "(PEM, its chain after it) and its private key")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", config.swarm):
        raise ConfigError(f"swarm={config.swarm!r}: use 1-64 letters, digits, '.', '_' or '-'")


def parse_mount_options(text: str) -> dict[str, Any]:
    """Split ``-o a=b,c`` into a dict, dropping generic mount(8) options."""
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if name in GENERIC_MOUNT_OPTIONS or item.startswith(_GENERIC_PREFIXES):
            continue
        options[name] = value if sep else True
    return options


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    return data


def load_config(config_path: Path | None, options: dict[str, Any]) -> Config:
    """Defaults ← TOML file ← ``options``; the file is optional only when not named.
    ``DHTFS_DISCOVERY=off`` in the environment changes the default of ``discovery`` (a test
    harness or a container must not speak mDNS on the host's network; the file and
    ``options`` still win)."""
    config = Config()
    if os.environ.get("DHTFS_DISCOVERY"):
        config = apply_options(config, {"discovery": os.environ["DHTFS_DISCOVERY"]})
    if (
        config_path is None
        and DEFAULT_CONFIG_PATH.exists()
        and not os.environ.get("DHTFS_NO_SYSTEM_CONFIG")
    ):
        config_path = DEFAULT_CONFIG_PATH
    if config_path is not None:
        config = apply_options(config, load_toml(config_path))
    return apply_options(config, options)
