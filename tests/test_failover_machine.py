"""Golden tests of the failover state machine: probe sequences in, routing and events out.

Each scenario is a script of ticks (10 s apart): per region ``+`` a good probe, ``-`` a failed
one, ``w`` the wrong model, ``.`` not probed; and after each tick the routing expected."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.failover.machine import (
    ControlState,
    Event,
    Probe,
    RegionSpec,
    Spec,
    initial_state,
    quorum_probe,
    tick,
)

SPEC = Spec((RegionSpec("eu", 1, 100, "sha-good"), RegionSpec("us", 2, 100, "sha-good"),
             RegionSpec("ap", 3, 100, "sha-good")), failure_threshold=3, success_threshold=2, min_dwell=60,
            max_dwell=600, backoff_window=3600)
PROBE = {"+": Probe(True, "sha-good"), "-": Probe(False, None, "connection refused"),
         "w": Probe(True, "sha-stale")}


def run(script: list[tuple[str, str]], spec: Spec = SPEC, state: ControlState | None = None,
        start: float = 0.0) -> tuple[ControlState, list[Event], list[str]]:
    """``script``: (probes for eu, us, ap in order, expected routing as '+'-joined names)."""
    st = state or initial_state(spec)
    events: list[Event] = []
    routes = []
    for i, (probes, expected) in enumerate(script):
        obs = {r.name: PROBE[c] for r, c in zip(spec.regions, probes, strict=True) if c != "."}
        st, evs = tick(spec, st, obs, start + 10.0 * i)
        events += evs
        got = "+".join(sorted(st.routing))
        routes.append(got)
        assert got == expected, (i, probes, got, expected, evs)
    return st, events, routes


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events if e.kind not in ("healthy", "unhealthy")]


def test_starts_on_the_primary_and_fails_over_after_exactly_n_failures() -> None:
    _, events, _ = run([("+++", "eu"), ("+++", "eu"), ("-++", "eu"), ("-++", "eu"), ("-++", "us"), ("-++", "us")])
    assert kinds(events) == ["failover"]
    failover = next(e for e in events if e.kind == "failover")
    assert failover.time == 40.0 and "eu unhealthy" in failover.reason
    assert failover.evidence["eu"] == "connection refused" and failover.evidence["us"] == "healthy"


def test_fewer_than_n_failures_in_a_row_change_nothing() -> None:
    _, events, _ = run([("+++", "eu"), ("+++", "eu"), ("-++", "eu"), ("-++", "eu"), ("+++", "eu"), ("-++", "eu"),
                        ("-++", "eu"), ("+++", "eu")])
    assert kinds(events) == [] and not [e for e in events if e.kind == "unhealthy"]


def test_flapping_every_probe_never_moves_traffic() -> None:
    script = [("+++", "eu"), ("+++", "eu")] + [("-++" if i % 2 else "+++", "eu") for i in range(200)]
    _, events, _ = run(script)
    assert kinds(events) == []


def test_failback_needs_m_successes_and_the_dwell_time() -> None:
    st, events, _ = run([("+++", "eu"), ("+++", "eu"), ("-++", "eu"), ("-++", "eu"), ("-++", "us"),  # t=40: failover
                         ("+++", "us"), ("+++", "us"),  # t=60: eu healthy again (2 good probes), dwell runs to t=100
                         ("+++", "us"), ("+++", "us"), ("+++", "us"), ("+++", "eu")])
    assert kinds(events) == ["failover", "failback-waiting", "failback"]
    assert next(e for e in events if e.kind == "failback").time == 100.0
    assert st.routing == {"eu": 100}


def test_repeated_failovers_double_the_dwell() -> None:
    first = [("+++", "eu"), ("+++", "eu"), ("-++", "eu"), ("-++", "eu"), ("-++", "us")] + [("+++", "us")] * 5 + [
        ("+++", "eu")]
    st, events, _ = run(first)
    assert kinds(events) == ["failover", "failback-waiting", "failback"]  # back at t=100: dwell 60 s
    again = [("-++", "eu"), ("-++", "eu"), ("-++", "us")] + [("+++", "us")] * 11 + [("+++", "eu")]
    st, events, _ = run(again, state=st, start=110.0)  # failover at t=130, back at t=250: dwell 2 x 60 s
    back = next(e for e in events if e.kind == "failback")
    failover = next(e for e in events if e.kind == "failover")
    assert (failover.time, back.time) == (130.0, 250.0)


def test_never_route_to_zero_regions() -> None:
    script = [("+++", "eu"), ("+++", "eu")] + [("---", "eu")] * 5 + [("-+-", "eu"), ("-+-", "us")]
    _, events, _ = run(script)
    assert kinds(events) == ["no-healthy-region", "failover"]
    alert = next(e for e in events if e.kind == "no-healthy-region")
    assert alert.routing == {"eu": 100} and "stays" in alert.reason


def test_a_standby_serving_the_wrong_model_is_never_promoted() -> None:
    script = [("+w+", "eu"), ("+w+", "eu"), ("-w+", "eu"), ("-w+", "eu"), ("-w+", "ap"), ("-w+", "ap")]
    st, events, _ = run(script)
    assert st.regions["us"].health == "unhealthy" and "expected sha-good" in st.regions["us"].last
    assert kinds(events) == ["failover"] and next(e for e in events if e.kind == "failover").routing == {"ap": 100}


def test_the_primary_serving_the_wrong_model_fails_over() -> None:
    _, events, _ = run([("+++", "eu"), ("+++", "eu"), ("w++", "eu"), ("w++", "eu"), ("w++", "us")])
    assert kinds(events) == ["failover"]


def test_manual_failback_waits_for_approval() -> None:
    spec = Spec(SPEC.regions, 3, 2, min_dwell=0, manual_failback=True)
    st, events, _ = run([("+++", "eu"), ("+++", "eu"), ("-++", "eu"), ("-++", "eu"), ("-++", "us"),
                         ("+++", "us"), ("+++", "us"), ("+++", "us")], spec)
    assert kinds(events) == ["failover", "failback-waiting"] and "approve" in st.waiting
    st = ControlState(**{**st.__dict__, "approved": True})
    st, evs = tick(spec, st, {"eu": PROBE["+"]}, 200.0)
    assert st.routing == {"eu": 100} and [e.kind for e in evs] == ["failback"] and not st.approved


def test_unknown_primary_keeps_traffic_while_a_standby_turns_healthy() -> None:
    _, events, _ = run([(".++", "eu"), (".++", "eu"), (".++", "eu")])
    assert kinds(events) == []


def test_same_priority_regions_share_traffic_by_weight() -> None:
    spec = Spec((RegionSpec("a", 1, 70), RegionSpec("b", 1, 30), RegionSpec("c", 2, 100)), 2, 1, min_dwell=0)
    st = initial_state(spec)
    assert st.routing == {"a": 70, "b": 30}
    st, _ = tick(spec, st, {"a": Probe(True), "b": Probe(True), "c": Probe(True)}, 0)
    st, _ = tick(spec, st, {"a": Probe(False), "b": Probe(True), "c": Probe(True)}, 10)
    st, evs = tick(spec, st, {"a": Probe(False), "b": Probe(True), "c": Probe(True)}, 20)
    assert st.routing == {"b": 30} and [e.kind for e in evs if e.kind == "failover"] == ["failover"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("+-w."), st.sampled_from("+-w."), st.sampled_from("+-w.")),
                min_size=1, max_size=60))
def test_invariants_under_any_probe_sequence(seq: list[tuple[str, str, str]]) -> None:
    """Routing is never empty; only healthy regions gain traffic; a failover only leaves an
    unhealthy region; no two damped changes closer than the minimum dwell."""
    state = initial_state(SPEC)
    damped: list[float] = []
    for i, probes in enumerate(seq):
        before = state.routing
        obs = {r.name: PROBE[c] for r, c in zip(SPEC.regions, probes, strict=True) if c != "."}
        state, events = tick(SPEC, state, obs, 10.0 * i)
        assert state.routing
        for name in set(state.routing) - set(before):
            assert state.regions[name].health == "healthy"
        for e in events:
            if e.kind == "failover":
                assert any(state.regions[n].health == "unhealthy" for n in before)
            if e.kind == "failback":
                damped.append(e.time)
    assert all(b - a >= SPEC.min_dwell for a, b in itertools.pairwise(damped))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_the_failure_threshold_is_exact(n: int) -> None:
    spec = Spec(SPEC.regions, failure_threshold=n, success_threshold=1)
    state = initial_state(spec)
    state, _ = tick(spec, state, {"eu": PROBE["+"], "us": PROBE["+"]}, 0)
    for i in range(1, n + 1):
        state, _ = tick(spec, state, {"eu": PROBE["-"], "us": PROBE["+"]}, float(i))
        assert (state.routing == {"us": 100}) == (i == n)


def test_restore_before_promote_asks_once_for_the_best_stale_region() -> None:
    spec = Spec((RegionSpec("eu", 1, 100, "sha-good"), RegionSpec("us", 2, 100, "sha-good", restorable=True),
                 RegionSpec("ap", 3, 100, "sha-good", restorable=True)), 3, 2, min_dwell=0, promote_restore=True)
    st, events, _ = run([("+ww", "eu"), ("+ww", "eu"), ("-ww", "eu"), ("-ww", "eu"), ("-ww", "eu"), ("-ww", "eu")],
                        spec)
    asks = [e for e in events if e.kind == "restore-needed"]
    assert [e.region for e in asks] == ["us"] and st.restoring == "us"  # once, the best priority
    st, events, _ = run([("-+w", "eu"), ("-+w", "us")], spec, state=st, start=100.0)  # restored: right model now
    assert [e.kind for e in events if e.kind == "failover"] == ["failover"] and st.restoring is None
    without = Spec(spec.regions, 3, 2, min_dwell=0)
    _, events, _ = run([("+ww", "eu"), ("+ww", "eu")] + [("-ww", "eu")] * 4, without)
    assert not [e for e in events if e.kind == "restore-needed"]  # not asked for: the routing just stays


def test_a_quorum_of_vantage_points_decides_a_regions_probe() -> None:
    good, other = Probe(True, "sha-good", "healthy"), Probe(True, "sha-stale", "healthy")
    down = Probe(False, None, "HTTP 502")
    assert quorum_probe([("here", down)], 1) == down  # one vantage point: its probe as it is
    p = quorum_probe([("here", good), ("us", down), ("ap", good)], 2)
    assert p.ok and p.identity == "sha-good" and "2 of 3" in p.reason
    p = quorum_probe([("here", good), ("us", down), ("ap", down)], 2)  # one prober alone does not keep it routed
    assert not p.ok and "quorum 2" in p.reason and "us: HTTP 502" in p.reason
    p = quorum_probe([("here", good), ("us", other), ("ap", down)], 2)  # two answers, two models: no quorum
    assert not p.ok and "disagree on the model" in p.reason
    wrong = quorum_probe([("here", other), ("us", other), ("ap", good)], 2)  # a quorum on the wrong model
    assert wrong.ok and wrong.identity == "sha-stale"
    st = initial_state(SPEC)
    for t in range(3):  # the wrong model seen by a quorum is a failed probe of the region: never promoted
        st, _ = tick(SPEC, st, {"eu": wrong, "us": good, "ap": good}, float(t))
    assert st.regions["eu"].health == "unhealthy" and st.regions["eu"].wrong_model


def test_a_stale_better_standby_is_restored_while_a_worse_one_carries_the_traffic() -> None:
    spec = Spec((RegionSpec("eu", 1, 100, "sha-good"), RegionSpec("us", 2, 100, "sha-good", restorable=True),
                 RegionSpec("ap", 3, 100, "sha-good")), 3, 2, min_dwell=60, promote_restore=True)
    st, events, _ = run([("+w+", "eu"), ("+w+", "eu"), ("-w+", "eu"), ("-w+", "eu"), ("-w+", "ap")], spec)
    assert kinds(events) == ["failover", "restore-needed"]  # traffic moves at once; the restore does not hold it
    ask = events[-1]
    assert ask.region == "us" and "traffic is on ap (priority 3)" in ask.reason and st.restoring == "us"
    # restored: us reports the right model; the move from ap to the better us is damped like a failback
    ok, events, _ = run([("-++", "ap"), ("-++", "ap")], spec, state=st, start=50.0)
    assert ok.restoring is None and "failback-waiting" in kinds(events)
    ok, events, _ = run([("-++", "us")], spec, state=ok, start=110.0)
    assert kinds(events) == ["failback"]
    # the restore failed instead: asked for again only min_dwell after the first ask
    st, events, _ = run([("-w+", "ap")] * 5, spec, state=replace(st, restoring=None), start=50.0)
    assert not kinds(events)
    st, events, _ = run([("-w+", "ap")], spec, state=st, start=100.0)
    assert kinds(events) == ["restore-needed"]
