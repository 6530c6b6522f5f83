#!/usr/bin/env python3
"""A 20 GiB file backed up and restored under an address-space limit (issue 20: resource limits).

    .venv/bin/python bench/vmem_limit.py [--size-gib 20] [--limit-mib 1024] [--work DIR]

Makes a sparse file of ``--size-gib`` with a 32 MiB block of random bytes at every GiB (so there
is data to store, and the rest reads as zeros), then runs ``weightvault init``, ``backup`` and
``restore`` as a user would, each under ``RLIMIT_AS`` (``ulimit -v``) of ``--limit-mib``, and
compares the restored file with the source byte for byte. Prints wall time, peak RSS and exit
code of each step; exits 1 if a step failed or the restored file differs.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WV = ROOT / ".venv" / "bin" / "weightvault"


def _limited(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _step(args: list[str], limit: int) -> tuple[int, float, float, str]:
    env = {**os.environ, "WEIGHTVAULT_PASSWORD": "bench password"}
    t = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen([str(WV), *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                             preexec_fn=lambda: _limited(limit))
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read().decode(errors="replace").strip()[-300:]
    return p.returncode, time.perf_counter() - t, usage.ru_maxrss / 1024, tail


def _same(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=int, default=20)
    ap.add_argument("--limit-mib", type=int, default=1024)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    limit = a.limit_mib << 20
    work = Path(tempfile.mkdtemp(prefix="wv-vmem-", dir=a.work))
    try:
        src = work / "src" / "big.bin"
        src.parent.mkdir()
        with open(src, "wb") as f:
            f.truncate(a.size_gib << 30)
            for i in range(a.size_gib):
                os.pwrite(f.fileno(), os.urandom(32 << 20), (i << 30) + 12345)
        repo, out = work / "repo", work / "out"
        print(f"| step (ulimit -v {a.limit_mib} MiB, {a.size_gib} GiB file) | exit | wall s | peak RSS MiB |")
        print("|---|---:|---:|---:|")
        bad = 0
        steps = (("init", ["-r", str(repo), "init"]), ("backup", ["-r", str(repo), "backup", str(src.parent)]),
                 ("restore", ["-r", str(repo), "restore", "latest", "--target", str(out)]))
        for name, args in steps:
            rc, s, rss, tail = _step(args, limit)
            print(f"| {name} | {rc} | {s:.1f} | {rss:.0f} |", flush=True)
            if rc != 0:
                print(f"  {tail}")
                bad += 1
        same = _same(src, out / "src" / "big.bin")
        print(f"restored file identical to the source: {same}")
        return 1 if bad or not same else 0
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    sys.exit(main())
