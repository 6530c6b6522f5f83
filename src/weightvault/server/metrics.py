"""The repository server's Prometheus metrics (its own registry), served on ``/metrics``::

    weightvault_server_requests_total{user,repository,type,op,result}   every request, by outcome
    weightvault_server_bytes_total{user,repository,type,direction}      bytes received (in) and sent (out)
    weightvault_server_refusals_total{user,repository,type,op,status}   refused requests (4xx)
    weightvault_server_auth_failures_total{status}                      401 and 429 answers
    weightvault_server_request_seconds{op}                              latency histogram

``op`` is list, stat, read, put, delete, init, clean, space, login or metrics; ``result`` ok,
refused or error. ``user`` is the authenticated name, or ``-``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServerMetrics"]


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        keys = ["user", "repository", "type"]
        self.requests = Counter("weightvault_server_requests_total", "Requests by outcome", [*keys, "op", "result"],
                                registry=r)
        self.bytes = Counter("weightvault_server_bytes_total", "Object bytes received and sent", [*keys, "direction"],
                             registry=r)
        self.refusals = Counter("weightvault_server_refusals_total", "Refused requests", [*keys, "op", "status"],
                                registry=r)
        self.auth_failures = Counter("weightvault_server_auth_failures_total", "Failed authentications", ["status"],
                                     registry=r)
        self.latency = Histogram("weightvault_server_request_seconds", "Request latency", ["op"], registry=r,
                                 buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def observe(self, call: Any, status: int, result: str, seconds: float, known_repo: bool = True) -> None:
        """Count one request. ``known_repo`` False labels its repository ``-`` (names the server
        does not serve must not make new series)."""
        labels = (call.user or "-", (call.repo or "-") if known_repo else "-", call.type or "-")
        self.requests.labels(*labels, call.op, result).inc()
        if call.nbytes and result == "ok":
            self.bytes.labels(*labels, "in" if call.op == "put" else "out").inc(call.nbytes)
        if 400 <= status < 500 and result != "ok":
            self.refusals.labels(*labels, call.op, str(status)).inc()
        self.latency.labels(call.op).observe(seconds)

    def auth_failure(self, status: int) -> None:
        self.auth_failures.labels(str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
