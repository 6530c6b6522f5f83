"""Retention (``forget``): the decision is a pure function checked against hand-written golden files
in tests/fixtures/retention/, plus forget end to end through the API and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository
from weightvault.errors import UsageError
from weightvault.ops.retention import Policy, decide, parse_duration
from weightvault.repository.snapshots import Snapshot

GOLDEN = Path(__file__).parent / "fixtures" / "retention"


def _snap(d: dict[str, Any]) -> Snapshot:
    return Snapshot(time=d["time"], host=d["host"], user="u", paths=d["paths"], tags=d["tags"], tree=[], id=d["id"])


def _policy(d: dict[str, Any]) -> Policy:
    kw = dict(d)
    if "keep_within" in kw:
        kw["keep_within"] = parse_duration(kw["keep_within"])
    for k in ("keep_tags", "group_by"):
        if k in kw:
            kw[k] = tuple(kw[k])
    return Policy(**kw)


@pytest.mark.parametrize("case", sorted(p.name for p in GOLDEN.glob("*.json")))
def test_golden(case: str) -> None:
    doc = json.loads((GOLDEN / case).read_text())
    got = decide([_snap(s) for s in doc["snapshots"]], _policy(doc["policy"]), datetime.fromisoformat(doc["now"]))
    actual = [
        {
            "key": {k: list(v) if isinstance(v, tuple) else v for k, v in g.key.items()},
            "ordered_by": g.ordered_by,
            "keep": {d.snapshot.id: d.reasons for d in g.keep},
            "remove": [s.id for s in g.remove],
        }
        for g in got
    ]
    assert actual == doc["expected"]
    # keep order matters too: newest first, as listed in the golden file
    assert [list(g["keep"]) for g in actual] == [list(g["keep"]) for g in doc["expected"]]


def test_no_rule_refuses_to_forget_everything() -> None:
    with pytest.raises(UsageError, match="refusing"):
        decide([], Policy(), datetime.now(UTC))


@pytest.mark.parametrize(("text", "days"), [("30d", 30), ("12h", 0.5), ("2w", 14), ("6m", 180), ("1y6m", 545)])
def test_parse_duration(text: str, days: float) -> None:
    assert parse_duration(text) == timedelta(days=days)


@pytest.mark.parametrize("text", ["", "30", "d", "3x", "1d2", "-1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_flooding_cannot_push_good_snapshots_out_of_keep_within(repo: Repository, tmp_path: Path) -> None:
    """A compromised writer adds 50 junk snapshots; keep-last alone would drop the good ones, but
    keep-within (counted from now, not from the newest snapshot) protects them."""
    write(tmp_path / "run" / "model.bin", b"good weights" * 1000)
    now = datetime(2026, 11, 20, tzinfo=UTC)
    good = [repo.backup([tmp_path / "run"], time=now - timedelta(days=d)).snapshot.id for d in (3, 2, 1)]
    write(tmp_path / "run" / "model.bin", b"junk" * 10)
    for i in range(50):  # future-dated flood
        repo.backup([tmp_path / "run"], time=now + timedelta(minutes=i + 1), force=True)
    res = repo.forget(keep_last=5, keep_within="7d", dry_run=True, now=now)
    kept = {d.snapshot.id for g in res.groups for d in g.keep}
    assert set(good) <= kept
    res = repo.forget(keep_last=5, dry_run=True, now=now)  # without keep-within they would go
    assert not set(good) & {d.snapshot.id for g in res.groups for d in g.keep}


def test_forget_removes_snapshots_but_not_data(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    ids = []
    for i in range(4):
        write(tmp_path / "run" / "log.txt", f"step {i}\n".encode() * 100)
        ids.append(repo.backup([tmp_path / "run"], tags=[f"step={i}"]).snapshot.id)
    packs_before = sorted(p.name for p in (repo_path / "data").rglob("*") if p.is_file())
    dry = repo.forget(keep_last=2, dry_run=True)
    assert [s.id for s in dry.removed] == ids[:2] and len(repo.snapshots()) == 4
    res = repo.forget(keep_last=2)
    assert [s.id for s in res.removed] == ids[:2]
    assert [s.id for s in repo.snapshots()] == ids[2:]
    assert sorted(p.name for p in (repo_path / "data").rglob("*") if p.is_file()) == packs_before
    assert repo.check(read_data=True).ok
    repo.forget([ids[2][:10]])  # by id prefix
    assert [s.id for s in repo.snapshots()] == ids[3:]
    with pytest.raises(UsageError, match="nothing to forget"):
        repo.forget()


def test_forget_takes_a_group_snapshot_with_its_ranks(repo: Repository, tmp_path: Path) -> None:
    for r in range(2):
        write(tmp_path / f"n{r}" / "ckpt" / f"shard{r}.bin", os.urandom(1000))
        repo.backup([tmp_path / f"n{r}" / "ckpt"], group="g", rank=r, world_size=2)
    write(tmp_path / "other" / "x.txt", b"x")
    repo.backup([tmp_path / "other"])
    (grp,) = repo.groups()
    assert grp.merged is not None
    res = repo.forget([grp.merged.id])
    assert len(res.removed_ids) == 3 and res.removed_ids[-1] == grp.merged.id  # ranks first
    assert repo.groups() == [] and len(repo.snapshots()) == 1


def test_cli_forget(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    repo = Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)
    now = datetime.now(UTC)
    for d in range(5):
        write(tmp_path / "run" / "log.txt", f"day {d}\n".encode())
        repo.backup([tmp_path / "run"], time=now - timedelta(days=5 - d), tags=["best"] if d == 0 else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))
    base = [sys.executable, "-m", "weightvault", "-r", str(repo_path), "forget"]
    out = subprocess.run([*base, "--keep-last", "2", "--keep-tag", "best", "--dry-run", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    (grp,) = doc["groups"]
    assert [k["reasons"] for k in grp["keep"]] == [["last 2"], ["last 2"], ["tag best"]]
    assert len(grp["remove"]) == 2 and doc["dry_run"] and len(repo.snapshots()) == 5
    text = subprocess.run([*base, "--keep-last", "2", "--keep-tag", "best"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert text.returncode == 0 and "removed 2 snapshot(s)" in text.stdout and "tag best" in text.stdout
    assert len(Repository.open(repo_path, PASSWORD).snapshots()) == 3
    none = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and "nothing to forget" in none.stderr
    bad = subprocess.run([*base, "--keep-within", "soon"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "duration" in bad.stderr
