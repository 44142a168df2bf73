"""The dhtfs exception tree, drawn once::

    DhtfsError                    base of everything dhtfs raises on purpose
    ├── ConfigError               bad option, bad config file, bad mount point (one-line message)
    ├── KeyFileError              master key file missing, unreadable, wrong mode or wrong key
    ├── BlockError                a block cannot be served from the local store
    │   ├── BlockMissing          not stored here
    │   └── BlockCorrupt          stored, but fails its GCM tag or its SHA-256
    ├── NetworkError              a remote call failed (never raised by the local store)
    │   ├── CallTimeout           no answer before the call's deadline
    │   ├── PeerUnreachable       could not connect, or the connection dropped mid-call
    │   ├── RemoteError           the peer answered with an error
    │   ├── ProtocolError         malformed, oversized or unexpected frame
    │   └── AuthError             the peer failed certificate / node-ID verification
    └── NamespaceError            an op cannot be applied (maps to an errno in dhtfs.fs)

Messages are written for operators: say what failed and what to do about it.
"""

from __future__ import annotations


class DhtfsError(Exception):
    """Base class of every error dhtfs raises deliberately."""


class ConfigError(DhtfsError):
    """Invalid configuration, option or command-line input."""


class KeyFileError(DhtfsError):
    """The at-rest master key cannot be loaded or does not match the stored data."""


class BlockError(DhtfsError):
    """A block cannot be served from the local store."""

    def __init__(self, block_id: bytes, message: str) -> None:
        super().__init__(f"block {block_id.hex()[:16]}…: {message}")
        self.block_id = block_id


class BlockMissing(BlockError):
    """The block is not stored on this node."""


class BlockCorrupt(BlockError):
    """The stored block failed authentication (GCM tag) or its content hash."""


class NetworkError(DhtfsError):
    """A remote call failed."""


class CallTimeout(NetworkError):
    """The peer did not answer before the call's deadline."""


class PeerUnreachable(NetworkError):
    """The peer could not be reached, or the connection dropped during the call."""


class RemoteError(NetworkError):
    """The peer answered the call with an error."""


class ProtocolError(NetworkError):
    """A frame was malformed, oversized or unexpected."""


class AuthError(NetworkError):
    """The peer's certificate or node ID failed verification."""


class NamespaceError(DhtfsError):
    """A namespace op cannot be applied; carries the errno the filesystem should return."""

    def __init__(self, errno_value: int, message: str = "") -> None:
        super().__init__(message or f"errno {errno_value}")
        self.errno = errno_value
