"""Windows over a simulated week (a fake clock through ``apply_policy(now=...)``): prune and drills
run only inside their window, wait (and say until when) outside it, stay due meanwhile; backups
and retention never wait."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, write
from weightvault import api
from weightvault.api import Repository

MONDAY = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # a Monday


def test_a_simulated_week_keeps_heavy_steps_inside_their_window(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    Repository.init(tmp_path / "hot", PASSWORD, kdf=FAST_KDF)
    monkeypatch.setenv("WV_TEST_PW", PASSWORD)
    spec = api.parse_policy(f"""
[settings]
prune_every = "1d"
journal = "{tmp_path / 'journal.jsonl'}"

[repositories.hot]
url = "{tmp_path / 'hot'}"
password_env = "WV_TEST_PW"

[sources.run]
paths = ["{tmp_path / 'run'}"]
repository = "hot"

[classes.weights]
globs = ["*.bin"]
every = "1d"
keep_last = 2

[drills.daily]
repository = "hot"
every = "1d"
level = 1
pick = "latest"

[checks.often]
repository = "hot"
every = "2d"
read_data = "50%"

[windows.nightly]
days = "Mon-Fri"
hours = "22:00-04:00"
steps = ["prune", "drill", "check"]
""")
    window = spec.windows["nightly"]
    runs = []
    for hour in range(0, 7 * 24, 3):
        now = MONDAY + timedelta(hours=hour)
        write(tmp_path / "run" / "model.bin", os.urandom(20_000))
        runs.append((now, api.apply_policy(spec, now=now)))
    assert all(r.ok for _, r in runs), [s for _, r in runs for s in r.steps if not s.ok]
    ran = [(now, s) for now, r in runs for s in r.steps if s.step in ("prune", "drill", "check") and not s.deferred]
    waited = [(now, s) for now, r in runs for s in r.steps if s.deferred]
    assert {s.step for _, s in ran} == {"prune", "drill", "check"}
    checks = [(now, s) for now, s in ran if s.step == "check"]
    assert len(checks) == 3 and all("often: packs 50% read" in s.detail and "no problems" in s.detail
                                    for _, s in checks)  # Mon, Wed, Fri nights
    assert all(window.is_open(now) for now, _ in ran)  # never outside the window
    # Mon-Fri nights: one prune and one drill per window opening (they are due daily)
    assert sorted({(now - timedelta(hours=4)).date() for now, s in ran if s.step == "prune"}) == \
        [(MONDAY + timedelta(days=d)).date() for d in range(5)]
    assert waited and all(not window.is_open(now) for now, _ in waited)
    sunday = next(s for now, s in waited if now == MONDAY + timedelta(days=6, hours=12) and s.step == "prune")
    assert "waiting for window nightly (opens 2026-01-12 22:00Z)" in sunday.detail  # the next Monday night
    backups = [now for now, r in runs for s in r.steps if s.step == "backup"]
    assert len(backups) == 7 and {b.weekday() for b in backups} == set(range(7))  # weekends too
    assert any(s.step == "forget" for _, r in runs for s in r.steps)  # retention never waits
