"""The failover controller's decisions in repository ledgers (``Repository.record``, op
``failover``; drills as op ``failover-drill``).

A route change, an alert and a recovery (with its RTO as ``duration_s``) are each one record
whose ``detail`` holds the event's kind, reason and the probe evidence (every region's last
probe), ``source`` the routing before and ``target`` the routing after. They go to the ledger of
``[ledger] repository`` or, without that table, of every distinct repository the regions name
(the replicas: a lost region's ledger may be gone with it, the others keep the record).

The controller's probe loop never waits for a repository: records are queued and written in
order by one thread. ``flush`` waits for what is queued so far (a restore-before-promote waits
briefly for it, so the ledger shows the decision before the restore it caused); ``close`` waits
for the queue (a bounded time). A repository that cannot be opened or written is logged and
tried again with the next record; the controller's own ``events.jsonl`` (fsynced before the
routing moves) stays the first record of every decision.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from weightvault import api
from weightvault.errors import WeightvaultError
from weightvault.failover.machine import Event

__all__ = ["LEDGER_KINDS", "LedgerTarget", "LedgerWriter", "describe"]

log = logging.getLogger(__name__)

#: The events that are recorded (health changes and held failbacks stay in events.jsonl only).
LEDGER_KINDS = frozenset({"failover", "failback", "recovered", "no-healthy-region", "restore-failed",
                          "actuate-failed", "drill"})
_FAILED = frozenset({"no-healthy-region", "restore-failed", "actuate-failed"})


@dataclass(frozen=True)
class LedgerTarget:
    repository: str
    password: Callable[[], str]  # read when the repository is first opened


def _routing(r: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(r.items())) or "(none)"


def describe(e: Event, before: Mapping[str, int]) -> dict[str, object]:
    """The record's fields for event ``e`` (``before``: the routing before it)."""
    evidence = "; ".join(f"{k}: {v}" for k, v in sorted(e.evidence.items()) if k != "rto_s" and k != "restore_s")
    detail = f"{e.kind}" + (f" ({e.region})" if e.region else "") + f": {e.reason}"
    if evidence:
        detail += f" | probes: {evidence}"
    rto = e.evidence.get("rto_s")
    drill = e.kind == "drill"  # no traffic moved: the region rehearsed on is the target
    return {"ok": e.kind not in _FAILED, "detail": detail, "source": None if drill else _routing(before),
            "target": e.region if drill else _routing(e.routing), "duration_s": float(rto) if rto else 0.0}


class LedgerWriter:
    def __init__(self, targets: Sequence[LedgerTarget]) -> None:
        self.targets = tuple(targets)
        self._open: dict[str, api.Repository] = {}
        self._queue: queue.Queue[tuple[str, dict[str, object]] | threading.Event | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.tried = 0  # appends tried, over all targets (a failed write is logged by the engine)
        self.failed = 0  # repositories that could not be opened

    def add(self, events: Sequence[Event], before: Mapping[str, int], op: str = "failover") -> None:
        """Queue a record of each event of a recorded kind."""
        if not self.targets:
            return
        for e in events:
            if e.kind in LEDGER_KINDS:
                self._queue.put((op, describe(e, before)))
                before = e.routing if e.kind in ("failover", "failback") else before
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="wv-failover-ledger", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            op, fields = item
            for t in self.targets:
                self._write(t, op, fields)

    def _write(self, t: LedgerTarget, op: str, fields: dict[str, object]) -> None:
        try:
            repo = self._open.get(t.repository)
            if repo is None:
                repo = self._open[t.repository] = api.Repository.open(t.repository, t.password())
            source, target = fields["source"], fields["target"]
            repo.record(op, ok=bool(fields["ok"]), detail=str(fields["detail"]),
                        source=None if source is None else str(source), target=None if target is None else str(target),
                        duration_s=float(str(fields["duration_s"])))
            self.tried += 1
        except WeightvaultError as exc:
            self.failed += 1
            log.warning("failover: could not record in the ledger of %s: %s", t.repository, exc.message)

    def flush(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until every record queued so far is written; True if
        it was. Used so that a restore's own ledger record follows the decision that asked for it."""
        if self._thread is None:
            return True
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (waiting at most ``timeout`` seconds), then stop."""
        if self._thread is None:
            return
        self._queue.put(None)
        deadline = time.monotonic() + timeout
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("failover: %d ledger record(s) were not written within %g s", self._queue.qsize(), timeout)
        self._thread = None
