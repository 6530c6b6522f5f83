"""``WeightvaultCallback`` in a real ``transformers.Trainer`` (a tiny random GPT-2 on the CPU):
every checkpoint, including those ``save_total_limit`` rotated away, ends up in the repository
with its tags, restores byte-identical, and training resumed from a restored checkpoint takes
the same next step as training resumed from the original."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest
from weightvault.api import Repository

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from weightvault.integrations.queue import UploadQueue  # noqa: E402
from weightvault.integrations.transformers import WeightvaultCallback  # noqa: E402


class Data(torch.utils.data.Dataset):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 64, (48, 16), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


class Snap(transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    """What each checkpoint held the moment it was saved (before any rotation)."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, Any]] = {}

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.seen[d.name] = tree_digest(d)
        return control


def _trainer(out: Path, steps: int, callbacks: list[Any]) -> Any:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0))
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, save_steps=4, save_total_limit=2, per_device_train_batch_size=4,
        logging_steps=1, report_to=[], use_cpu=True, seed=0, run_name="tiny-gpt2", dataloader_num_workers=0,
        disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=callbacks)


def _next_loss(trainer: Any, ckpt: Path) -> float:
    trainer.train(resume_from_checkpoint=str(ckpt))
    return float(next(h["loss"] for h in trainer.state.log_history if h.get("step") == trainer.state.global_step))


def test_every_checkpoint_is_protected_and_resumes_identically(tmp_path: Path, isolated_home: Path) -> None:
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    snap, cb = Snap(), WeightvaultCallback(tmp_path / "repo", password_file=str(pw), tags=["team=ml"], strict=True)
    out = tmp_path / "out"
    _trainer(out, 12, [snap, cb]).train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]  # 4 rotated away
    assert [j.state for j in UploadQueue().jobs()] == ["done"] * 3
    snaps = {Path(s.paths[0]).name: s for s in repo.snapshots()}
    assert sorted(snaps) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    tags = set(snaps["checkpoint-8"].tags)
    assert {"run=tiny-gpt2", "step=8", "team=ml"} <= tags and any(t.startswith("loss=") for t in tags)
    assert snaps["checkpoint-8"].paths == [str(out / "checkpoint-8")]
    for name, s in snaps.items():
        repo.restore(s.id, tmp_path / "back", verify=True)
        assert tree_digest(tmp_path / "back" / name) == snap.seen[name], name
    shutil.copytree(out / "checkpoint-8", tmp_path / "orig-8")
    original = _next_loss(_trainer(tmp_path / "resume-a", 9, []), tmp_path / "orig-8")
    restored = _next_loss(_trainer(tmp_path / "resume-b", 9, []), tmp_path / "back" / "checkpoint-8")
    assert restored == original


def test_a_failing_backup_never_stops_training_unless_strict(tmp_path: Path, isolated_home: Path) -> None:
    from weightvault.errors import WeightvaultError

    Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not the password\n")
    lenient = WeightvaultCallback(tmp_path / "repo", password_file=str(wrong), timeout=60)
    trainer = _trainer(tmp_path / "a", 8, [lenient])
    trainer.train()  # finishes: the failures are logged and kept in the queue
    assert trainer.state.global_step == 8
    assert [j.state for j in UploadQueue().jobs()] == ["failed", "failed"]
    strict = WeightvaultCallback(tmp_path / "repo", password_file=str(wrong), timeout=60, strict=True)
    with pytest.raises(WeightvaultError, match="failed"):
        _trainer(tmp_path / "b", 4, [strict]).train()


class ShardedGPT2(transformers.GPT2LMHeadModel):  # type: ignore[misc,name-defined]
    """Saves in shards of 40 KB, so even this tiny model has a model.safetensors.index.json."""

    def save_pretrained(self, *a: Any, **k: Any) -> Any:
        k.setdefault("max_shard_size", "40KB")
        return super().save_pretrained(*a, **k)


def _tiny(cls: Any = transformers.GPT2LMHeadModel) -> Any:
    torch.manual_seed(0)
    return cls(transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0))


def _train(model: Any, out: Path, callbacks: list[Any]) -> None:
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=4, save_steps=4, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        seed=0, dataloader_num_workers=0, disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=callbacks).train()


def test_a_sharded_checkpoint_is_protected_and_its_index_validated(tmp_path: Path, isolated_home: Path) -> None:
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    model = _tiny(ShardedGPT2)
    _train(model, tmp_path / "out", [WeightvaultCallback(tmp_path / "repo", password_file=str(tmp_path / "pw"),
                                                         strict=True)])
    ckpt = tmp_path / "out" / "checkpoint-4"
    shards = sorted(p.name for p in ckpt.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (ckpt / "model.safetensors.index.json").exists()
    (snap,) = repo.snapshots()
    repo.restore(snap.id, tmp_path / "back", verify=True)
    back = tmp_path / "back" / "checkpoint-4"
    report = repo.validate(snap.id, tmp_path / "back", level=3)
    assert report.ok and "shard-index" in {f.format for f in report.files}
    loaded = ShardedGPT2.from_pretrained(str(back))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    (back / shards[-1]).unlink()  # every remaining file is healthy on its own; the checkpoint is not
    report = repo.validate(snap.id, tmp_path / "back", level=2)
    index = next(f for f in report.files if f.format == "shard-index")
    assert any(f"shard {shards[-1]!r}" in p and "is missing" in p for p in index.problems)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's call
def test_a_peft_adapter_checkpoint_is_protected_and_loads_back(tmp_path: Path, isolated_home: Path) -> None:
    peft = pytest.importorskip("peft")
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    model = peft.get_peft_model(_tiny(), config)
    _train(model, tmp_path / "out", [WeightvaultCallback(tmp_path / "repo", password_file=str(tmp_path / "pw"),
                                                         strict=True)])
    ckpt = tmp_path / "out" / "checkpoint-4"
    assert (ckpt / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    (snap,) = repo.snapshots()
    repo.restore(snap.id, tmp_path / "back", verify=True)
    back = tmp_path / "back" / "checkpoint-4"
    assert tree_digest(back) == tree_digest(ckpt)
    assert repo.validate(snap.id, tmp_path / "back", level=3).ok
    loaded = peft.PeftModel.from_pretrained(_tiny(), str(back))
    trained = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert trained and all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())
