"""restore --swap never loses the live contents nor a previous safety copy: two swaps in the same
second, and a swap killed (os._exit, no cleanup) at every step it persists, then run again."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository
from weightvault.runner import swap as swap_mod


def contents(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def siblings(run: Path, marker: str) -> list[Path]:
    return sorted(p for p in run.parent.iterdir() if marker in p.name)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Repository, Path, str, dict[str, str]]:
    run = tmp_path / "site" / "run"
    write(run / "weights.bin", os.urandom(100_000))
    write(run / "config.json", b'{"step": 100}')
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    snap = repo.backup([run]).snapshot.id
    good = contents(run)
    (run / "weights.bin").write_bytes(b"damaged")
    return repo, run, snap, good


class _FrozenClock(datetime):
    @classmethod
    def now(cls, tz: object = None) -> _FrozenClock:
        return cls(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def test_two_swaps_in_the_same_second_keep_both_previous_copies(
    setup: tuple[Repository, Path, str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, run, snap, good = setup
    monkeypatch.setattr(swap_mod, "datetime", _FrozenClock)
    damaged = contents(run)
    first = repo.restore_swap(snap, run)
    write(run / "written-between.txt", b"precious")  # written to the live directory between the swaps
    between = contents(run)
    second = repo.restore_swap(snap, run)
    assert contents(run) == good
    assert first.previous and second.previous and first.previous != second.previous
    assert contents(Path(first.previous)) == damaged
    assert contents(Path(second.previous)) == between
    assert (Path(second.previous) / "written-between.txt").read_bytes() == b"precious"
    assert not siblings(run, ".wv-swap-")


def test_a_file_target_in_the_same_second_is_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swap_mod, "datetime", _FrozenClock)
    model = write(tmp_path / "m" / "model.bin", b"v1")
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    snap = repo.backup([model]).snapshot.id
    model.write_bytes(b"live-1")
    a = repo.restore_swap(snap, model)
    model.write_bytes(b"live-2")
    b = repo.restore_swap(snap, model)
    assert model.read_bytes() == b"v1"
    assert a.previous and b.previous
    assert Path(a.previous).read_bytes() == b"live-1" and Path(b.previous).read_bytes() == b"live-2"


CHILD = r"""
import os, shutil, sys, types
from weightvault.api import Repository
from weightvault.runner import swap
die_at = int(sys.argv[3])
calls = [0]

def step(fn):
    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] == die_at:
            os._exit(137)  # a kill: no finally, no cleanup
        out = fn(*a, **k)
        calls[0] += 1
        if calls[0] == die_at:
            os._exit(137)
        return out
    return wrapped

fake_os = types.SimpleNamespace(**{n: getattr(os, n) for n in dir(os) if not n.startswith("__")})
for name in ("rename", "fsync"):
    setattr(fake_os, name, step(getattr(os, name)))
fake_shutil = types.SimpleNamespace(rmtree=step(shutil.rmtree))
swap.os, swap.shutil = fake_os, fake_shutil
swap._rename2 = step(swap._rename2 if sys.argv[4] == "1" else lambda a, b, flags: False)
repo = Repository.open(sys.argv[1], os.environ["P"])
if die_at == 0:  # killed once the restore is done, during validation
    Repository.validate = lambda *a, **k: os._exit(137)
repo.restore_swap("latest", sys.argv[2])
print(calls[0])
"""


def _child(repo: Path, run: Path, die_at: int, exchange: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, str(repo), str(run), str(die_at), "1" if exchange else "0"],
                          capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, P=PASSWORD))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_swap_killed_at_any_step_loses_nothing_and_the_next_swap_cleans_up(
    setup: tuple[Repository, Path, str, dict[str, str]], tmp_path: Path, exchange: bool
) -> None:
    """Without RENAME_EXCHANGE (other kernels, some filesystems) the swap is two renames; a kill
    between them leaves no live directory for a moment, and the next swap finishes the job."""
    _repo, run, _snap, good = setup
    damaged = contents(run)
    base = tmp_path / "base"
    shutil.copytree(tmp_path / "site", base / "site", symlinks=True)
    shutil.copytree(tmp_path / "repo", base / "repo", symlinks=True)
    full = _child(tmp_path / "repo", run, -1, exchange)  # a run that is not killed: how many steps it has
    assert full.returncode == 0, full.stderr
    steps = int(full.stdout.split()[-1])
    assert steps >= 10
    for die_at in range(steps + 1):
        case = tmp_path / f"case-{die_at}"
        shutil.copytree(base, case, symlinks=True)
        live = case / "site" / "run"
        killed = _child(case / "repo", live, die_at, exchange)
        assert killed.returncode == 137, (die_at, killed.stdout, killed.stderr)
        # whatever the kill left, the previous contents are somewhere whole: live or parked
        holders = [p for p in [live, *siblings(live, ".before-")] if p.exists() and contents(p) == damaged]
        inside = [p for s in siblings(live, ".wv-swap-") for p in (s / "new" / "run", s / "old") if p.exists()]
        assert holders or any(contents(p) == damaged for p in inside), die_at
        leftover = bool(siblings(live, ".wv-swap-"))
        again = Repository.open(case / "repo", PASSWORD).restore_swap("latest", live)
        assert contents(live) == good, die_at
        copies = [p for p in siblings(live, ".before-") if contents(p) == damaged]
        assert len(copies) == 1, (die_at, copies)  # the previous contents, exactly once
        assert not siblings(live, ".wv-swap-"), die_at  # nothing hidden left behind
        assert bool(again.recovered) == leftover, (die_at, again.recovered)  # reported when there was any
        shutil.rmtree(case)


def test_a_scratch_directory_of_an_older_version_is_reported_not_deleted(
    setup: tuple[Repository, Path, str, dict[str, str]]
) -> None:
    """7455b7c restored into the scratch directory itself: killed right after its exchange, it
    left the previous contents at ``.run.wv-swap-x/run`` with no state file."""
    repo, run, snap, good = setup
    old = run.parent / ".run.wv-swap-oldver"
    write(old / "run" / "precious.bin", b"the only copy")
    res = repo.restore_swap(snap, run)
    assert contents(run) == good
    assert (old / "run" / "precious.bin").read_bytes() == b"the only copy"
    assert any("left" in line and str(old) in line for line in res.recovered)


def test_a_lookalike_target_name_is_not_touched(tmp_path: Path) -> None:
    """``run[1]`` as a glob also matches ``run1``: the swap of one must never touch the other's."""
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    target = write(tmp_path / "site" / "run[1]" / "w.bin", b"v1").parent
    snap = repo.backup([target]).snapshot.id
    other = write(tmp_path / "site" / ".run1.wv-swap-abc" / "new" / "run1" / "w.bin", b"someone else's")
    res = repo.restore_swap(snap, target)
    assert other.read_bytes() == b"someone else's" and res.recovered == []


def test_a_second_swap_of_the_same_target_while_one_runs_is_refused(
    setup: tuple[Repository, Path, str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swap B starts while swap A is restoring into its scratch directory: B is refused before it
    touches anything (before the lock, B's recovery removed A's copy in progress as "never
    swapped in"); A completes."""
    from weightvault.errors import RestoreConflictError

    repo, run, snap, good = setup
    real_restore, refused = Repository.restore, []

    def restore_then_second_swap(self: Repository, *a: object, **k: object) -> object:
        res = real_restore(self, *a, **k)  # type: ignore[arg-type]
        with pytest.raises(RestoreConflictError, match=r"another restore --swap of .* is running") as exc:
            repo.restore_swap(snap, run)
        refused.append(exc.value.exit_code)
        return res

    monkeypatch.setattr(Repository, "restore", restore_then_second_swap)
    res = repo.restore_swap(snap, run)
    assert refused == [18] and contents(run) == good and res.previous
    assert not siblings(run, ".wv-swap")  # no scratch directory, no lock file left
