#!/usr/bin/env python3
"""How fast the dashboard's pages render on a repository with many snapshots (weightvault only).

    .venv/bin/python bench/dashboard_pages.py [--snapshots 1000] [--runs 10] [--repeat 7] [--work DIR]

Makes a repository of ``--snapshots`` snapshots (``--runs`` training runs, each checkpoint a small
in-memory model file tagged ``run``, ``step`` and ``loss``; one ledger record each), starts a
real ``weightvault ui`` process on it, follows its start link, and times each page over real
HTTP: the first request (cold: the snapshot list and the ledger catalog are read) and the median
of ``--repeat`` more (warm). Prints a table and, with ``--json``, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PASSWORD = "bench password"  # noqa: S105 - a throwaway benchmark repository

from weightvault.api import KdfParams, Repository  # noqa: E402
from weightvault.testing.dashboard import dashboard  # noqa: E402

PAGES = ("/", "/runs", "/storage", "/activity")


def build(repo_path: Path, snapshots: int, runs: int) -> list[str]:
    repo = Repository.init(repo_path, PASSWORD, kdf=KdfParams(memory_kib=8192, time_cost=1, parallelism=1))
    ids = []
    for i in range(snapshots):
        run, step = i % runs, (i // runs + 1) * 10
        weights = os.urandom(4096) + step.to_bytes(4, "little")
        res = repo.backup_data(f"/runs/exp{run}/checkpoint-{step}", {"model.bin": weights,
                                                                     "config.json": b'{"hidden": 64}'},
                               tags=[f"run=exp{run}", f"step={step}", f"loss={1 / step:.5f}"])
        ids.append(res.snapshot.id)
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshots", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="wv-dash-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ids = build(work / "repo", a.snapshots, a.runs)
    print(f"built {len(ids)} snapshots in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(HOME=str(work / "home"), XDG_CACHE_HOME=str(work / "cache"), WEIGHTVAULT_PASSWORD=PASSWORD)
    pages = [*PAGES, f"/snapshots/repo/{ids[-1]}", f"/diff/repo?a={ids[-1 - a.runs]}&b={ids[-1]}"]
    results: dict[str, dict[str, float]] = {}
    with dashboard(["-r", str(work / "repo"), "ui"], env, work) as ui:
        pool = ui.session()
        for page in pages:
            times = []
            for _ in range(a.repeat + 1):
                start = time.perf_counter()
                r = pool.request("GET", ui.base + page)
                times.append(time.perf_counter() - start)
                assert r.status == 200, (page, r.status, r.data[:300])
            results[page.split("?")[0].rsplit("/", 1)[0] if page.startswith("/snapshots") else page.split("?")[0]] = {
                "cold_s": times[0], "warm_median_s": statistics.median(times[1:]), "bytes": len(r.data)}
    print(f"\n{a.snapshots} snapshots in {a.runs} runs; medians of {a.repeat} warm requests\n")
    print("| page | first request s | warm median s | page KiB |\n|---|---:|---:|---:|")
    for page, v in results.items():
        print(f"| `{page}` | {v['cold_s']:.3f} | {v['warm_median_s']:.3f} | {v['bytes'] / 1024:.0f} |")
    if a.json:
        a.json.write_text(json.dumps({"snapshots": a.snapshots, "runs": a.runs, "pages": results}, indent=1))


if __name__ == "__main__":
    main()
