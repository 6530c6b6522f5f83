"""``WeightvaultCheckpointIO`` in a real Lightning ``Trainer`` (and under ``AsyncCheckpointIO``):
every checkpoint is written atomically, ends up in the repository with its tags, restores
byte-identical, and a checkpoint deleted locally is restored from the repository to resume."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD
from weightvault.api import Repository

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.plugins.io import AsyncCheckpointIO  # noqa: E402

from weightvault.integrations.lightning import WeightvaultCheckpointIO  # noqa: E402


class Tiny(L.LightningModule):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(8, 1)

    def training_step(self, batch: Any, _i: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _data() -> Any:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _fit(root: Path, io: Any, steps: int, ckpt_path: str | None = None) -> Any:
    torch.manual_seed(0)
    cb = L.callbacks.ModelCheckpoint(dirpath=root / "ckpts", every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(default_root_dir=root, max_steps=steps, plugins=[io], callbacks=[cb], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about workers and logging on tiny data
        trainer.fit(Tiny(), _data(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("wrap", [False, True], ids=["sync", "async"])
def test_checkpoints_are_protected_and_restored_to_resume(tmp_path: Path, isolated_home: Path, wrap: bool) -> None:
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    wv_io = WeightvaultCheckpointIO(tmp_path / "repo", password_file=str(pw), run="tiny", tags=["team=ml"], strict=True)
    _fit(tmp_path / "a", AsyncCheckpointIO(wv_io) if wrap else wv_io, 6)
    jobs = wv_io.wait(timeout=120)
    assert [j.state for j in jobs] == ["done"] * 3, [(j.state, j.error) for j in jobs]
    ckpts = sorted((tmp_path / "a" / "ckpts").glob("*.ckpt"))
    assert len(ckpts) == 3 and not list((tmp_path / "a" / "ckpts").glob(".*"))  # no temp files left
    by_path = {s.paths[0]: s for s in repo.snapshots()}
    for c in ckpts:
        s = by_path[str(c)]
        assert {"run=tiny", "team=ml"} <= set(s.tags) and any(t.startswith("step=") for t in s.tags)
        repo.restore(s.id, tmp_path / "back" / c.stem, verify=True)
        assert (tmp_path / "back" / c.stem / c.name).read_bytes() == c.read_bytes()
    last = ckpts[-1]
    expected = torch.load(last, weights_only=False)["state_dict"]
    last.unlink()  # gone locally: loading it restores it from the repository
    loaded = WeightvaultCheckpointIO(tmp_path / "repo", password_file=str(pw)).load_checkpoint(last, weights_only=False)
    assert last.exists() and all(torch.equal(loaded["state_dict"][k], v) for k, v in expected.items())
    last.unlink()
    resumed = _fit(tmp_path / "a", WeightvaultCheckpointIO(tmp_path / "repo", password_file=str(pw)), 8, str(last))
    assert resumed.global_step == 8
