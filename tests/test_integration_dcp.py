"""``WeightvaultWriter``: ``dcp.save`` straight into a repository (no local copy), one process and
two (gloo, CPU); the restored directory loads with torch's own ``FileSystemReader``; a rank that
dies before committing leaves nothing restorable; the next step is stored as deltas.
``WeightvaultReader``: ``dcp.load`` straight from the repository, resharding included, without
unpickling anything stored."""

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

from weightvault.integrations.dcp import WeightvaultReader, WeightvaultWriter  # noqa: E402


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


def _empty() -> dict[str, Any]:
    return {"model": {"w": torch.zeros(256, 256), "b": torch.zeros(16, dtype=torch.bfloat16)}, "step": 0,
            "meta": {"run": ""}}


def _load(reader: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
    out = _empty() if out is None else out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(out, storage_reader=reader)
    return out


def _load_restored(directory: Path) -> dict[str, Any]:
    return _load(dcp.FileSystemReader(str(directory)))


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
    # one process loads what two ranks saved, straight from the group snapshot (both shards)
    os.environ["WEIGHTVAULT_PASSWORD"] = PASSWORD
    try:
        out = _load(WeightvaultReader(tmp_path / "repo", snap.id),
                    {"model": {"w0": torch.full((64, 64), 9.0), "w1": torch.zeros(64, 64)}, "shared": torch.zeros(8)})
    finally:
        del os.environ["WEIGHTVAULT_PASSWORD"]
    assert torch.equal(out["model"]["w0"], torch.zeros(64, 64)) and torch.equal(out["model"]["w1"],
                                                                               torch.ones(64, 64))
    assert torch.equal(out["shared"], torch.ones(8))


def test_load_straight_from_the_repository_without_unpickling(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("WEIGHTVAULT_PASSWORD", PASSWORD)
    monkeypatch.chdir(tmp_path)
    Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    state = _state()
    state["opt"] = {"param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "amsgrad": False, "name": b"x"}]}
    state["view"] = torch.arange(40, dtype=torch.float64).reshape(5, 8)[1:4, 2:6]  # a strided view
    _save(state, WeightvaultWriter(tmp_path / "repo", run="exp", step=1))
    _save(_state(seed=5), WeightvaultWriter(tmp_path / "repo", run="exp", step=2))

    import pickle as pickle_module
    calls: list[str] = []
    real_load = torch.load

    def spy(*a: Any, **k: Any) -> Any:  # the planner torch.loads what the reader hands it: record that
        calls.append("torch.load")
        return real_load(*a, **k)

    monkeypatch.setattr(pickle_module, "load", lambda *a, **k: pytest.fail("pickle.load of stored bytes"))
    monkeypatch.setattr(torch, "load", spy)
    out = _empty()
    out["opt"] = {"param_groups": [{"lr": 0.0, "betas": None, "amsgrad": None, "name": None}]}
    out["view"] = torch.zeros(3, 4, dtype=torch.float64)
    _load(WeightvaultReader(tmp_path / "repo", run="exp", step=1), out)
    assert torch.equal(out["model"]["w"], state["model"]["w"]) and torch.equal(out["model"]["b"], state["model"]["b"])
    assert torch.equal(out["view"], state["view"]) and out["step"] == 3 and out["meta"] == {"run": "r1"}
    assert out["opt"] == state["opt"]
    assert calls  # objects did reach the planner, re-saved by the reader
    newest = _load(WeightvaultReader(tmp_path / "repo", "latest:run=exp"))
    assert torch.equal(newest["model"]["w"], _state(seed=5)["model"]["w"])
    assert not (tmp_path / "exp").exists()  # nothing was ever written locally


def test_a_stored_object_that_is_not_plain_values_is_refused(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("WEIGHTVAULT_PASSWORD", PASSWORD)
    monkeypatch.chdir(tmp_path)
    Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    state = {"w": torch.ones(4), "when": __import__("datetime").date(2026, 12, 1)}
    _save(state, WeightvaultWriter(tmp_path / "repo", run="obj", step=1))
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException) as caught:  # DCP wraps what a rank raised
        _load(WeightvaultReader(tmp_path / "repo", run="obj", step=1), {"w": torch.zeros(4), "when": None})
    assert "UnsupportedFormatError: 'when' of snapshot" in str(caught.value)
    assert "datetime.date: not a plain value): weightvault never unpickles backup data" in str(caught.value)
    with pytest.raises(CheckpointException) as caught:
        _load(WeightvaultReader(tmp_path / "repo", run="obj", step=9), {"w": torch.zeros(4)})
    assert "is tagged run=obj and step=9" in str(caught.value)


def test_async_save_commits_the_staged_state_while_training_goes_on(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("WEIGHTVAULT_PASSWORD", PASSWORD)
    monkeypatch.chdir(tmp_path)
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    state = _state()
    saved = state["model"]["w"].clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        future = dcp.async_save(state, storage_writer=WeightvaultWriter(tmp_path / "repo", run="async", step=1))
        state["model"]["w"].add_(1.0)  # the next optimizer step, while the checkpoint is written
        future.result(timeout=120)
    (snap,) = repo.snapshots(tags=["run=async"])
    assert "step=1" in snap.tags
    out = _load(WeightvaultReader(tmp_path / "repo", run="async", step=1))
    assert torch.equal(out["model"]["w"], saved)  # what was staged, not what training did after
