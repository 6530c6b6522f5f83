#!/usr/bin/env python3
"""The crash, fault and hostile-input campaign (issue 20), one command (docs/RELIABILITY.md).

    .venv/bin/python bench/torture.py [--quick] [--ops backup,forget,...] [--modes kill-before,...]
                                      [--json FILE] [--work DIR]

Crash points (``weightvault.testing.torture``): each mutating operation is run once to count
its durable writes, then crashed at every one in turn (``--quick``: an even sample of 2 per op
and mode, what CI runs) by SIGKILL before the write, SIGKILL right after it, or an injected EIO
or ENOSPC instead of it; after each: unlock, ``check --read-data``, every snapshot restored and
compared, the operation run again and everything checked once more. Prints a table per
operation and exits 1 if anything was lost or any check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from weightvault.testing.torture import MODES, OPS, PointResult, run_campaign  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 crash points per operation and mode (CI)")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", type=Path, help="write every result here")
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()

    def show(r: PointResult) -> None:
        if r.problems:
            print(f"  LOST/BROKEN {r.op} point {r.point} {r.mode}: {r.outcome}: {'; '.join(r.problems)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="wv-torture-", dir=a.work) as work:
        report = run_campaign(Path(work), ops=tuple(a.ops.split(",")), modes=tuple(a.modes.split(",")),
                              sample=2 if a.quick else None, progress=show)
    outcomes: dict[str, Counter[str]] = {}
    for r in report.results:
        outcomes.setdefault(r.op, Counter())[r.outcome.split(" ")[0]] += 1
    print("| operation | crash points | tried (all modes) | killed | failed cleanly | completed | with problems |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for op, row in report.summary().items():
        c = outcomes[op]
        print(f"| {op} | {row['points']} | {row['tried']} | {c['killed']} | {c['failed']} | {c['completed']} |"
              f" {row['with_problems']} |")
    print(f"{len(report.results)} tries in {report.seconds:.0f} s; {len(report.lost)} with problems")
    if a.json:
        a.json.write_text(json.dumps({"points": report.points, "seconds": report.seconds, "results": [
            r.__dict__ for r in report.results]}, indent=1))
    return 1 if report.lost else 0


if __name__ == "__main__":
    sys.exit(main())
