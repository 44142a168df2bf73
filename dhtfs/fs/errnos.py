"""The errno of every FUSE handler's outcome (``errno_mapped``), and the persisting and
room checks the handlers share.

Any exception other than FUSEError would kill the mount, so a handler wrapped here raises
nothing else: NamespaceError and OSError become their errno, a full disk (an OSError's
ENOSPC/EDQUOT or SQLite's SQLITE_FULL) ENOSPC, another dhtfs or SQLite error EIO, and
anything unexpected EIO with the traceback logged.
"""

from __future__ import annotations

import errno
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pyfuse3

from dhtfs.base.errors import DhtfsError, NamespaceError
from dhtfs.meta.namespace import Namespace
from dhtfs.meta.tree import Tree

log = logging.getLogger(__name__)

SQLITE_FULL = 13  # sqlite3.Error.sqlite_errorcode of "database or disk is full"

F = TypeVar("F", bound=Callable[..., Any])

# Handlers that persist the namespace (Namespace.persist: the op journal) before they reply,
# so that what the kernel was told survives a crash of this process. The others change
# nothing, or (create) are always followed by a flush/release of their handle, which
# persists; the service's commit task commits everything shortly after in any case.
PERSISTING_HANDLERS = frozenset(
    {
        "mknod",
        "mkdir",
        "symlink",
        "link",
        "unlink",
        "rmdir",
        "rename",
        "setattr",
        "setxattr",
        "removexattr",
        "flush",
        "fsync",
        "fsyncdir",
        "release",
    }
)


# Handlers that change the tree: refused with ENOSPC before they apply anything when the op
# journal can no longer keep room to record them (the disk is full; see journal.has_room).
ROOM_CHECKED_HANDLERS = frozenset(
    {"mknod", "mkdir", "symlink", "link", "rename", "setattr", "setxattr", "removexattr",
     "create"}
)


class Handlers(Protocol):
    """What ``errno_mapped`` needs of the object whose handlers it wraps (``Operations``)."""

    tree: Tree
    observe: Callable[[str, bool, float], None] | None
    """Metrics (dhtfs.runtime.metrics): told of every request (handler name, success,
    seconds)."""


def errno_mapped(fn: F) -> F:
    """Map every exception of a handler to an errno; persist as PERSISTING_HANDLERS says."""
    deferred = fn.__name__ not in PERSISTING_HANDLERS
    name = fn.__name__
    room_checked = name in ROOM_CHECKED_HANDLERS

    @functools.wraps(fn)
    async def wrapper(self: Handlers, *args: Any, **kwargs: Any) -> Any:
        observe = self.observe  # metrics: every request timed, by kind and outcome
        t0 = time.perf_counter() if observe is not None else 0.0
        ok = False
        try:
            journal = self.tree.ns.journal
            if room_checked and journal is not None and not journal.has_room():
                raise pyfuse3.FUSEError(errno.ENOSPC)
            result = await fn(self, *args, **kwargs)
            ok = True
            return result
        except pyfuse3.FUSEError:
            raise
        except NamespaceError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.warning("%s failed: %s", name, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except DhtfsError as exc:
            log.error("%s failed: %s", name, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except sqlite3.Error as exc:
            log.error("%s failed: %s", name, exc)
            raise pyfuse3.FUSEError(_storage_errno(exc)) from None
        except Exception:
            log.exception("%s failed unexpectedly; returning EIO", name)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if not deferred and self.tree.ns.pending:
                _persist(self.tree.ns)  # also after a failure: earlier ops were acknowledged
            if observe is not None:
                observe(name, ok, time.perf_counter() - t0)

    return wrapper  # type: ignore[return-value]


def _persist(ns: Namespace) -> None:
    try:
        ns.persist()
    except (OSError, sqlite3.Error) as exc:
        log.error("persisting metadata failed: %s (is the state directory's disk full?)", exc)
        raise pyfuse3.FUSEError(_storage_errno(exc)) from None


def _storage_errno(exc: OSError | sqlite3.Error) -> int:
    """ENOSPC for a full disk (an OSError's, or SQLite's SQLITE_FULL), else EIO."""
    if isinstance(exc, OSError):
        return errno.ENOSPC if exc.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO
    return errno.ENOSPC if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL else errno.EIO
