"""Sampling state: which deterministic buckets of a snapshot's files ``verify --sample`` has
covered (keyed by the snapshot id), and which parts of the packs ``check --read-data-subset X%``
has read (keyed "packs"), kept per repository in ``$XDG_STATE_HOME/weightvault/verify/<repo id>.json``."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightvault.errors import UsageError
from weightvault.paths import state_home

__all__ = ["SampleRotation"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Atomically: temp file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class SampleRotation:
    """The next bucket to verify of ``snapshot`` split into round(1/sample) buckets; ``done``
    after a passing run records it. Once every bucket passed, a new round starts."""

    repo_id: str
    snapshot: str
    buckets: int
    pick: int = 0
    covered: set[int] = field(default_factory=set)

    @classmethod
    def start(cls, repo_id: str, snapshot: str, sample: float) -> SampleRotation:
        if not 0 < sample <= 1:
            raise UsageError(f"sample {sample} is outside (0, 1]", hint="e.g. --sample 5%")
        buckets = max(1, round(1 / sample))
        entry = _read_json(cls.path(repo_id)).get(f"{snapshot}:{buckets}", {})
        done, last = set(entry.get("done", [])), int(entry.get("last", -1))
        if len(done) >= buckets:
            done = set()  # every bucket verified: start another round
        order = [(last + 1 + i) % buckets for i in range(buckets)]
        pick = next((b for b in order if b not in done), order[0])
        return cls(repo_id, snapshot, buckets, pick, done)

    @staticmethod
    def path(repo_id: str) -> Path:
        return state_home() / "verify" / f"{repo_id}.json"

    def finish(self, ok: bool) -> float:
        """Record the run; returns the share of buckets covered in this round."""
        if ok:
            self.covered.add(self.pick)
        state = _read_json(self.path(self.repo_id))
        state[f"{self.snapshot}:{self.buckets}"] = {"done": sorted(self.covered), "last": self.pick}
        _write_json(self.path(self.repo_id), state)
        return len(self.covered) / self.buckets
