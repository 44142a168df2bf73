"""sd_notify(3) without libsystemd: one datagram on ``$NOTIFY_SOCKET`` when set.

The mount sends (dhtfs.runtime.service): ``STATUS=joining swarm``, ``STATUS=catching up with N
peers`` (dhtfs.runtime.mountnode, once joined), ``STATUS=mounting``, ``READY=1`` +
``STATUS=mounted, N peers`` once the mount is live, and on the way out
``STOPPING=1`` + ``STATUS=flushing open files``, then ``STATUS=flushing N blocks`` (the
replication backlog it waits for). A message may hold several ``KEY=VALUE`` lines. The
socket is a path or, starting with ``@``, an abstract name.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` to systemd; False when not run under a notify-type unit."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True
