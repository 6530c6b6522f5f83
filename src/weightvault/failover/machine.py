"""The failover controller's decisions, as a pure state machine: probes in, routing and events out.

``tick(spec, state, probes, now)`` never does I/O and never reads a clock; the runner feeds it.

* A region is **unhealthy** after ``failure_threshold`` consecutive failed probes and **healthy**
  after ``success_threshold`` consecutive good ones (Kubernetes' ``failureThreshold`` /
  ``successThreshold``); until then it keeps its previous state (``unknown`` at start). A probe
  that reports a model identity other than the region's expected one is a failed probe: a region
  serving the wrong model is never routed to.
* The routing is the healthy regions of the best priority present (the lowest number), with their
  weights. At start it is the best priority of the configuration, and it stays there while those
  regions' health is still unknown.
* **Failover** (a routed region became unhealthy and a healthy one exists) happens at once.
* **Failback** or any other change towards better regions is **damped**: only after a dwell time
  since the last change, doubled for each failover in the last ``backoff_window`` (up to
  ``max_dwell``), and, with ``manual_failback``, only after ``failover approve``.
* **Never route to zero**: when no region is healthy the routing stays as it was and a
  ``no-healthy-region`` event is raised (once, until a region is healthy again).
* **Several vantage points** (``quorum_probe``): a region's probe is good when at least ``quorum``
  of the vantage points saw it healthy serving one same model (Route 53's quorum of checkers),
  so one prober's broken network neither fails a region over nor keeps a dead one routed.
* **Restore before promote** (``promote_restore``): when no region is healthy, or only regions of a
  worse priority than a restorable one that answers with another model, a ``restore-needed``
  event names the best such region (the controller restores the expected model into it and
  clears ``restoring`` if that fails; the same region is asked for again only ``min_dwell``
  later). The region is routed to only once its probes report the expected model M times, as
  any other (a move towards it from a worse region is damped like a failback).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

__all__ = ["ControlState", "Event", "Probe", "RegionSpec", "RegionState", "Spec", "initial_state", "quorum_probe",
           "tick"]


@dataclass(frozen=True)
class RegionSpec:
    name: str
    priority: int = 1  # lower is preferred (1: the primary)
    weight: int = 100
    expected: str | None = None  # the model identity the region must report (None: not checked)
    restorable: bool = False  # the controller can restore the expected model into it (promote_restore)


@dataclass(frozen=True)
class Spec:
    regions: tuple[RegionSpec, ...]
    failure_threshold: int = 3
    success_threshold: int = 2
    min_dwell: float = 300.0  # seconds after a change before a damped one
    max_dwell: float = 3600.0
    backoff_window: float = 3600.0
    manual_failback: bool = False
    promote_restore: bool = False  # restore the right model into a standby before routing to it

    def region(self, name: str) -> RegionSpec:
        return next(r for r in self.regions if r.name == name)


@dataclass(frozen=True)
class Probe:
    ok: bool  # the health endpoint answered healthy in time
    identity: str | None = None  # the model identity it reported
    reason: str = ""  # why not ok, in words


@dataclass(frozen=True)
class RegionState:
    health: str = "unknown"  # unknown, healthy, unhealthy
    fails: int = 0
    successes: int = 0
    last: str = ""  # the last probe, in words
    wrong_model: bool = False  # the last probe answered, with another model's identity


@dataclass(frozen=True)
class Event:
    kind: str  # healthy, unhealthy, failover, failback, no-healthy-region, failback-waiting
    time: float
    region: str | None
    routing: dict[str, int]
    reason: str
    evidence: dict[str, str] = field(default_factory=dict)  # region -> its last probe


@dataclass(frozen=True)
class ControlState:
    regions: dict[str, RegionState]
    routing: dict[str, int]
    changed_at: float | None = None
    failovers: tuple[float, ...] = ()  # times of failovers (for the back-off)
    approved: bool = False  # ``failover approve`` given for the next damped change
    alerting: bool = False  # a no-healthy-region alert is raised
    waiting: str = ""  # the damped change being held back, in words (reported once)
    restoring: str | None = None  # the region a restore-before-promote is running for
    restore_asked: tuple[tuple[str, float], ...] = ()  # (region, when its restore was last asked for)


def quorum_probe(seen: Sequence[tuple[str, Probe]], quorum: int) -> Probe:
    """One region's probe from the probes of several vantage points (name, probe): good when at
    least ``quorum`` saw it healthy reporting the same model identity (then that identity); its
    reason names every vantage point's verdict. One vantage point: its probe as it is."""
    if len(seen) == 1:
        return seen[0][1]
    groups = Counter(p.identity for _, p in seen if p.ok)
    identity, votes = groups.most_common(1)[0] if groups else (None, 0)
    verdicts = "; ".join(f"{v}: {p.reason}" for v, p in seen)
    if votes >= quorum:
        return Probe(True, identity, f"healthy from {votes} of {len(seen)} vantage points")
    split = " (they disagree on the model)" if sum(groups.values()) >= quorum else ""
    return Probe(False, None, f"healthy from {votes} of {len(seen)} vantage points, quorum {quorum}{split}:"
                 f" {verdicts}")


def _best(spec: Spec, names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    top = min(spec.region(n).priority for n in names)
    return {n: spec.region(n).weight for n in sorted(names) if spec.region(n).priority == top}


def initial_state(spec: Spec) -> ControlState:
    return ControlState({r.name: RegionState() for r in spec.regions}, _best(spec, [r.name for r in spec.regions]))


def _observe(spec: Spec, name: str, old: RegionState, p: Probe) -> RegionState:
    expected = spec.region(name).expected
    good = p.ok and (expected is None or p.identity == expected)
    why = p.reason if not p.ok else (f"serves model {p.identity or '(none reported)'}, expected {expected}"
                                     if not good else "healthy")
    if good:
        n = old.successes + 1
        health = "healthy" if n >= spec.success_threshold else old.health
        return RegionState(health, 0, n, why)
    n = old.fails + 1
    return RegionState("unhealthy" if n >= spec.failure_threshold else old.health, n, 0, why, p.ok and not good)


def _dwell(spec: Spec, state: ControlState, now: float) -> float:
    recent = sum(1 for t in state.failovers if now - t <= spec.backoff_window)
    return float(min(spec.max_dwell, spec.min_dwell * 2.0 ** max(0, recent - 1)))


def tick(spec: Spec, state: ControlState, probes: Mapping[str, Probe], now: float) -> tuple[ControlState, list[Event]]:
    """One round of probes (a region missing from ``probes`` was not probed): the new state and
    what happened, in order."""
    events: list[Event] = []
    regions = dict(state.regions)
    for name, p in probes.items():
        if name not in regions:
            continue
        new = _observe(spec, name, regions[name], p)
        if new.health != regions[name].health:
            events.append(Event(new.health, now, name, state.routing, new.last))
        regions[name] = new
    evidence = {n: r.last for n, r in regions.items()}
    st = replace(state, regions=regions)
    desired = _best(spec, [n for n, r in regions.items() if r.health == "healthy"])
    lost = [n for n in st.routing if regions[n].health == "unhealthy"]
    if st.restoring is not None and regions[st.restoring].health == "healthy":
        st = replace(st, restoring=None)  # restored and serving the right model: an ordinary candidate now
    if not desired:
        if lost and not st.alerting:
            events.append(Event("no-healthy-region", now, None, st.routing, "no region is healthy: the routing stays"
                                f" as it was ({', '.join(sorted(st.routing))})", evidence))
        if lost and spec.promote_restore and st.restoring is None:
            st = _restore_one(spec, st, now, events, evidence)
        return replace(st, alerting=bool(lost) or st.alerting), events
    st, events = _route(spec, replace(st, alerting=False), desired, lost, now, events, evidence)
    if spec.promote_restore and st.restoring is None and st.routing:  # a better standby than the routed one is stale
        st = _restore_one(spec, st, now, events, evidence, min(spec.region(n).priority for n in st.routing))
    return st, events


def _route(spec: Spec, st: ControlState, desired: dict[str, int], lost: list[str], now: float, events: list[Event],
           evidence: dict[str, str]) -> tuple[ControlState, list[Event]]:
    if desired == st.routing:
        return replace(st, waiting=""), events
    if not lost and any(st.regions[n].health == "unknown" for n in st.routing):
        return st, events  # nothing is known yet of where traffic goes: no reason to move it
    if lost:
        why = f"{', '.join(lost)} unhealthy: traffic to {', '.join(desired)}"
        events.append(Event("failover", now, ",".join(desired), desired, why, evidence))
        return replace(st, routing=desired, changed_at=now, failovers=(*st.failovers, now)[-16:], approved=False,
                       waiting=""), events
    return _damped(spec, st, desired, now, events, evidence)


def _restore_one(spec: Spec, st: ControlState, now: float, events: list[Event], evidence: dict[str, str],
                 better_than: int | None = None) -> ControlState:
    """A region answers with a stale model and can be restored, and no region is healthy (or,
    with ``better_than``, only regions of a worse priority than it carry the traffic): ask for
    the restore of the best such region (it is routed to once it reports the right model, a
    failback being damped as any). A region is asked for again only ``min_dwell`` after its last
    restore was asked for (a failed restore is not retried every round)."""
    asked = dict(st.restore_asked)
    stale = [n for n, r in st.regions.items() if r.wrong_model and spec.region(n).restorable and n not in st.routing
             and (better_than is None or spec.region(n).priority < better_than)
             and (n not in asked or now - asked[n] >= spec.min_dwell)]
    if not stale:
        return st
    target = min(stale, key=lambda n: (spec.region(n).priority, n))
    situation = "no region is healthy" if better_than is None else (
        f"traffic is on {', '.join(sorted(st.routing))} (priority {better_than})")
    events.append(Event("restore-needed", now, target, st.routing, f"{situation}; {target} answers but"
                        f" {st.regions[target].last}: restoring the expected model into it before routing there",
                        evidence))
    asked[target] = now
    return replace(st, restoring=target, restore_asked=tuple(sorted(asked.items())))


def _damped(spec: Spec, st: ControlState, desired: dict[str, int], now: float, events: list[Event],
            evidence: dict[str, str]) -> tuple[ControlState, list[Event]]:
    dwell = _dwell(spec, st, now)
    held = None
    if st.changed_at is not None and now - st.changed_at < dwell:
        held = f"dwell: {dwell:.0f} s after the last change, {dwell - (now - st.changed_at):.0f} s to go"
    elif spec.manual_failback and not st.approved:
        held = "waiting for `weightvault failover approve`"
    if held is not None:
        if held.split(":")[0] != st.waiting.split(":")[0]:
            events.append(Event("failback-waiting", now, ",".join(desired), st.routing,
                                f"{', '.join(desired)} healthy again; {held}", evidence))
        return replace(st, waiting=held), events
    why = f"{', '.join(desired)} healthy for {spec.success_threshold} probes and the dwell time has passed"
    events.append(Event("failback", now, ",".join(desired), desired, why, evidence))
    return replace(st, routing=desired, changed_at=now, approved=False, waiting=""), events
