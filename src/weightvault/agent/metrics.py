"""The agent's metrics (prometheus_client, its own registry), served on ``/metrics`` (with
``/healthz``) and/or written as a node-exporter textfile.

Names follow restic-exporter's where they mean the same (``*_timestamp_seconds``, ``*_success``):

    weightvault_agent_up                                   1 while the agent runs
    weightvault_agent_start_timestamp_seconds
    weightvault_backup_timestamp_seconds{source,repository}        last successful backup
    weightvault_backup_duration_seconds{source,repository}
    weightvault_backup_bytes{source,repository}                    bytes in the snapshot
    weightvault_backup_added_bytes{source,repository}              stored bytes the backup added
    weightvault_backup_files{source,repository}
    weightvault_backup_lag_seconds{source,repository}              hand-off to commit (watched checkpoints)
    weightvault_backup_success{source,repository}                  1 if the last attempt succeeded
    weightvault_backup_errors_total{source,repository}
    weightvault_step_timestamp_seconds{step,repository}            last success of prune, copy, tier, drill
    weightvault_step_errors_total{step,repository}
    weightvault_drill_rto_seconds{repository}
    weightvault_rpo_age_seconds{source,class,repository}          age of the newest snapshot
    weightvault_rpo_seconds{source,class,repository}
    weightvault_rpo_breached{source,class,repository}
    weightvault_queue_jobs{state}                                  queued, running, failed, done
    weightvault_queue_retries_total

Example alert rules are in docs/AGENT.md. With ``$WEIGHTVAULT_METRICS_TOKEN`` set, ``/metrics``
requires ``Authorization: Bearer <token>``; a listener on a non-loopback address without it is
refused. ``/healthz`` answers everyone.
"""

from __future__ import annotations

import hmac
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, write_to_textfile
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from weightvault.agent.events import Event
from weightvault.errors import UsageError
from weightvault.netaddr import is_loopback

__all__ = ["Metrics", "MetricsServer"]

_RTO = re.compile(r"in ([0-9.]+) s \(RTO\)")


class Metrics:
    """See the module docstring. Call it with each event (an ``EventLog`` listener); ``rpo`` and
    ``queue`` take the policy status lines and the queue's jobs."""

    def __init__(self, textfile_dir: Path | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self.textfile = textfile_dir / "weightvault.prom" if textfile_dir else None
        src = ["source", "repository"]
        self.up = Gauge("weightvault_agent_up", "1 while the agent runs", registry=r)
        self.started = Gauge("weightvault_agent_start_timestamp_seconds", "When the agent started", registry=r)
        self.b_time = Gauge("weightvault_backup_timestamp_seconds", "Last successful backup", src, registry=r)
        self.b_dur = Gauge("weightvault_backup_duration_seconds", "Duration of the last backup", src, registry=r)
        self.b_bytes = Gauge("weightvault_backup_bytes", "Bytes in the last snapshot", src, registry=r)
        self.b_added = Gauge("weightvault_backup_added_bytes", "Stored bytes the last backup added", src, registry=r)
        self.b_files = Gauge("weightvault_backup_files", "Files in the last snapshot", src, registry=r)
        self.b_lag = Gauge("weightvault_backup_lag_seconds", "Hand-off to committed snapshot", src, registry=r)
        self.b_ok = Gauge("weightvault_backup_success", "1 if the last backup attempt succeeded", src, registry=r)
        self.b_err = Counter("weightvault_backup_errors", "Failed backup attempts", src, registry=r)
        step = ["step", "repository"]
        self.s_time = Gauge("weightvault_step_timestamp_seconds", "Last success of a policy step", step, registry=r)
        self.s_err = Counter("weightvault_step_errors", "Failed policy steps", step, registry=r)
        self.rto = Gauge("weightvault_drill_rto_seconds", "RTO of the last drill", ["repository"], registry=r)
        rpo = ["source", "class", "repository"]
        self.rpo_age = Gauge("weightvault_rpo_age_seconds", "Age of the newest snapshot", rpo, registry=r)
        self.rpo = Gauge("weightvault_rpo_seconds", "The recovery point objective", rpo, registry=r)
        self.breached = Gauge("weightvault_rpo_breached", "1 if the RPO is breached", rpo, registry=r)
        self.q_jobs = Gauge("weightvault_queue_jobs", "Upload queue jobs by state", ["state"], registry=r)
        self.q_retries = Counter("weightvault_queue_retries", "Failed attempts that were queued again", registry=r)
        self.up.set(1)
        self.started.set(time.time())
        self._lock = threading.Lock()

    def __call__(self, ev: Event) -> None:
        with self._lock:
            self._event(ev)

    def _event(self, ev: Event) -> None:
        name, now = ev.name, time.time()
        labels = {"source": str(ev.get("source") or "-"), "repository": str(ev.get("repository") or "-")}
        if name == "backup.success":
            self.b_time.labels(**labels).set(now)
            self.b_ok.labels(**labels).set(1)
            for gauge, key in ((self.b_dur, "duration_s"), (self.b_bytes, "bytes"), (self.b_files, "files"),
                               (self.b_added, "stored_bytes_added"), (self.b_lag, "lag_s")):
                if isinstance(ev.get(key), (int, float)):
                    gauge.labels(**labels).set(float(ev[key]))
        elif name == "backup.error":
            self.b_ok.labels(**labels).set(0)
            self.b_err.labels(**labels).inc()
            if ev.get("retrying"):
                self.q_retries.inc()
        elif name.endswith((".success", ".error")) and "step" in ev:
            step = {"repository": labels["repository"], "step": str(ev["step"])}
            if name.endswith(".success"):
                self.s_time.labels(**step).set(now)
                m = _RTO.search(str(ev.get("detail", "")))
                if ev["step"] == "drill" and m:
                    self.rto.labels(repository=labels["repository"]).set(float(m.group(1)))
            else:
                self.s_err.labels(**step).inc()

    def rpo_lines(self, lines: list[Any]) -> None:
        with self._lock:
            for ln in lines:
                labels = {"source": ln.source, "class": ln.dc or "*", "repository": ln.repository}
                if ln.age_s is not None:
                    self.rpo_age.labels(**labels).set(ln.age_s)
                self.rpo.labels(**labels).set(ln.rpo_s)
                self.breached.labels(**labels).set(1 if ln.breached else 0)

    def queue(self, counts: dict[str, int]) -> None:
        with self._lock:
            for state in ("queued", "running", "failed", "done"):
                self.q_jobs.labels(state=state).set(counts.get(state, 0))

    def write(self) -> None:
        """Write the textfile (atomically: a temporary file renamed into place)."""
        if self.textfile is not None:
            self.textfile.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                write_to_textfile(str(self.textfile), self.registry)

    def stopped(self) -> None:
        self.up.set(0)
        self.write()


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``HOST:PORT`` in a background thread."""

    def __init__(self, metrics: Metrics, listen: str, token: str | None = None) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--metrics-listen {listen!r}: use HOST:PORT, e.g. 127.0.0.1:9464")
        host = host.strip("[]")
        token = token if token is not None else os.environ.get("WEIGHTVAULT_METRICS_TOKEN") or None
        if not is_loopback(host) and not token:
            raise UsageError(f"--metrics-listen {listen}: a non-loopback address needs $WEIGHTVAULT_METRICS_TOKEN",
                             hint="set a bearer token for Prometheus to send, or listen on 127.0.0.1")
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain")
                elif self.path.split("?")[0] == "/metrics":
                    given = self.headers.get("Authorization", "")
                    if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                        self._reply(401, b"unauthorized\n", "text/plain")
                    else:
                        self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, int(port)), Handler)
        except OSError as exc:
            raise UsageError(f"--metrics-listen {listen}: {exc.strerror or exc}") from None
        self.address = f"{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="weightvault-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

