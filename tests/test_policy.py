"""Policy files, suggestions, `policy apply` and `tier run` over simulated time, `status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, write
from weightvault import api
from weightvault.api import Repository
from weightvault.errors import ConfigFileError, UsageError
from weightvault.policy.plan import lineage

T0 = datetime(2026, 1, 1, 6, 0, tzinfo=UTC)


def fleet_policy(tmp_path: Path, *, archive_site: str = "dc2", cold_site: str = "dc2", replicate: bool = True,
                 lock: str | None = None) -> str:
    for name in ("hot", "warm", "cold", "arch"):
        Repository.init(tmp_path / name, PASSWORD, kdf=FAST_KDF)
    lock_line = f'lock_for = "{lock}"' if lock else ""
    return f"""
version = 1
[settings]
rpo = "1d"
prune_every = "3d"
journal = "{tmp_path / 'journal.jsonl'}"

[repositories.hot]
url = "{tmp_path / 'hot'}"
tier = "hot"
site = "dc1"
password_env = "WV_TEST_PW"

[repositories.warm]
url = "{tmp_path / 'warm'}"
tier = "warm"
site = "dc1"
password_env = "WV_TEST_PW"

[repositories.cold]
url = "{tmp_path / 'cold'}"
tier = "cold"
site = "{cold_site}"
max_age = "60d"
password_env = "WV_TEST_PW"

[repositories.arch]
url = "{tmp_path / 'arch'}"
tier = "archive"
site = "{archive_site}"
password_env = "WV_TEST_PW"

[sources.run]
paths = ["{tmp_path / 'run'}"]
repository = "hot"
{'replicate_to = ["cold"]' if replicate else ''}

[classes.weights]
globs = ["*.safetensors", "*.bin"]
every = "1d"
keep_last = 3
keep_weekly = 20
{lock_line}

[classes.logs]
globs = ["*.log"]
every = "12h"
keep_last = 2
keep_within = "35d"
tiers = ["hot", "warm"]
"""


@pytest.fixture(autouse=True)
def _pw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WV_TEST_PW", PASSWORD)


def simulate(spec: api.PolicySpec, run: Path, days: int, step_h: int = 24) -> list[api.PolicyRun]:
    runs = []
    for i in range(0, days * 24, step_h):
        now = T0 + timedelta(hours=i)
        write(run / "model.bin", os.urandom(50_000))
        with open(run / "train.log", "a") as f:
            f.write(f"hour {i} loss {1 / (i + 1):.4f}\n")
        runs.append(api.apply_policy(spec, now=now))
    return runs


# -- the policy file -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[repositories.a]\nurl = "/x"\ntier = "tepid"\n', 3, "unknown tier"),
        ('[repositories.a]\nurl = "/x"\n\n[sources.s]\npaths = ["/r"]\nrepository = "b"\n', 6, "no repository"),
        ('[classes.w]\nglobs = ["*.pt"]\nevery = "5m"\nkeep_last = 1\n', 3, "interval"),
        ('[classes.w]\nglobs = ["*.pt"]\n', 1, "no keep rule"),
        ('[classes.w]\nglobs = ["*.pt"]\nkeep_last = -1\n', 3, "whole number"),
        ('[classes.w]\nglobs = ["*.pt"]\nkeep_last = 1\ntiers = ["cold", "hot"]\n', 4, "downwards"),
        ('[settings]\nrpo = "2h"\nretention = 3\n', 3, "unknown key"),
        ('[repositories.a]\ntier = "hot"\n', 1, "missing required key 'url'"),
        ('version = 2\n', 1, "version"),
        ('x = [\n', 1, "not valid TOML"),
    ],
)
def test_policy_errors_name_the_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as ei:
        api.load_policy(path)
    msg = str(ei.value)
    assert words in msg and ei.value.exit_code == 7 and str(path) in msg
    if "TOML" not in words:
        assert f"line {line}:" in msg, msg


def test_default_classes_sort_an_ml_run_directory(tmp_path: Path) -> None:
    spec = api.parse_policy("")
    names = [c.name for c in spec.classes]
    assert names[:2] == ["optimizer", "weights"] and names[-1] == "other"
    from weightvault.ops.walk import matches_any

    def cls(path: str) -> str:
        return next(c.name for c in spec.classes
                    if matches_any(path.encode(), list(c.globs)) and not matches_any(path.encode(),
                                                                                      spec.excludes_for(c)))

    assert cls("run/checkpoint-500/optimizer.pt") == "optimizer"
    assert cls("run/checkpoint-500/model.safetensors") == "weights"
    assert cls("run/checkpoint-500/pytorch_model.bin") == "weights"
    assert cls("run/requirements.txt") == "environment"
    assert cls("run/data/dataset_info.json") == "dataset"
    assert cls("run/logs/events.out.tfevents.123") == "logs"
    assert cls("run/config.json") == "configs"
    assert cls("run/notes.md") == "other"


def test_suggest_scales_intervals_above_100_gb(tmp_path: Path) -> None:
    small = api.parse_policy(api.suggest_policy("middle", "7GB", repository=str(tmp_path / "r"), paths=["/run"]))
    large = api.parse_policy(api.suggest_policy("middle", "120GB", repository=str(tmp_path / "r"), paths=["/run"]))
    for name in ("weights", "optimizer"):
        s, lg = small.cls(name), large.cls(name)
        assert s is not None and lg is not None and lg.every == s.every * 1.5
    assert large.settings.rpo == small.settings.rpo * 1.5
    assert small.cls("logs").every == large.cls("logs").every  # type: ignore[union-attr]
    initial = api.parse_policy(api.suggest_policy("initial", "1GB", paths=["/run"]))
    final = api.parse_policy(api.suggest_policy("final", "1GB", paths=["/run"]))
    wi, wf = initial.cls("weights"), final.cls("weights")
    assert wi is not None and wf is not None
    assert wi.every < small.cls("weights").every < wf.every  # type: ignore[union-attr]
    assert wf.lock_for is not None and wf.retention.keep_yearly > 0 and wi.retention.keep_within is not None
    with pytest.raises(UsageError):
        api.suggest_policy("late", "1GB")
    with pytest.raises(UsageError):
        api.suggest_policy("final", "huge")


# -- apply and tiers over simulated time -----------------------------------------------------------
def test_apply_over_simulated_time_backs_up_retains_replicates_and_tiers(tmp_path: Path) -> None:
    spec = api.parse_policy(fleet_policy(tmp_path))
    runs = simulate(spec, tmp_path / "run", days=45, step_h=12)
    assert all(r.ok for r in runs), [s for r in runs for s in r.steps if not s.ok]
    steps = [s for r in runs for s in r.steps]
    kinds = {s.step for s in steps}
    assert {"backup", "forget", "prune", "copy", "tier-move", "tier-expire"} <= kinds, kinds
    # weights every day, logs every 12 h
    backups = [s for s in steps if s.step == "backup"]
    assert sum(1 for s in backups if s.data_class == "weights") == 45
    assert sum(1 for s in backups if s.data_class == "logs") == 90
    fleet = api.Fleet(spec)
    end = T0 + timedelta(days=44, hours=12)
    hot = fleet["hot"].snapshots()
    assert hot and all(end - s.datetime <= timedelta(days=7) for s in hot)  # the hot tier keeps 7 days
    warm = fleet["warm"].snapshots()
    assert warm and all(end - s.datetime <= timedelta(days=30, hours=12) for s in warm)
    cold = fleet["cold"].snapshots()
    assert any(end - s.datetime > timedelta(days=30) for s in cold)  # weights moved on to cold
    assert not any(s.has_tag("class=logs") and end - s.datetime > timedelta(days=31) for s in warm)  # expired
    # logs end at the warm tier: expired there after 30 days; each snapshot has only its class's files
    assert all(s.data_class == "logs" for s in steps if s.step == "tier-expire")
    for s in hot:
        files = [n.path.decode() for n in fleet["hot"].ls(s.id) if n.type == "file"]
        assert files == (["run/model.bin"] if s.has_tag("class=weights") else ["run/train.log"])
    # one copy of each snapshot per repository, every repository healthy and restorable
    for name in ("hot", "warm", "cold"):
        lineages = [lineage(s) for s in fleet[name].snapshots()]
        assert len(lineages) == len(set(lineages))
        assert fleet[name].check(read_data=True).ok
    newest = max(cold, key=lambda s: s.datetime)
    fleet["cold"].restore(newest.id, tmp_path / "out")
    assert (tmp_path / "out").exists()
    records = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert len(records) == len(steps) and {r["step"] for r in records} == kinds
    assert all(r["ok"] for r in records)


def test_nothing_moves_to_archive_before_a_second_site_holds_it(tmp_path: Path) -> None:
    """Archive and every other repository on one site: the move to archive is refused and the
    snapshot stays in the cold tier."""
    spec = api.parse_policy(fleet_policy(tmp_path, archive_site="dc1", cold_site="dc1", replicate=False))
    simulate(spec, tmp_path / "run", days=2)
    later = T0 + timedelta(days=120)
    res = api.tier_run(spec, now=later)  # hot -> warm -> cold, then cold -> archive is refused
    refused = [s for s in res.steps if s.step == "tier-move" and s.repository == "cold" and not s.ok]
    assert refused and "one site only" in refused[0].detail
    fleet = api.Fleet(spec)
    assert fleet["cold"].snapshots(tags=["class=weights"]) and not fleet["arch"].snapshots()


def test_archive_moves_once_a_second_site_exists(tmp_path: Path) -> None:
    spec = api.parse_policy(fleet_policy(tmp_path, archive_site="dc2", cold_site="dc1", replicate=False))
    simulate(spec, tmp_path / "run", days=2)
    later = T0 + timedelta(days=120)
    res = api.tier_run(spec, now=later)
    moved = [s for s in res.steps if s.step == "tier-move" and s.repository == "cold"]
    assert moved and all(s.ok for s in moved)
    fleet = api.Fleet(spec)
    assert fleet["arch"].snapshots(tags=["class=weights"])
    assert not fleet["cold"].snapshots(tags=["class=weights"])


def test_locked_snapshots_are_copied_down_but_stay(tmp_path: Path) -> None:
    spec = api.parse_policy(fleet_policy(tmp_path, lock="400d", replicate=False))
    simulate(spec, tmp_path / "run", days=1)
    res = api.tier_run(spec, now=T0 + timedelta(days=10))
    moved = [s for s in res.steps if s.step == "tier-move" and s.data_class == "weights"]
    assert moved and "locked until" in moved[0].detail
    fleet = api.Fleet(spec)
    assert fleet["hot"].snapshots(tags=["class=weights"]) and fleet["warm"].snapshots(tags=["class=weights"])


def test_status_reports_rpo_breaches(tmp_path: Path) -> None:
    spec = api.parse_policy(fleet_policy(tmp_path))
    before = api.policy_status(spec, now=T0)
    assert before and all(ln.breached and ln.last is None for ln in before)  # nothing backed up yet
    simulate(spec, tmp_path / "run", days=1)
    fresh = api.policy_status(spec, now=T0 + timedelta(hours=6))
    assert not any(ln.breached for ln in fresh)
    assert {(ln.role, ln.repository) for ln in fresh} == {("primary", "hot"), ("replica", "cold")}
    replica = next(ln for ln in fresh if ln.role == "replica")
    assert replica.last_verified is not None and replica.verified_age_s is not None  # the copy read it back
    assert all(ln.last_verified is None for ln in fresh if ln.role == "primary")  # no verify/drill yet
    stale = api.policy_status(spec, now=T0 + timedelta(days=2))
    assert all(ln.breached for ln in stale)


def test_cli_policy_status_and_tier(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(fleet_policy(tmp_path))
    write(tmp_path / "run" / "model.bin", b"w" * 1000)
    write(tmp_path / "run" / "train.log", b"step 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(HOME=str(tmp_path / "home"), WV_TEST_PW=PASSWORD, WEIGHTVAULT_POLICY=str(policy))

    def wv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    assert "4 repositories, 1 sources, 2 data classes" in wv("policy", "check").stdout
    dry = wv("policy", "apply", "--dry-run", "--now", "2026-01-01T06:00")
    assert dry.returncode == 0 and dry.stdout.count("would  backup") == 2, dry.stdout
    out = wv("policy", "apply", "--now", "2026-01-01T06:00", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] and [s["step"] for s in doc["steps"]].count("backup") == 2
    assert wv("status", "--now", "2026-01-01T12:00").returncode == 0
    late = wv("status", "--now", "2026-01-05T12:00", "--json")
    assert late.returncode == 6 and not json.loads(late.stdout)["ok"]
    tier = wv("tier", "run", "--now", "2026-01-20T06:00")
    assert tier.returncode == 0 and "tier-move" in tier.stdout, tier.stdout
    copied = wv("copy", "--from", "warm", "--to", "arch", "--json")  # repositories by their policy names
    assert copied.returncode == 0 and json.loads(copied.stdout)["copied"], copied.stderr
    suggest = wv("policy", "suggest", "--stage", "final", "--model-size", "120GB", "--path", str(tmp_path / "run"))
    assert suggest.returncode == 0 and "x1.5" in suggest.stdout
    (tmp_path / "suggested.toml").write_text(suggest.stdout)
    assert wv("policy", "check", "--policy", str(tmp_path / "suggested.toml")).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[classes.w]\nglobs = ["*.pt"]\nevery = "often"\nkeep_last = 1\n')
    res = wv("policy", "check", "--policy", str(bad))
    assert res.returncode == 7 and "line 3" in res.stderr


def test_apply_runs_scheduled_drills_and_status_shows_them(tmp_path: Path) -> None:
    text = fleet_policy(tmp_path) + """
[drills.weekly]
repository = "hot"
every = "7d"
level = 3
pick = "latest"
"""
    spec = api.parse_policy(text)
    assert spec.drills["weekly"].level == 3
    runs = simulate(spec, tmp_path / "run", days=9)
    drills = [s for r in runs for s in r.steps if s.step == "drill"]
    assert len(drills) == 2 and all(s.ok and "RTO" in s.detail for s in drills)  # day 0 and day 7
    lines = api.policy_status(spec, now=T0 + timedelta(days=8, hours=1))
    primary = {ln.dc: ln for ln in lines if ln.role == "primary"}
    # the drill picks the snapshot holding a model file: the weights are verified, the logs are not
    assert primary["weights"].last_verified is not None and primary["weights"].verified_age_s is not None
    assert primary["logs"].last_verified is None
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('level = 3\npick', 'level = 7\npick'))
    with pytest.raises(ConfigFileError, match=r"drills\.weekly\.level"):
        api.load_policy(bad)


def test_a_fleet_reused_across_runs_never_plans_on_an_old_listing(tmp_path: Path) -> None:
    """A long-lived Fleet (an agent's) sees what others backed up since its last run."""
    spec = api.parse_policy(fleet_policy(tmp_path))
    fleet = api.Fleet(spec)
    assert all(ln.breached for ln in api.policy_status(spec, now=T0, fleet=fleet))
    simulate(spec, tmp_path / "run", days=1)  # other Fleet objects back up meanwhile
    assert not any(ln.breached for ln in api.policy_status(spec, now=T0 + timedelta(hours=6), fleet=fleet))


def test_a_journal_that_cannot_be_written_stops_the_run_with_a_clear_error(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the crash-point campaign: an I/O error appending to the policy journal was a
    traceback. It now stops the run (the step it recorded has run) naming the journal."""
    import errno

    from weightvault.errors import LocalPathError

    journal = tmp_path / "journal.jsonl"
    real = os.fsync

    def failing(fd: int) -> None:  # the disk fails under the journal only
        if os.readlink(f"/proc/self/fd/{fd}") == str(journal):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    text = fleet_policy(tmp_path)
    spec = api.parse_policy(text)
    write(tmp_path / "run" / "model.bin", b"w" * 1000)
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(LocalPathError) as err:
        api.apply_policy(spec, now=T0)
    monkeypatch.undo()
    assert "policy journal" in err.value.message and str(journal) in err.value.message
    assert err.value.hint and "the step itself ran" in err.value.hint
    assert Repository.open(tmp_path / "hot", PASSWORD).snapshots()  # the backup it was recording is there
    (tmp_path / "file").write_text("a file where the journal's directory should be")
    text = text.replace(str(journal), str(tmp_path / "file" / "journal.jsonl"))
    with pytest.raises(LocalPathError, match="could not read the policy journal"):
        api.apply_policy(api.parse_policy(text), now=T0)
