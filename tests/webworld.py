"""The world the dashboard's tests look at: a repository with a real (tiny) fine-tuning run and a
policy whose three sources are, 50 minutes after the policy ran, fresh, aging and late against
their RPOs (4 h, 1 h, 10 min)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository, Snapshot
from weightvault.testing.dashboard import make_training_run

__all__ = ["World", "build_world"]


@dataclass
class World:
    root: Path
    repo: Path
    run: Path
    policy: Path
    env: dict[str, str]
    snaps: list[Snapshot]
    t0: datetime  # when the policy ran (the training run's snapshots are from just before)


def _policy(root: Path) -> str:
    sources = "".join(f'[sources.{name}]\npaths = ["{root / name}"]\nrepository = "main"\nrpo = "{rpo}"\n\n'
                      for name, rpo in (("fresh", "4h"), ("aging", "1h"), ("late", "10min")))
    return (f'version = 1\n[settings]\nrpo = "1d"\njournal = "{root / "journal.jsonl"}"\n\n'
            f'[repositories.main]\nurl = "{root / "repo"}"\ntier = "hot"\nsite = "dc1"\npassword_env = "WV_TEST_PW"\n\n'
            f'{sources}[classes.all]\nglobs = ["*"]\nevery = "10min"\nkeep_last = 3\n')


def build_world(root: Path) -> World:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(HOME=str(root / "home"), XDG_CACHE_HOME=str(root / "cache"), XDG_CONFIG_HOME=str(root / "config"),
               WV_TEST_PW=PASSWORD)
    repo = Repository.init(root / "repo", PASSWORD, kdf=FAST_KDF)
    snaps = make_training_run(root / "run", repo)
    for name in ("fresh", "aging", "late"):
        write(root / name / "notes.txt", name.encode())
    policy = root / "policy.toml"
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    policy.write_text(_policy(root))
    applied = subprocess.run([sys.executable, "-m", "weightvault", "policy", "apply", "--policy", str(policy),
                              "--now", t0.isoformat()], env=env, capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return World(root, root / "repo", root / "run", policy, env, snaps, t0)
