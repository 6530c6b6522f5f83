"""Object storage vs local disk, and the cost of transient faults (weightvault only).

For each corpus, in one run: back up and restore (fsynced, verified) with

1. ``local``: a repository on local disk;
2. ``s3``: the same through the S3 backend to moto's S3 server on 127.0.0.1 (started here, as
   the tests do), ``--connections`` concurrent requests;
3. ``s3 + faults``: the same, with one request in 20 failing transiently (``FaultyBackend
   .fail_every(20)``) under the default retry policy (8 attempts, 0.25 s doubling, full jitter).

It reports seconds, MB/s, the ratio to local, and every retry counted. moto keeps objects in
memory and runs on the same 2 cores, so this measures weightvault's S3 path (request overhead,
concurrency, retries), not a real network or a real object store.

    .venv/bin/python bench/s3_compare.py                        # minilm + finetune-frozen
    .venv/bin/python bench/s3_compare.py --corpus synthetic-fp32 --connections 16
    .venv/bin/python bench/s3_compare.py --smoke                 # tiny synthetic corpus (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare

from weightvault.backends.base import Backend
from weightvault.backends.local import LocalBackend
from weightvault.backends.retry import RetryingBackend, RetryPolicy
from weightvault.backends.s3 import S3Backend, parse_s3_url
from weightvault.codec.crypto import KdfParams
from weightvault.ops.backup import backup
from weightvault.ops.restore import RestoreOptions, restore
from weightvault.repository.repo import Repository as Engine
from weightvault.testing.faults import FaultyBackend
from weightvault.testing.s3server import S3Endpoint, s3_endpoint

PASSWORD = b"s3-bench"
FAST = KdfParams(memory_kib=8192, time_cost=1, parallelism=1)


def run_one(backend: Backend, corpus: Path, work: Path, stats_of: RetryingBackend | None,
            io_threads: int = 0) -> dict[str, Any]:
    raw = compare.dir_bytes(corpus)
    repo = Engine.init(backend, PASSWORD, kdf=FAST)
    repo.io_threads = io_threads  # as the CLI sets it for s3:// repositories (--connections)
    compare.warm(corpus)
    t = time.perf_counter()
    with repo.lock():
        snap = backup(repo, [str(corpus)]).snapshot
    backup_s = time.perf_counter() - t
    target = work / "restore"
    if target.exists():
        shutil.rmtree(target)
    t = time.perf_counter()
    with repo.lock():
        restore(repo, snap, str(target), RestoreOptions(verify=True))
    restore_s = time.perf_counter() - t
    identical = compare.compare_trees(corpus, target / corpus.name)["identical"]
    shutil.rmtree(target)
    out: dict[str, Any] = {"raw_bytes": raw, "backup_s": backup_s, "backup_mb_s": raw / 1e6 / backup_s,
                           "restore_s": restore_s, "restore_mb_s": raw / 1e6 / restore_s, "identical": identical}
    if stats_of is not None:
        out.update(requests=stats_of.stats.calls, retries=stats_of.stats.retries, gave_up=stats_of.stats.gave_up)
    return out


def s3_backend(ep: S3Endpoint, connections: int) -> S3Backend:
    bucket, prefix = parse_s3_url(ep.url("bench"))
    return S3Backend(bucket, prefix, endpoint_url=ep.endpoint, max_concurrency=connections)


def bench_corpus(corpus: Path, ep: S3Endpoint, connections: int, work: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    local_dir = work / "local-repo"
    if local_dir.exists():
        shutil.rmtree(local_dir)
    rows["local"] = run_one(LocalBackend(local_dir), corpus, work, None)
    shutil.rmtree(local_dir)
    plain = RetryingBackend(s3_backend(ep, connections), RetryPolicy())
    rows["s3"] = run_one(plain, corpus, work, plain, connections)
    faulty = FaultyBackend(s3_backend(ep, connections))
    faulty.fail_every(20)
    flaky = RetryingBackend(faulty, RetryPolicy())
    rows["s3 + 1/20 faults"] = run_one(flaky, corpus, work, flaky, connections)
    rows["s3 + 1/20 faults"]["faults_injected"] = len(faulty.fired)
    return rows


def markdown(name: str, rows: dict[str, Any], connections: int) -> str:
    local = rows["local"]
    out = [f"corpus {name}: {local['raw_bytes'] / 2**20:.1f} MiB, S3 connections {connections}", "",
           "| backend | backup s | backup MB/s | × local | restore s | restore MB/s | × local | requests | retries "
           "| identical |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, r in rows.items():
        bx, rx = r["backup_mb_s"] / local["backup_mb_s"], r["restore_mb_s"] / local["restore_mb_s"]
        out.append(f"| {label} | {r['backup_s']:.2f} | {r['backup_mb_s']:.1f} | {bx:.2f} "
                   f"| {r['restore_s']:.2f} | {r['restore_mb_s']:.1f} | {rx:.2f} "
                   f"| {r.get('requests', '')} | {r.get('retries', '')} | {'yes' if r['identical'] else 'NO'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "_work")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    results: dict[str, Any] = {}
    ok = True
    with s3_endpoint() as ep:
        if a.smoke:
            tmp = Path(tempfile.mkdtemp(prefix="wv-s3-smoke-"))
            try:
                src = tmp / "corpus" / "run"
                for i in range(3):
                    (src / f"d{i}").mkdir(parents=True)
                    (src / f"d{i}" / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024))
                    (src / f"d{i}" / "notes.txt").write_bytes(b"checkpoint notes\n" * 200)
                results["smoke"] = bench_corpus(src, ep, a.connections, tmp / "work")
            finally:
                shutil.rmtree(tmp)
        else:
            for name in a.corpus or ["minilm", "finetune-frozen"]:
                root = compare.ensure_corpus(name, a.work)
                runs = [p for p in root.iterdir() if p.is_dir()]
                corpus = runs[0] if len(runs) == 1 else root
                results[name] = bench_corpus(corpus, ep, a.connections, a.work / "s3-bench")
    for name, rows in results.items():
        print(markdown(name, rows, a.connections))
        print()
        ok = ok and all(r["identical"] for r in rows.values())
    if a.json:
        a.json.write_text(json.dumps({"connections": a.connections, "results": results}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
