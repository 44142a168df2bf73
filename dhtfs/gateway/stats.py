"""The gateway's counters, shown by ``dhtfs status`` (``http``) and the Prometheus metrics:
requests by status, body bytes sent, time to first byte (from the request's head received
to the response's head sent), connections open and refused (over the limit), bodies cut
(the client left, or a file changed while being sent), connections closed because a request's
head did not arrive in time, clients denied (a failed TLS handshake, a revoked certificate,
no bearer token)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GatewayStats:
    """Counters of one gateway (module docstring); updated on the trio thread."""

    by_status: dict[int, int] = field(default_factory=dict)
    bytes_sent: int = 0
    ttfb_count: int = 0
    ttfb_sum: float = 0.0
    ttfb_max: float = 0.0
    connections: int = 0
    refused: int = 0
    cut: int = 0
    timed_out: int = 0
    denied: int = 0

    def answered(self, status: int, ttfb: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.ttfb_count += 1
        self.ttfb_sum += ttfb
        self.ttfb_max = max(self.ttfb_max, ttfb)

    def status(self) -> dict[str, Any]:
        return {
            "requests": {str(k): v for k, v in sorted(self.by_status.items())},
            "bytes_sent": self.bytes_sent,
            "ttfb_seconds": {"count": self.ttfb_count, "sum": round(self.ttfb_sum, 6),
                             "max": round(self.ttfb_max, 6)},
            "connections": self.connections, "refused": self.refused, "cut": self.cut,
            "timed_out": self.timed_out, "denied": self.denied,
        }
