"""Sharded checkpoints: every rank backs up its shard with --group/--rank/--world-size; the group
is one restorable snapshot only once all ranks have committed, and is reported incomplete before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from weightvault.api import Repository
from weightvault.errors import SnapshotNotFoundError, UsageError


def shard_dir(root: Path, rank: int, world: int) -> Path:
    """What rank ``rank`` writes on its own node: its model shard plus the shared config."""
    ckpt = root / f"node{rank}" / "step-100"
    write(ckpt / f"model-{rank:05d}-of-{world:05d}.safetensors", os.urandom(300_000 + rank))
    write(ckpt / f"optim-rank{rank}.pt", os.urandom(100_000))
    write(ckpt / "config.json", b'{"layers": 12}')  # identical on every rank
    return ckpt


def test_group_becomes_one_snapshot_only_when_all_ranks_committed(repo: Repository, tmp_path: Path) -> None:
    world = 4
    dirs = [shard_dir(tmp_path, r, world) for r in range(world)]
    for r in range(world - 1):
        res = repo.backup([dirs[r]], group="run-7", rank=r, world_size=world, host=f"node{r}", tags=["step=100"])
        assert res.group is not None and not res.group.complete and res.group.missing == list(range(r + 1, world))
    # three of four ranks: nothing is listed or restorable, and the group says what is missing
    assert repo.snapshots() == []
    with pytest.raises(SnapshotNotFoundError):
        repo.find_snapshot("latest")
    (grp,) = repo.groups()
    assert grp.status() == "incomplete: 3 of 4 ranks committed, missing rank(s) 3"
    res = repo.backup([dirs[3]], group="run-7", rank=3, world_size=world, host="node3", tags=["step=100"])
    assert res.group is not None and res.group.complete and res.group.merged is not None
    (snap,) = repo.snapshots()
    assert snap.id == res.group.merged.id and snap.group is not None and len(snap.group["ranks"]) == world
    assert repo.find_snapshot("latest:step=100").id == snap.id
    repo.restore("latest", tmp_path / "out", verify=True)
    restored = tree_digest(tmp_path / "out" / "step-100")
    expected: dict[str, tuple[str, object]] = {}
    for d in dirs:
        expected.update(tree_digest(d))
    assert restored == expected and len(restored) == 2 * world + 1
    assert repo.check(read_data=True).ok
    # stats over everything count the group once, not its ranks again
    assert repo.stats(None).files == len(restored) and repo.stats(None).snapshots == 1
    # a rank snapshot stays reachable by its explicit id (debugging), never by latest
    rank0 = grp.ranks[0].id
    assert repo.find_snapshot(rank0[:12]).id == rank0


def test_conflicting_ranks_leave_the_group_incomplete(repo: Repository, tmp_path: Path) -> None:
    a = shard_dir(tmp_path, 0, 2)
    b = shard_dir(tmp_path, 1, 2)
    write(b / "config.json", b'{"layers": 24}')  # rank 1 disagrees about a shared file
    repo.backup([a], group="bad", rank=0, world_size=2)
    res = repo.backup([b], group="bad", rank=1, world_size=2)
    assert res.group is not None and not res.group.complete
    assert "different content at 'step-100/config.json'" in res.group.status()
    assert repo.snapshots() == []


def test_ranks_disagreeing_on_world_size_are_reported(repo: Repository, tmp_path: Path) -> None:
    repo.backup([shard_dir(tmp_path, 0, 2)], group="g", rank=0, world_size=2)
    res = repo.backup([shard_dir(tmp_path, 1, 3)], group="g", rank=1, world_size=3)
    assert res.group is not None and not res.group.complete and "disagree on the world size" in res.group.status()


@pytest.mark.parametrize(
    ("group", "rank", "world", "what"),
    [("g", 2, 2, "not in 0..1"), ("g", None, 2, "go together"), ("g", -1, 2, "not in"),
     ("bad id!", 0, 1, "invalid group")],
)
def test_bad_group_arguments(repo: Repository, tmp_path: Path, group: str, rank: int | None, world: int,
                             what: str) -> None:
    with pytest.raises(UsageError, match=what):
        repo.backup([shard_dir(tmp_path, 0, 1)], group=group, rank=rank, world_size=world)


def test_ranks_in_parallel_processes_through_the_cli(tmp_path: Path) -> None:
    """Eight ranks start at once; exactly one group appears in the listing, and it restores all shards."""
    repo_path = tmp_path / "repo"
    Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)
    world = 8
    dirs = [shard_dir(tmp_path, r, world) for r in range(world)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))
    procs = [
        subprocess.Popen([sys.executable, "-m", "weightvault", "-r", str(repo_path), "backup", str(d), "--group",
                          "job-42", "--rank", str(r), "--world-size", str(world), "--host", f"node{r}", "--json"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        for r, d in enumerate(dirs)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
        outs.append(json.loads(out))
    assert any(o["group"]["complete"] for o in outs)
    listing = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "snapshots", "--json"],
                             env=env, capture_output=True, text=True, timeout=60)
    (snap,) = json.loads(listing.stdout)
    assert snap["group"]["id"] == "job-42" and len(snap["group"]["ranks"]) == world and listing.stderr == ""
    groups = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "snapshots", "--groups",
                             "--json"], env=env, capture_output=True, text=True, timeout=60)
    (grp,) = json.loads(groups.stdout)
    assert grp["complete"] and grp["missing_ranks"] == [] and grp["snapshot"] == snap["id"]
    repo = Repository.open(repo_path, PASSWORD)
    repo.restore(snap["id"], tmp_path / "out", verify=True)
    expected: dict[str, tuple[str, object]] = {}
    for d in dirs:
        expected.update(tree_digest(d))
    assert tree_digest(tmp_path / "out" / "step-100") == expected


def test_cli_reports_an_incomplete_group(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))
    base = [sys.executable, "-m", "weightvault", "-r", str(repo_path)]
    first = subprocess.run([*base, "backup", str(shard_dir(tmp_path, 0, 2)), "--group", "g1", "--rank", "0",
                            "--world-size", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "incomplete: 1 of 2 ranks committed, missing rank(s) 1" in first.stdout
    listing = subprocess.run([*base, "snapshots"], env=env, capture_output=True, text=True, timeout=60)
    assert "0 snapshot(s)" in listing.stdout and "group g1 is not restorable" in listing.stderr
    bad = subprocess.run([*base, "backup", str(tmp_path), "--group", "g1", "--rank", "0"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "go together" in bad.stderr
    restore = subprocess.run([*base, "restore", "latest", "--target", str(tmp_path / "out")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert restore.returncode == 14
