"""Policies through the public API: a ``Fleet`` of ``Repository`` objects and the policy runs
(``weightvault.runner.policy``) over it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime

from weightvault.api._repository import Repository
from weightvault.backends.factory import StorageOptions
from weightvault.policy import spec as _spec
from weightvault.policy import suggest as _suggest
from weightvault.policy.plan import RpoLine
from weightvault.policy.spec import PolicySpec
from weightvault.runner import policy as _policy
from weightvault.runner.defaults import default_repository_path
from weightvault.runner.policy import PolicyRun

__all__ = ["Fleet", "apply_policy", "load_policy", "parse_policy", "policy_status", "suggest_policy", "tier_run"]

load_policy = _spec.load_policy
parse_policy = _spec.parse_policy


def suggest_policy(stage: str, model_size: str | int, *, repository: str | None = None,
                   paths: Sequence[str] = ("/path/to/run",)) -> str:
    """A policy file (TOML) for a run at ``stage`` (initial, middle, final) of a model of
    ``model_size`` bytes (or text such as '120GB'); see ``weightvault.policy.suggest``."""
    size = _suggest.parse_size(model_size) if isinstance(model_size, str) else int(model_size)
    return _suggest.suggest_policy(stage, size, repository=repository or str(default_repository_path()),
                                   paths=[os.path.abspath(p) if not p.startswith("/") else p for p in paths])


class Fleet(_policy.Fleet):
    """The repositories a policy names, opened (as ``Repository``) on first use."""

    def __init__(self, spec: PolicySpec, storage: StorageOptions | None = None) -> None:
        super().__init__(spec, lambda url, pw, st: Repository.open(url, pw, storage=st), storage)

    def __getitem__(self, name: str) -> Repository:
        repo = super().__getitem__(name)
        assert isinstance(repo, Repository)
        return repo


def apply_policy(spec: PolicySpec, *, now: datetime | None = None, dry_run: bool = False, fleet: Fleet | None = None,
                 say: Callable[[str], None] | None = None) -> PolicyRun:
    """Run what the policy says is due (``weightvault.runner.policy.apply_policy``)."""
    return _policy.apply_policy(spec, fleet or Fleet(spec), now=now, dry_run=dry_run, say=say)


def tier_run(spec: PolicySpec, *, now: datetime | None = None, dry_run: bool = False, fleet: Fleet | None = None,
             say: Callable[[str], None] | None = None) -> PolicyRun:
    """Move snapshots down their tiers (``weightvault.runner.policy.tier_run``)."""
    return _policy.tier_run(spec, fleet or Fleet(spec), now=now, dry_run=dry_run, say=say)


def policy_status(spec: PolicySpec, *, now: datetime | None = None, fleet: Fleet | None = None) -> list[RpoLine]:
    """Per source and class and per replica: the newest snapshot's age against the RPO."""
    return _policy.policy_status(spec, fleet or Fleet(spec), now=now)
