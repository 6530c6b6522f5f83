"""``WeightvaultWriter``: ``dcp.save`` straight into a repository (no local copy), one process and
two (gloo, CPU); the restored directory loads with torch's own ``FileSystemReader``; a rank that
dies before committing leaves nothing restorable; the next step is stored as deltas."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD
from weightvault.api import Repository

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

from weightvault.integrations.dcp import WeightvaultWriter  # noqa: E402


def _state(seed: int = 0, noise: float = 0.0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(256, 256, generator=g)
    if noise:
        w = w + noise * torch.randn(256, 256, generator=torch.Generator().manual_seed(seed + 1))
    return {"model": {"w": w, "b": torch.arange(16, dtype=torch.bfloat16)}, "step": 3, "meta": {"run": "r1"}}


def _save(state: dict[str, Any], writer: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is ... uninitialized": one process on purpose
        dcp.save(state, storage_writer=writer)


def _load_restored(directory: Path) -> dict[str, Any]:
    out = {"model": {"w": torch.zeros(256, 256), "b": torch.zeros(16, dtype=torch.bfloat16)}, "step": 0,
           "meta": {"run": ""}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(out, storage_reader=dcp.FileSystemReader(str(directory)))
    return out


def test_save_straight_into_the_repository_and_load_the_restored_copy(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("WEIGHTVAULT_PASSWORD", PASSWORD)
    monkeypatch.chdir(tmp_path)
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    def packs() -> int:
        return sum(p.stat().st_size for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file())

    state = _state()
    writer = WeightvaultWriter(tmp_path / "repo", run="exp", step=1)
    _save(state, writer)
    first_added = packs()
    assert not (tmp_path / "exp").exists()  # nothing was written locally
    (snap,) = repo.snapshots()
    assert snap.paths == [str(tmp_path / "exp" / "step-1")] and {"run=exp", "step=1"} <= set(snap.tags)
    repo.restore(snap.id, tmp_path / "back", verify=True)
    loaded = _load_restored(tmp_path / "back" / "step-1")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and torch.equal(loaded["model"]["b"],
                                                                                 state["model"]["b"])
    assert loaded["step"] == 3 and loaded["meta"] == {"run": "r1"}
    report = repo.validate(snap.id, tmp_path / "back", level=3)
    assert report.ok and {f.format for f in report.files} == {"dcp", "dcp-metadata"}
    _save(_state(noise=1e-4), WeightvaultWriter(tmp_path / "repo", run="exp", step=2))
    assert packs() - first_added < 0.8 * first_added  # step 2's shard stored as deltas against step 1's


def _rank(rank: int, world: int, repo: str, port: int, die: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WEIGHTVAULT_PASSWORD=PASSWORD)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    state = {"model": {f"w{rank}": torch.full((64, 64), float(rank))}, "shared": torch.ones(8)}
    step = 8 if die else 7
    writer = WeightvaultWriter(repo, run="ddp", step=step, root=f"{repo}-ckpt/step-{step}")
    if die and rank == 0:
        original = writer.finish

        def finish(*a: Any, **k: Any) -> None:
            os._exit(1)  # the coordinator dies before its commit

        writer.finish = finish  # type: ignore[method-assign]
        _ = original
    dcp.save(state, storage_writer=writer)
    torch.distributed.destroy_process_group()


def test_two_ranks_make_one_group_and_a_dead_coordinator_leaves_nothing_restorable(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    for die in (False, True):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_rank, args=(r, 2, str(tmp_path / "repo"), port, die)) for r in (0, 1)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        if not die:
            assert [p.exitcode for p in procs] == [0, 0]
    (snap,) = repo.snapshots()  # step 7's group; step 8 never completed
    assert "step=7" in snap.tags
    incomplete = [g for g in repo.groups() if not g.complete]
    assert [g.id for g in incomplete] == ["ddp@step-8"]
    repo.restore(snap.id, tmp_path / "back", verify=True)
    assert sorted(p.name for p in (tmp_path / "back" / "step-7").iterdir()) == [".metadata", "__0_0.distcp",
                                                                               "__1_0.distcp"]
