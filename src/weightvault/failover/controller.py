"""The failover controller: probe every region each interval (in parallel, each within the
timeout), feed the state machine (``machine.tick``), apply a changed routing through the
actuator, and keep what happened where ``failover status`` and people can read it.

``state_dir`` holds ``state.json`` (the machine's state, the routing, each region's health and
last probe; replaced atomically after every round, and read back at start so a restart never
moves traffic by itself), ``events.jsonl`` (every health change, failover, failback, held
failback and no-healthy-region alert with its reason and the probe evidence; appended and
fsynced) and ``approve`` (written by ``failover approve``, consumed by the next round).

The actuator writes the routing as JSON ``{"region": weight}`` atomically (temp file, fsync,
rename, directory fsync), then runs the optional reload command; a failed reload is an event
and is retried at the next round.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Any

import urllib3

from weightvault.failover.config import FailoverConfig, RegionConfig
from weightvault.failover.machine import ControlState, Event, Probe, RegionState, initial_state, tick
from weightvault.paths import atomic_write

__all__ = ["Controller", "http_probe", "read_status"]

log = logging.getLogger(__name__)


def http_probe(pool: urllib3.PoolManager, region: RegionConfig, timeout: float) -> Probe:
    """GET the region's health URL: ok for 200 with JSON whose ``status`` is absent or
    ``healthy``; the identity is its ``model_sha256``."""
    try:
        r = pool.request("GET", region.health_url, timeout=urllib3.Timeout(total=timeout), retries=False)
    except urllib3.exceptions.TimeoutError:
        return Probe(False, None, f"no answer within {timeout:g} s")
    except urllib3.exceptions.HTTPError as exc:
        return Probe(False, None, f"unreachable: {type(exc).__name__}")
    if r.status != 200:
        return Probe(False, None, f"HTTP {r.status}")
    try:
        doc = json.loads(r.data)
    except ValueError:
        return Probe(False, None, "not a JSON health answer")
    if not isinstance(doc, dict):
        return Probe(False, None, "not a JSON object")
    identity = doc.get("model_sha256") if isinstance(doc.get("model_sha256"), str) else None
    status = doc.get("status", "healthy")
    return Probe(status == "healthy", identity, "healthy" if status == "healthy" else f"reports status {status!r}")


def _state_doc(st: ControlState, rounds: int, applied: dict[str, int]) -> dict[str, Any]:
    return {"version": 1, "time": time.time(), "rounds": rounds, "routing": st.routing, "applied": applied,
            "changed_at": st.changed_at, "failovers": list(st.failovers), "alerting": st.alerting,
            "waiting": st.waiting, "regions": {n: asdict(r) for n, r in st.regions.items()}}


def read_status(cfg: FailoverConfig) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads((cfg.state_dir / "state.json").read_bytes())
    except FileNotFoundError:
        return None
    return doc


class Controller:
    def __init__(self, cfg: FailoverConfig, *, probe: Callable[[RegionConfig], Probe] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.clock = cfg, clock
        self._pool = urllib3.PoolManager(num_pools=len(cfg.regions), maxsize=2)
        self._probe = probe or (lambda r: http_probe(self._pool, r, cfg.timeout))
        self._threads = ThreadPoolExecutor(max_workers=len(cfg.regions), thread_name_prefix="wv-probe")
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.state, self.rounds = self._restore(), 0
        self.applied: dict[str, int] = {}
        self.stopping = threading.Event()

    def _restore(self) -> ControlState:
        doc = read_status(self.cfg)
        st = initial_state(self.cfg.spec)
        if doc is None:
            return st
        names = {r.name for r in self.cfg.spec.regions}
        routing = {k: int(v) for k, v in doc.get("routing", {}).items() if k in names}
        regions = {n: RegionState(**doc["regions"][n]) if n in doc.get("regions", {}) else RegionState()
                   for n in names}
        return replace(st, routing=routing or st.routing, regions=regions, changed_at=doc.get("changed_at"),
                       failovers=tuple(doc.get("failovers", ())))

    def round(self) -> list[Event]:
        """One probe round and what it changed."""
        regions = self.cfg.regions
        results = list(self._threads.map(self._probe, regions))
        approve = self.cfg.state_dir / "approve"
        if approve.exists():
            self.state = replace(self.state, approved=True)
            approve.unlink(missing_ok=True)
        self.state, events = tick(self.cfg.spec, self.state, {r.name: p for r, p in zip(regions, results,
                                                                                         strict=True)}, self.clock())
        self.rounds += 1
        if self.state.routing != self.applied:
            events += self._apply(self.state.routing)
        self._record(events)
        atomic_write(self.cfg.state_dir / "state.json",
                     json.dumps(_state_doc(self.state, self.rounds, self.applied), indent=1).encode(), 0o644)
        return events

    def _apply(self, routing: dict[str, int]) -> list[Event]:
        atomic_write(self.cfg.weights_file, (json.dumps(routing, sort_keys=True) + "\n").encode(), 0o644)
        if self.cfg.reload:
            try:
                subprocess.run(list(self.cfg.reload), check=True, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError) as exc:
                return [Event("reload-failed", self.clock(), None, routing,
                              f"the routing was written but {' '.join(self.cfg.reload)} failed: {exc}")]
        self.applied = dict(routing)
        return []

    def _record(self, events: list[Event]) -> None:
        if not events:
            return
        path = self.cfg.state_dir / "events.jsonl"
        with open(path, "a") as f:
            for e in events:
                f.write(json.dumps(asdict(e), sort_keys=True) + "\n")
                log.warning("failover: %s %s: %s", e.kind, e.region or "", e.reason)
            f.flush()
            os.fsync(f.fileno())

    def run(self, rounds: int | None = None) -> None:
        """Probe every ``interval`` until stopped (or ``rounds`` rounds)."""
        done = 0
        while not self.stopping.is_set() and (rounds is None or done < rounds):
            start = time.monotonic()
            self.round()
            done += 1
            self.stopping.wait(max(0.0, self.cfg.interval - (time.monotonic() - start)))

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self._pool.clear()
