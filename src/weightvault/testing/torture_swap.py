"""The crash-point campaign's ``restore --swap``: a model directory at v1 swapped to v2.

Its crash points are file-system calls (``PowerCutTracer``), the ``renameat2`` exchange included
(``traced_rename2``). After a crash the model directory is v1 or v2, whole, and v1 is still
somewhere (the directory, a ``.before-*`` safety copy, or the scratch directory an interrupted
swap parked it in, which the next swap recovers); after the rerun the directory is exactly v2, a
safety copy holds v1, and no scratch directory is left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["MODEL", "prepare_swap_world", "run_swap", "swap_problems"]

MODEL = "model"


def _snap(repo: Any, tag: str) -> str:
    return str(next(s for s in repo.snapshots() if tag in s.tags).id)


def prepare_swap_world(repo: Any, root: Path) -> None:
    """The model directory, restored from v1 by a first swap (nothing to replace yet)."""
    repo.restore_swap(_snap(repo, "v=1"), root / MODEL)


def run_swap(repo: Any, root: Path) -> str:
    res = repo.restore_swap(_snap(repo, "v=2"), root / MODEL)
    return f"swapped, previous in {res.previous}"


def swap_problems(root: Path, versions: dict[str, dict[str, str]], after_rerun: bool) -> list[str]:
    from weightvault.testing.torture import _digest

    model, v1, v2 = root / MODEL, versions["v=1"], versions["v=2"]
    trees = {p: _digest(p) for p in [model, *root.glob(f"{MODEL}.before-*")] if p.is_dir()}
    parked = {p: _digest(p) for s in root.glob(f".{MODEL}.wv-swap-*") for p in s.rglob("*") if p.is_dir()}
    problems = []
    if model.is_dir() and trees[model] not in (v1, v2):
        problems.append("the model directory is neither the old version nor the new one, whole")
    if v1 not in [*trees.values(), *parked.values()]:
        problems.append("the previous contents (v1) are nowhere: not in place, not in a safety copy")
    if after_rerun:
        if trees.get(model) != v2:
            problems.append("after the rerun the model directory is not exactly v2")
        if v1 not in [t for p, t in trees.items() if p != model]:
            problems.append("after the rerun no safety copy holds v1")
        if list(root.glob(f".{MODEL}.wv-swap-*")):
            problems.append("after the rerun a scratch directory of a swap is left")
    return problems
