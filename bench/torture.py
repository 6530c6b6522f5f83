#!/usr/bin/env python3
"""The crash, fault and hostile-input campaign (issue 20), one command (docs/RELIABILITY.md).

    .venv/bin/python bench/torture.py [--quick] [--campaign all|crash|corruption|load|disk]
                                      [--ops backup,forget,...] [--modes kill-before,...] [--json FILE] [--work DIR]

Crash points (``weightvault.testing.torture``): each mutating operation is run once to count
its durable writes, then crashed at every one in turn (``--quick``: an even sample of 2 per op
and mode, what CI runs) by SIGKILL before the write, SIGKILL right after it, an injected EIO
or ENOSPC instead of it, or a simulated power cut before or after it (the kill, then every write
and directory change not yet fsynced dropped: ``weightvault.testing.powercut``); after each:
unlock, ``check --read-data``, every snapshot restored and compared, the operation run again
and everything checked once more. Prints a table per operation and exits 1 if anything was lost
or any check failed.

Corruption (``weightvault.testing.corruption``): config, key files, packs, index files,
snapshots and ledger records, up to 10 of each (``--quick``: 1), each flipped at 10 random bits
(``--quick``: 1), truncated and deleted, one change per fresh copy; each must be detected by
open or ``check --read-data`` and named, no restore may write wrong bytes, and healing from a
replica (then ``repair index``) is tried and counted.

Full disk (``weightvault.testing.fulldisk``, root: it mounts a 48 MiB tmpfs): a backup (the
repository on the small disk) and a restore (the target on it), each at 12 (``--quick``: 3)
amounts of free space from none to just short of what it needs; each must complete or stop with
exit 15, and afterwards the repository checks clean, every snapshot restores identical, the
target holds only whole files, and the operation run again completes.

Load (``weightvault.testing.load``): 8 writer processes, a forget + prune loop and a check loop at
once for 300 s (``--quick``: 30) against moto's S3 behind a proxy that turns 5 % of the requests
into a 503, a reset, a lost answer or a 1.5 s delay; then every acknowledged snapshot that no
forget removed must be there and restore identical, and ``check --read-data`` be clean.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from weightvault.testing.corruption import Damage, run_corruption  # noqa: E402
from weightvault.testing.fulldisk import run_full_disk  # noqa: E402
from weightvault.testing.load import run_load  # noqa: E402
from weightvault.testing.torture import MODES, OPS, PointResult, run_campaign  # noqa: E402


def _crash(a: argparse.Namespace, work: Path, out: dict[str, object]) -> int:
    def show(r: PointResult) -> None:
        if r.problems:
            print(f"  LOST/BROKEN {r.op} point {r.point} {r.mode}: {r.outcome}: {'; '.join(r.problems)}", flush=True)

    report = run_campaign(work, ops=tuple(a.ops.split(",")), modes=tuple(a.modes.split(",")),
                          sample=2 if a.quick else None, progress=show)
    outcomes: dict[str, Counter[str]] = {}
    for r in report.results:
        outcomes.setdefault(r.op, Counter())[r.outcome.split(" ")[0]] += 1
    dropped: dict[str, Counter[str]] = {}
    for r in report.results:
        dropped.setdefault(r.op, Counter()).update(r.dropped)
    print("| operation | crash points | tried (all modes) | killed | failed cleanly | completed |"
          " power cuts: entry changes undone / files cut | with problems |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for op, row in report.summary().items():
        c, d = outcomes[op], dropped[op]
        print(f"| {op} | {row['points']} | {row['tried']} | {c['killed']} | {c['failed']} | {c['completed']} |"
              f" {d['entries_undone']} / {d['files_cut']} | {row['with_problems']} |")
    print(f"{len(report.results)} tries in {report.seconds:.0f} s; {len(report.lost)} with problems\n")
    out["crash"] = {"points": report.points, "seconds": report.seconds, "results": [r.__dict__ for r in report.results]}
    return len(report.lost)


def _corruption(a: argparse.Namespace, work: Path, out: dict[str, object]) -> int:
    def show(d: Damage) -> None:
        if d.problems or d.wrong_bytes or not (d.harmless or (d.detected and d.named)):
            print(f"  FAILED {d.kind} {d.name[:12]} {d.change}: {d.how}; {'; '.join(d.problems)}", flush=True)

    report = run_corruption(work, objects=1 if a.quick else 10, flips=1 if a.quick else 10, progress=show)
    print("| object | changes | detected and named | harmless | wrong bytes restored | restores refused |"
          " healed (replica / repair index) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    kinds: dict[str, list[Damage]] = {}
    for d in report.damages:
        kinds.setdefault(d.kind, []).append(d)
    for kind, ds in kinds.items():
        heal = Counter(d.how_healed for d in ds)
        print(f"| {kind} | {len(ds)} | {sum(d.detected and d.named for d in ds)} | {sum(d.harmless for d in ds)} |"
              f" {sum(d.wrong_bytes for d in ds)} | {sum(d.restores_refused for d in ds)} |"
              f" {heal['heal from the replica']} / {heal['repair index']} |")
    print(f"{len(report.damages)} changes in {report.seconds:.0f} s; {len(report.failures)} failures\n")
    out["corruption"] = {"seconds": report.seconds, "damages": [d.__dict__ for d in report.damages]}
    return len(report.failures)


def _disk(a: argparse.Namespace, work: Path, out: dict[str, object]) -> int:
    r = run_full_disk(work, steps=3 if a.quick else 12)
    if r.skipped:
        print(f"full-disk campaign skipped: {r.skipped}\n")
        return 0
    print("| operation | bytes it needs | free-space steps tried | completed | stopped with exit 15 | with problems |")
    print("|---|---:|---:|---:|---:|---:|")
    for op in ("backup", "restore"):
        ts = [t for t in r.tries if t.op == op]
        print(f"| {op} | {r.needed[op]:,} | {len(ts)} | {sum(t.exit_code == 0 for t in ts)} |"
              f" {sum(t.exit_code == 15 for t in ts)} | {sum(bool(t.problems) for t in ts)} |")
    for t in r.failures:
        print(f"  PROBLEM {t.op} with {t.free:,} bytes free: {'; '.join(t.problems)}")
    print()
    out["disk"] = {"needed": r.needed, "tries": [t.__dict__ for t in r.tries]}
    return len(r.failures)


def _load(a: argparse.Namespace, work: Path, out: dict[str, object]) -> int:
    r = run_load(work, seconds=30 if a.quick else 300, writers=8, rate=0.05)
    faults = {k: v for k, v in r.faults.items() if k != "requests"}
    print("| seconds | requests | faults injected | backups acknowledged | backups failed | forget+prune runs |"
          " snapshots removed | checks beside | restored identical | problems |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {r.seconds:.0f} | {r.faults.get('requests', 0)} | {sum(faults.values())} ({faults}) | {r.acked} |"
          f" {r.backup_failures} | {r.forgets} | {r.removed} | {r.checks} | {r.restored_identical} |"
          f" {len(r.problems)} |")
    if r.maintenance_runs:
        t0 = min(start for _, start, _ in r.maintenance_runs)
        print("maintenance lock, in the order each run ended (seconds from the first start: queued at, done at): "
              + ", ".join(f"{kind} {start - t0:.0f}-{end - t0:.0f}" for kind, start, end in r.maintenance_runs))
    for p in r.problems:
        print(f"  PROBLEM {p}")
    out["load"] = r.__dict__
    return len(r.problems)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a sample of each campaign (CI)")
    ap.add_argument("--campaign", choices=("all", "crash", "corruption", "load", "disk"), default="all")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", type=Path, help="write every result here")
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    logging.disable(logging.WARNING)  # the library's warnings about the damage it meets: expected here
    out: dict[str, object] = {}
    bad = 0
    with tempfile.TemporaryDirectory(prefix="wv-torture-", dir=a.work) as work:
        if a.campaign in ("all", "crash"):
            (Path(work) / "crash").mkdir()
            bad += _crash(a, Path(work) / "crash", out)
        if a.campaign in ("all", "corruption"):
            (Path(work) / "corruption").mkdir()
            bad += _corruption(a, Path(work) / "corruption", out)
        if a.campaign in ("all", "disk"):
            (Path(work) / "disk").mkdir()
            bad += _disk(a, Path(work) / "disk", out)
        if a.campaign in ("all", "load"):
            (Path(work) / "load").mkdir()
            bad += _load(a, Path(work) / "load", out)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
