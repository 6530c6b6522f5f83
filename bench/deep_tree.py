#!/usr/bin/env python3
"""How restore time and memory grow with the depth of a tree (weightvault only; restic and borg
cannot back up a path past PATH_MAX, which these trees are).

    .venv/bin/python bench/deep_tree.py [--depths 1000,2000,5000,10000,20000] [--repeat 3] [--work DIR]

For each depth, a snapshot of one chain of nested directories ``d/d/.../d/leaf`` is made with
``backup_data`` (the manifest a hostile or generated snapshot would hold), then restored
``--repeat`` times, each in a fresh child process so its peak RSS is its own. Prints the median
restore time, time per directory, and the peak RSS. A chain's manifest holds every full path, so
its size grows with the square of the depth; linear restore cost is linear in that size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PASSWORD = "bench password"  # noqa: S105 - a throwaway benchmark repository

CHILD = """
import json, resource, sys, time
from weightvault.api import Repository
repo = Repository.open(sys.argv[1], sys.argv[3])
t = time.perf_counter()
res = repo.restore("latest", sys.argv[2])
print(json.dumps({"s": time.perf_counter() - t, "dirs": res.dirs,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="1000,2000,5000,10000,20000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    from weightvault.api import KdfParams, Repository

    work = Path(tempfile.mkdtemp(prefix="wv-deep-", dir=a.work))
    try:
        print("| depth | manifest paths MiB | restore s (median) | µs per directory | peak RSS MiB |")
        print("|---:|---:|---:|---:|---:|")
        for depth in (int(x) for x in a.depths.split(",")):
            repo_dir = work / f"repo-{depth}"
            repo = Repository.init(repo_dir, PASSWORD, kdf=KdfParams(time_cost=1, memory_kib=8192, parallelism=1))
            repo.backup_data("/deep", {"/".join(["d"] * depth) + "/leaf": b"deep"})
            runs = []
            for i in range(a.repeat):
                out = work / f"out-{depth}-{i}"
                p = subprocess.run([sys.executable, "-c", CHILD, str(repo_dir), str(out), PASSWORD],
                                   capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT / "src")})
                runs.append(json.loads(p.stdout))
                subprocess.run(["rm", "-rf", str(out)], check=True)  # shutil.rmtree recurses per level
            s = statistics.median(r["s"] for r in runs)
            paths_mib = sum(2 * i for i in range(1, depth + 2)) / 2**20
            print(f"| {depth:,} | {paths_mib:.1f} | {s:.2f} | {s / depth * 1e6:.0f} |"
                  f" {max(r['rss_mib'] for r in runs):.0f} |", flush=True)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
