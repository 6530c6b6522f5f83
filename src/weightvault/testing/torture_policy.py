"""The crash-point campaign's policy operations: ``policy apply`` and ``tier run``.

A policy opens its own repositories, so its crash points are the durable file-system calls under
the work copy (``PowerCutTracer``'s points), as for a restore. The world: the source at its last
version, a hot repository (``repo/``) and a warm one (``dest/``) named by a policy with the
default data classes. ``policy-apply`` starts from empty repositories and backs up every class,
copies each snapshot to the warm replica and applies retention; ``tier-run`` starts after one
apply without replication and, 30 days later, moves every snapshot down to warm (copy, verified,
then forget here). After a crash, and again after the rerun, the parent checks both
repositories (``check --read-data``), restores every snapshot of both and compares each file with
the source (never other bytes), and requires no data class to be lost from both tiers; after the
rerun, the newest snapshots of the classes together hold the whole source, in hot after an
apply (with a copy of each in warm), in warm after a tier run (and none left in hot).
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["POLICY_OPS", "prepare_policy_world", "run_policy_op", "verify_policy"]

POLICY_OPS = ("policy-apply", "tier-run")
_LATER = timedelta(days=30)


def _spec(root: Path, src: Path, replicate: bool) -> Any:
    from weightvault.api import parse_policy

    os.environ["WV_TORTURE_HOT"], os.environ["WV_TORTURE_WARM"] = _passwords()
    replicas = 'replicate_to = ["warm"]' if replicate else ""
    return parse_policy(f"""
version = 1
[settings]
journal = "{root / 'journal.jsonl'}"
[repositories.hot]
url = "{root / 'repo'}"
tier = "hot"
site = "a"
password_env = "WV_TORTURE_HOT"
[repositories.warm]
url = "{root / 'dest'}"
tier = "warm"
site = "b"
password_env = "WV_TORTURE_WARM"
[sources.run]
paths = ["{src}"]
repository = "hot"
{replicas}
""")


def _passwords() -> tuple[str, str]:
    from weightvault.testing.torture import NEW_PASSWORD, PASSWORD

    return PASSWORD, NEW_PASSWORD


def prepare_policy_world(root: Path, src: Path, op: str) -> None:
    """For ``tier-run``: one apply (no replication) into the hot repository."""
    from weightvault import api

    if op == "tier-run":
        run = api.apply_policy(_spec(root, src, replicate=False))
        if not run.ok:
            raise RuntimeError(f"the template's policy apply failed: {[s.detail for s in run.steps if not s.ok]}")


def run_policy_op(op: str, root: Path, src: Path) -> str:
    """Run the op; a failed step raises its error (exit code, message) as the CLI would exit."""
    from weightvault import api
    from weightvault.errors import WeightvaultError

    if op == "policy-apply":
        run = api.apply_policy(_spec(root, src, replicate=True))
    else:
        run = api.tier_run(_spec(root, src, replicate=False), now=datetime.now(UTC) + _LATER)
    failed = [s for s in run.steps if not s.ok]
    if failed:
        err = WeightvaultError(f"{len(failed)} step(s) failed: " + "; ".join(f"{s.step}: {s.detail}" for s in failed))
        err.exit_code = failed[0].exit_code or 1
        raise err
    return f"{len(run.steps)} steps"


def _classes(repo: Any, want: dict[str, str], scratch: Path, problems: list[str]) -> dict[str, dict[str, str]]:
    """Restore every snapshot; each file must be the source's. Returns class -> the newest
    snapshot's files."""
    newest: dict[str, tuple[str, dict[str, str]]] = {}
    for snap in repo.snapshots():
        out = scratch / f"restore-{snap.short_id}"
        try:
            repo.restore(snap.id, out)
            got = _files(out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        problems += [f"snapshot {snap.short_id}: {rel} restores other bytes than the source has"
                     for rel, h in got.items() if want.get(rel) != h]
        cls = snap.tag_dict().get("class", "?")
        if cls not in newest or snap.time > newest[cls][0]:
            newest[cls] = (snap.time, got)
    return {c: files for c, (_, files) in newest.items()}


def _files(out: Path) -> dict[str, str]:
    from weightvault.testing.torture import _digest

    tops = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    return {k: v for top in tops for k, v in _digest(top).items()}


def verify_policy(root: Path, want: dict[str, str], op: str, after_rerun: bool) -> list[str]:
    from weightvault import api
    from weightvault.errors import WeightvaultError

    problems: list[str] = []
    found: dict[str, dict[str, dict[str, str]]] = {}
    for name, path, pw in (("hot", root / "repo", _passwords()[0]), ("warm", root / "dest", _passwords()[1])):
        try:
            repo = api.Repository.open(path, pw)
        except WeightvaultError as exc:
            return [f"{name} does not open: {exc.message}"]
        repo.unlock()
        problems += [f"{name}: check: {e}" for e in repo.check(read_data=True).errors]
        found[name] = _classes(repo, want, root, problems)
    union = {k: v for files in found["hot"].values() for k, v in files.items()}
    union.update({k: v for files in found["warm"].values() for k, v in files.items()})
    if op == "tier-run" and union != want:
        problems.append(f"the tiers together no longer hold the whole source: {sorted(set(want) - set(union))}")
    if after_rerun:
        where = "hot" if op == "policy-apply" else "warm"
        have = {k: v for files in found[where].values() for k, v in files.items()}
        if have != want:
            problems.append(f"after the rerun the newest snapshots in {where} do not hold the source")
        if op == "policy-apply" and set(found["warm"]) != set(found["hot"]):
            problems.append("after the rerun a class has no copy in the replica")
        if op == "tier-run" and found["hot"]:
            problems.append(f"after the rerun snapshots are left in hot: {sorted(found['hot'])}")
    return problems
