#!/usr/bin/env python3
"""How backup, listing and restore grow with the number of entries of a snapshot, up to a
million (weightvault only; issue 20's hostile-input campaign: a snapshot of a million entries must
restore in time linear in its entries and in bounded memory).

    .venv/bin/python bench/wide_tree.py [--counts 10000,100000,1000000] [--per-dir 1000] [--work DIR]

For each count, a snapshot of that many empty files, ``--per-dir`` to a directory, is made with
``backup_data`` (as a generated or hostile snapshot would be: no data, all manifest), then listed
and restored, each step in a fresh child process so its peak RSS is its own. Prints the seconds
and microseconds per entry of each step, the peak RSS, and checks that every entry came back.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench password"  # noqa: S105 - a throwaway benchmark repository

CHILD = """
import json, os, resource, sys, time
from weightvault.api import KdfParams, Repository
step, repo_dir, arg = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
if step == "backup":
    n, per = (int(x) for x in arg.split(","))
    repo = Repository.init(repo_dir, sys.argv[4], kdf=KdfParams(time_cost=1, memory_kib=8192, parallelism=1))
    repo.backup_data("/wide", {f"d{i // per:05d}/f{i:07d}": b"" for i in range(n)})
    out = n
elif step == "ls":
    out = sum(1 for _ in Repository.open(repo_dir, sys.argv[4]).ls("latest"))
else:
    res = Repository.open(repo_dir, sys.argv[4]).restore("latest", arg)
    out = res.files
print(json.dumps({"s": time.perf_counter() - t, "n": out,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _step(step: str, repo_dir: Path, arg: str) -> dict[str, float]:
    p = subprocess.run([sys.executable, "-c", CHILD, step, str(repo_dir), arg, PASSWORD], capture_output=True,
                       text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="10000,100000,1000000")
    ap.add_argument("--per-dir", type=int, default=1000)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wv-wide-", dir=a.work))
    try:
        print("| entries | backup s | ls s | restore s | restore µs per entry | peak RSS MiB (backup / ls / restore) |"
              " restored |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n in (int(x) for x in a.counts.split(",")):
            repo_dir, out = work / f"repo-{n}", work / f"out-{n}"
            b = _step("backup", repo_dir, f"{n},{a.per_dir}")
            ls = _step("ls", repo_dir, "")
            r = _step("restore", repo_dir, str(out))
            files = sum(len(fs) for _, _, fs in os.walk(out))
            print(f"| {n:,} | {b['s']:.1f} | {ls['s']:.1f} | {r['s']:.1f} | {r['s'] / n * 1e6:.0f} |"
                  f" {b['rss_mib']:.0f} / {ls['rss_mib']:.0f} / {r['rss_mib']:.0f} |"
                  f" {files:,}{'' if files == n and r['n'] == n else ' (MISSING ENTRIES)'} |", flush=True)
            subprocess.run(["rm", "-rf", str(out), str(repo_dir)], check=True)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
