#!/usr/bin/env python3
"""What the KDF head start (``cli/prewarm.py``) saves on a short command, measured A/B in one run.

    .venv/bin/python bench/startup_ab.py [--runs 7] [--mib 64] [--work DIR]

Creates a repository with the product's default argon2id parameters, backs up ``--mib`` MiB of
random data, then times whole CLI processes, alternating the two ways of giving the same password:

- ``file``: ``--password-file FILE`` (a regular file: the CLI starts the key derivation in a
  background thread before its imports);
- ``pipe``: ``--password-file /dev/stdin`` fed through a pipe (the head start never reads a pipe,
  so the key is derived after the imports, as before the change).

Commands: ``snapshots`` and ``restore latest --target`` (into a fresh directory each time).
Prints the median wall time of each and the difference. Numbers depend on the machine; compare
them only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WV = [sys.executable, "-m", "weightvault"]
PASSWORD = b"bench password\n"  # a throwaway benchmark repository


def _run(args: list[str], mode: str, pwfile: Path) -> float:
    """Wall time of one CLI process; raises if it fails."""
    if mode == "file":
        cmd, stdin = [*WV, "--password-file", str(pwfile), *args], subprocess.DEVNULL
    else:
        cmd, stdin = [*WV, "--password-file", "/dev/stdin", *args], subprocess.PIPE
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(PASSWORD if mode == "pipe" else None)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode(errors='replace')}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wv-startup-", dir=a.work))
    try:
        pwfile = work / "password"
        pwfile.write_bytes(PASSWORD)
        repo, src = work / "repo", work / "src"
        src.mkdir()
        (src / "model.bin").write_bytes(os.urandom(a.mib << 20))
        base = ["-r", str(repo)]
        subprocess.run([*WV, "--password-file", str(pwfile), *base, "init"], check=True,
                       stdout=subprocess.DEVNULL)
        _run([*base, "backup", str(src)], "file", pwfile)
        results: dict[str, dict[str, list[float]]] = {"snapshots": {"file": [], "pipe": []},
                                                      "restore": {"file": [], "pipe": []}}
        for i in range(a.runs):
            for mode in ("file", "pipe") if i % 2 == 0 else ("pipe", "file"):
                results["snapshots"][mode].append(_run([*base, "snapshots"], mode, pwfile))
                target = work / f"t-{mode}-{i}"
                results["restore"][mode].append(
                    _run([*base, "restore", "latest", "--target", str(target)], mode, pwfile))
                shutil.rmtree(target)
        out = {}
        for name, modes in results.items():
            med = {m: statistics.median(v) for m, v in modes.items()}
            out[name] = {"with_head_start_s": round(med["file"], 3), "without_s": round(med["pipe"], 3),
                         "saved_s": round(med["pipe"] - med["file"], 3), "runs": a.runs}
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
