"""The failover controller: probe every region each interval (in parallel, each within the
timeout), feed the state machine (``machine.tick``), apply a changed routing through the
actuator, and keep what happened where ``failover status`` and people can read it.

``state_dir`` holds ``state.json`` (the machine's state, the routing, each region's health and
last probe; replaced atomically after every round, and read back at start so a restart never
moves traffic by itself), ``events.jsonl`` (every health change, failover, failback, held
failback and no-healthy-region alert with its reason and the probe evidence; appended and
fsynced) and ``approve`` (written by ``failover approve``, consumed by the next round).

With ``promote_restore``, a ``restore-needed`` decision starts ``restore_swap`` of the region's
snapshot into its model directory (validated at ``validate_level``) in a thread; the region is
routed to once its probes report the expected model, and the time from the first failed probe of
the lost region to the new routing is the RTO (a ``recovered`` event, ``last_rto_s``).

The actuator (``actuators``: a weights file, or Route 53 weighted records) puts a changed routing
in place; a failure is an ``actuate-failed`` event and is tried again at the next round.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Any

import urllib3

from weightvault import api
from weightvault.errors import UsageError, WeightvaultError
from weightvault.failover.actuators import ActuatorError
from weightvault.failover.config import FailoverConfig, RegionConfig, password_of, resolve_identities
from weightvault.failover.ledger import LedgerWriter
from weightvault.failover.machine import ControlState, Event, Probe, RegionState, initial_state, quorum_probe, tick
from weightvault.paths import atomic_write

__all__ = ["Controller", "Prober", "drill", "http_probe", "read_status"]

log = logging.getLogger(__name__)

#: How long a restore-before-promote waits for the ledger to hold the decision that asked for it
#: (a slow or lost ledger repository must not cost more of the RTO than this).
_LEDGER_WAIT_S = 5.0


def http_probe(pool: urllib3.PoolManager, region: RegionConfig, timeout: float) -> Probe:
    """GET the region's health URL: ok for 200 with JSON whose ``status`` is absent or
    ``healthy`` (with the region's ``healthy_status`` rule: for those codes, whatever the body);
    the identity is the JSON's ``model_sha256``."""
    try:
        r = pool.request("GET", region.health_url, timeout=urllib3.Timeout(total=timeout), retries=False)
    except urllib3.exceptions.TimeoutError:
        return Probe(False, None, f"no answer within {timeout:g} s")
    except urllib3.exceptions.HTTPError as exc:
        return Probe(False, None, f"unreachable: {type(exc).__name__}")
    rule = region.healthy_status
    if r.status != 200 if rule is None else r.status not in rule:
        return Probe(False, None, f"HTTP {r.status}")
    try:
        doc = json.loads(r.data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return Probe(True, None, f"HTTP {r.status}") if rule is not None else Probe(False, None, "not a JSON object")
    identity = doc.get("model_sha256") if isinstance(doc.get("model_sha256"), str) else None
    status = "healthy" if rule is not None else doc.get("status", "healthy")  # the code rule decides alone
    return Probe(status == "healthy", identity, "healthy" if status == "healthy" else f"reports status {status!r}")


def _state_doc(st: ControlState, rounds: int, applied: dict[str, int], rto: float | None) -> dict[str, Any]:
    return {"version": 1, "time": time.time(), "rounds": rounds, "routing": st.routing, "applied": applied,
            "changed_at": st.changed_at, "failovers": list(st.failovers), "alerting": st.alerting,
            "waiting": st.waiting, "restoring": st.restoring, "last_rto_s": rto,
            "regions": {n: asdict(r) for n, r in st.regions.items()}}


def _password(region: RegionConfig) -> str:
    return password_of(f"region {region.name}", region.password_env, region.password_file)


def read_status(cfg: FailoverConfig) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads((cfg.state_dir / "state.json").read_bytes())
    except FileNotFoundError:
        return None
    return doc


class Prober:
    """Probes every region from every vantage point at once (each within the timeout), and
    combines a region's probes with the quorum (``machine.quorum_probe``)."""

    def __init__(self, cfg: FailoverConfig) -> None:
        self.cfg = cfg
        n = len(cfg.regions)
        self._pools: dict[str, urllib3.PoolManager] = {
            v.name: urllib3.ProxyManager(v.proxy, num_pools=n, maxsize=2) if v.proxy
            else urllib3.PoolManager(num_pools=n, maxsize=2) for v in cfg.vantages}
        self._threads = ThreadPoolExecutor(max_workers=n * len(cfg.vantages), thread_name_prefix="wv-probe")

    def probe(self, regions: tuple[RegionConfig, ...]) -> dict[str, Probe]:
        pairs = [(r, v.name) for r in regions for v in self.cfg.vantages]
        results = list(self._threads.map(lambda rv: http_probe(self._pools[rv[1]], rv[0], self.cfg.timeout), pairs))
        seen: dict[str, list[tuple[str, Probe]]] = {r.name: [] for r in regions}
        for (r, vantage), p in zip(pairs, results, strict=True):
            seen[r.name].append((vantage, p))
        return {name: quorum_probe(ps, self.cfg.quorum) for name, ps in seen.items()}

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        for pool in self._pools.values():
            pool.clear()


class Controller:
    def __init__(self, cfg: FailoverConfig, *, clock: Callable[[], float] = time.time) -> None:
        cfg = resolve_identities(cfg)
        self.cfg, self.clock = cfg, clock
        self._prober = Prober(cfg)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.state, self.rounds = self._restore(), 0
        self.applied: dict[str, int] = {}
        self.stopping = threading.Event()
        self._restores: queue.Queue[Event] = queue.Queue()
        self._restore_started: float | None = None
        self._pending_restores: list[str] = []
        self.outage_start: float | None = None  # the first failed probe of a routed region
        self.last_rto: float | None = None
        self.ledger = LedgerWriter(cfg.ledger)

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
        probes = self._prober.probe(self.cfg.regions)
        approve = self.cfg.state_dir / "approve"
        if approve.exists():
            self.state = replace(self.state, approved=True)
            approve.unlink(missing_ok=True)
        now = self.clock()
        done = self._finished_restores(now)
        if self.outage_start is None and any(not probes[n].ok for n in self.state.routing if n in probes):
            self.outage_start = now
        before = dict(self.state.routing)
        self.state, events = tick(self.cfg.spec, self.state, probes, now)
        events = done + events
        self.rounds += 1
        events += self._after(events, before, now)
        self._record(events)  # the decision and its evidence are durable before the routing moves
        if self.state.routing != self.applied:
            applied = self._apply(self.state.routing)
            self._record(applied)
            events += applied
        doc = _state_doc(self.state, self.rounds, self.applied, self.last_rto)
        doc.update(ledger=[t.repository for t in self.cfg.ledger], vantages=[v.name for v in self.cfg.vantages],
                   quorum=self.cfg.quorum)
        atomic_write(self.cfg.state_dir / "state.json", json.dumps(doc, indent=1).encode(), 0o644)
        self.ledger.add(events, before)
        for name in self._pending_restores:  # after the decision is queued for the ledger
            self._start_restore(name, now)
        self._pending_restores.clear()
        return events

    def _after(self, events: list[Event], before: dict[str, int], now: float) -> list[Event]:
        """Start a restore the machine asked for; measure the RTO of a failover."""
        out: list[Event] = []
        for e in events:
            if e.kind == "restore-needed" and e.region is not None:
                self._pending_restores.append(e.region)
        failed_over = self.state.routing != before and any(e.kind == "failover" for e in events)
        if failed_over and self.outage_start is not None:
            self.last_rto = now - self.outage_start
            out.append(Event("recovered", now, ",".join(self.state.routing), self.state.routing,
                             f"traffic on {', '.join(self.state.routing)} {self.last_rto:.1f} s after the first"
                             " failed probe", {"rto_s": f"{self.last_rto:.3f}"}))
        if all(self.state.regions[n].health == "healthy" for n in self.state.routing):
            self.outage_start = None
        return out

    def _start_restore(self, name: str, now: float) -> None:
        region, cfg = self.cfg.region(name), self.cfg
        self._restore_started = now

        def work() -> None:
            self.ledger.flush(_LEDGER_WAIT_S)  # the ledger shows the decision before the restore's record
            t0 = time.monotonic()
            try:
                pw = _password(region)
                repo = api.Repository.open(str(region.repository), pw)
                res = repo.restore_swap(str(region.snapshot), str(region.model_dir), level=cfg.validate_level,
                            check=cfg.validate_check)
                self._restores.put(Event("restored", self.clock(), name, self.state.routing,
                                         f"snapshot {res.snapshot[:8]} restored into {region.model_dir} and validated"
                                         f" at level {cfg.validate_level} in {time.monotonic() - t0:.1f} s;"
                                         " waiting for the region to report it"))
            except WeightvaultError as exc:
                self._restores.put(Event("restore-failed", self.clock(), name, self.state.routing,
                                         f"restoring into {region.model_dir} failed: {exc.message}"))
        threading.Thread(target=work, name=f"wv-restore-{name}", daemon=True).start()

    def _finished_restores(self, now: float) -> list[Event]:
        out = []
        while not self._restores.empty():
            e = self._restores.get_nowait()
            out.append(e)
            if e.kind == "restore-failed":
                self.state = replace(self.state, restoring=None)
        late = self._restore_started is not None and now - self._restore_started > self.cfg.promote_timeout
        if self.state.restoring is not None and late:
            out.append(Event("restore-failed", now, self.state.restoring, self.state.routing,
                             f"{self.state.restoring} did not report the expected model within"
                             f" {self.cfg.promote_timeout:g} s of the restore's start"))
            self.state = replace(self.state, restoring=None)
        if self.state.restoring is None:
            self._restore_started = None
        return out

    def _apply(self, routing: dict[str, int]) -> list[Event]:
        try:
            self.cfg.actuator.apply(routing)
        except ActuatorError as exc:
            return [Event("actuate-failed", self.clock(), None, routing, f"{exc} (tried again next round)")]
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
        self._prober.close()
        self.ledger.close()


def drill(cfg: FailoverConfig, name: str, *, clock: Callable[[], float] = time.time,
          poll: float = 0.2) -> Event:
    """Rehearse restore-before-promote on region ``name`` without moving traffic: restore its
    snapshot into its model directory (``restore --swap``, validated), wait until its health
    endpoint reports the expected model, and record the time it took (the RTO this region would
    give) as a ``drill`` event in the event log. WeightvaultError if it cannot be done."""
    region = next((r for r in cfg.regions if r.name == name), None)
    if region is not None and region.restorable:
        cfg = resolve_identities(replace(cfg, regions=(region,), spec=replace(cfg.spec, regions=(
            cfg.spec.region(name),))))
        region = cfg.regions[0]
    if region is None or not region.restorable:
        raise UsageError(f"region {name!r} is not one the controller can restore into",
                         hint="give it model_dir, repository and snapshot in regions.toml")
    t0, start = time.monotonic(), clock()
    repo = api.Repository.open(str(region.repository), _password(region))
    res = repo.restore_swap(str(region.snapshot), str(region.model_dir), level=cfg.validate_level,
                            check=cfg.validate_check)
    restored = time.monotonic() - t0
    prober = Prober(cfg)
    try:
        probe = prober.probe((region,))[name]
        while not (probe.ok and probe.identity == region.expected_sha256):
            if time.monotonic() - t0 > cfg.promote_timeout:
                raise UsageError(f"region {name} did not report the expected model within {cfg.promote_timeout:g} s"
                                 f" of the restore's start (last probe: {probe.reason}, model {probe.identity})",
                                 hint="check that its server reloads the model from model_dir")
            time.sleep(poll)
            probe = prober.probe((region,))[name]
    finally:
        prober.close()
    rto = time.monotonic() - t0
    why = (f"restored snapshot {res.snapshot[:8]} into {region.model_dir}, validated at level {cfg.validate_level}"
           f" in {restored:.1f} s; serving it after {rto:.1f} s (no traffic moved)")
    event = Event("drill", start, name, {}, why, {"rto_s": f"{rto:.3f}", "restore_s": f"{restored:.3f}"})
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.state_dir / "events.jsonl", "a") as f:
        f.write(json.dumps(asdict(event), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    writer = LedgerWriter(cfg.ledger)
    writer.add([event], {}, op="failover-drill")
    writer.close()
    return event
