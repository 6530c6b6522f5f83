"""Retention locks on snapshots, append-only repositories, and `backup --include`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository
from weightvault.errors import ImmutableError


def test_locked_snapshots_survive_forget_and_prune(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "run"
    now = datetime.now(UTC)
    write(src / "best.safetensors", os.urandom(200_000))
    best = repo.backup([src], time=now - timedelta(days=20), lock_until=now + timedelta(days=30)).snapshot
    assert best.locked_until is not None
    for d in range(5):  # a writer floods the repository with newer snapshots
        write(src / "best.safetensors", os.urandom(200_000))
        repo.backup([src], time=now - timedelta(days=5 - d))
    res = repo.forget(keep_last=1, prune=True)
    kept = {d.snapshot.id: d.reasons for g in res.groups for d in g.keep}
    assert any(r.startswith("locked until") for r in kept[best.id])
    assert best.id in {s.id for s in repo.snapshots()} and len(repo.snapshots()) == 2
    with pytest.raises(ImmutableError) as ei:
        repo.forget([best.id])
    assert ei.value.exit_code == 19 and "locked until" in str(ei.value)
    repo.restore(best.id, tmp_path / "out")  # its data survived the prune
    assert repo.check(read_data=True).ok
    later = repo.forget(keep_last=1, now=now + timedelta(days=31))  # the lock expired
    assert best.id in {s.id for s in later.removed}


def test_append_only_repository_refuses_deletion(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF, append_only=True)
    assert json.loads((tmp_path / "repo" / "config").read_bytes())["append_only"] is True
    src = tmp_path / "run"
    write(src / "a.bin", b"a" * 1000)
    first = repo.backup([src]).snapshot.id
    write(src / "a.bin", b"b" * 1000)
    repo.backup([src])
    again = Repository.open(tmp_path / "repo", PASSWORD)
    assert again.append_only
    for action in (lambda: again.forget([first]), lambda: again.forget(keep_last=1), again.prune,
                   again.repair_index, lambda: again.remove_key("0"), lambda: again.change_password("x")):
        with pytest.raises(ImmutableError) as ei:
            action()
        assert ei.value.exit_code == 19 and "append-only" in str(ei.value)
    assert len(again.snapshots()) == 2
    assert again.forget(keep_last=1, dry_run=True).removed  # a dry run only shows
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(tmp_path / "repo"), "forget", first],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 19 and "append-only" in out.stderr


def test_backup_include_globs(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "run"
    write(src / "model.safetensors", b"w" * 100)
    write(src / "ckpt" / "optimizer.pt", b"o" * 100)
    write(src / "logs" / "train.log", b"l" * 100)
    write(src / "config.json", b"{}")
    snap = repo.backup([src], includes=["*.safetensors", "*.pt"]).snapshot
    files = sorted(n.path.decode() for n in repo.ls(snap.id) if n.type == "file")
    assert files == ["run/ckpt/optimizer.pt", "run/model.safetensors"]


def test_cli_lock_for_and_append_only_init(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))
    r = str(tmp_path / "repo")

    def wv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", "-r", r, *args], env=env, capture_output=True,
                              text=True, timeout=60)

    assert wv("init", "--append-only").returncode == 0
    write(tmp_path / "run" / "a.bin", b"x")
    out = wv("backup", str(tmp_path / "run"), "--lock-for", "30d", "--json")
    assert out.returncode == 0, out.stderr
    snaps = json.loads(wv("snapshots", "--json").stdout)
    until = datetime.fromisoformat(snaps[0]["locked_until"])
    assert timedelta(days=29) < until - datetime.now(UTC) <= timedelta(days=30)
    bad = wv("backup", str(tmp_path / "run"), "--lock-for", "soon")
    assert bad.returncode == 2 and "duration" in bad.stderr
