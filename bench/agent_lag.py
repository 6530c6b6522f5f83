#!/usr/bin/env python3
"""The RPO lag of a watched training run: from a checkpoint's last byte to its snapshot.

    .venv/bin/python bench/agent_lag.py [--steps 30] [--every 5] [--work DIR]

A real ``weightvault watch`` process (at niceness 10, as ``contrib/systemd`` runs it) watches a
run directory while ``bench/finetune.py`` fine-tunes the real all-MiniLM-L6-v2 into it on the
CPU (every parameter trained; each checkpoint 303 MB: ``model.safetensors``,
``model-bf16.safetensors``, ``optimizer.pt``, ``trainer_state.json`` written last). For each
checkpoint: its last byte (the newest mtime of its files), the agent's hand-off, and the commit
of its snapshot (the ``backup.success`` event). Reported: medians and maxima of detection (last
byte to hand-off) and of the whole lag (last byte to committed snapshot), and the snapshots'
stored bytes. Needs torch and safetensors (bench/requirements-finetune.txt).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PASSWORD = "bench password"  # noqa: S105 - a throwaway benchmark repository


def _t(ev: dict[str, object]) -> float:
    return datetime.fromisoformat(str(ev["time"]).replace("Z", "+00:00")).timestamp()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="wv-agent-lag-"))
    from weightvault.api import KdfParams, Repository

    Repository.init(work / "repo", PASSWORD, kdf=KdfParams(65536, 3, 1))
    run = work / "runs"
    run.mkdir()
    env = {**os.environ, "XDG_STATE_HOME": str(work / "state"), "WEIGHTVAULT_PASSWORD": PASSWORD,
           "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    log = open(work / "agent.log", "w")  # noqa: SIM115 - closed below
    agent = subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "weightvault", "-r", str(work / "repo"),
                              "watch", str(run), "--log-format", "json"], env=env, stderr=log)
    time.sleep(3)
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "bench" / "finetune.py"), "--mode", "full", "--out", str(run / "minilm"),
                    "--steps", str(a.steps), "--every", str(a.every)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train_s = time.monotonic() - t0
    ckpts = sorted((run / "minilm").glob("checkpoint-*"))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        events = [json.loads(ln) for ln in (work / "agent.log").read_text().splitlines() if ln.startswith("{")]
        if sum(e["event"] == "backup.success" for e in events) >= len(ckpts):
            break
        time.sleep(0.5)
    agent.terminate()
    agent.wait(60)
    log.close()
    rows = []
    for c in ckpts:
        last = max(f.stat().st_mtime for f in c.rglob("*") if f.is_file())
        hand = next(e for e in events if e["event"] == "handoff" and e["path"] == str(c))
        done = next(e for e in events if e["event"] == "backup.success" and e["path"] == str(c))
        rows.append({"checkpoint": c.name, "detect_s": _t(hand) - last, "lag_s": _t(done) - last,
                     "stored_mb": float(done.get("stored_bytes_added", 0)) / 1e6,
                     "size_mb": sum(f.stat().st_size for f in c.rglob("*") if f.is_file()) / 1e6})
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    det = [r["detect_s"] for r in rows]
    lag = [r["lag_s"] for r in rows]
    print(f"\ntraining: {a.steps} steps in {train_s:.0f} s, {len(rows)} checkpoints of {rows[0]['size_mb']:.0f} MB\n")
    print("| | median | max |\n|---|---:|---:|")
    print(f"| last byte to hand-off (detection) | {statistics.median(det):.2f} s | {max(det):.2f} s |")
    print(f"| last byte to committed snapshot (RPO lag) | {statistics.median(lag):.2f} s | {max(lag):.2f} s |")
    stored = [r["stored_mb"] for r in rows]
    print(f"| stored per checkpoint (first / later median) | {stored[0]:.1f} MB |"
          f" {statistics.median(stored[1:] or stored):.1f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
