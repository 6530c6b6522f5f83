"""What checkpoint deltas cost and save, by delta chain depth (weightvault only).

For each ``--depth`` (default 0, 4, 8; 0 disables deltas) a fresh repository is created with
``Repository.init(delta_max_depth=depth)``, the checkpoint-series corpus is backed up in one
snapshot, and three numbers are taken: stored bytes, backup seconds, restore seconds of the whole
run and of the newest checkpoint alone (the case a chain makes slowest: each of its chunks decodes
every earlier version on its chain). Every restore is compared byte for byte with the source.

    .venv/bin/python bench/delta_chain.py                       # finetune-full, depths 0 4 8
    .venv/bin/python bench/delta_chain.py --corpus finetune-frozen --depth 0 --depth 8
    .venv/bin/python bench/delta_chain.py --smoke               # tiny synthetic run (CI)

Timings are wall seconds in this process after ``os.sync()`` and a page-cache warm read of the
corpus; they include the fsyncs weightvault does. The corpora come from ``compare.py``.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare

from weightvault.api import KdfParams, Repository

PASSWORD = "delta-chain-bench"  # noqa: S105 (a throwaway benchmark repository)
MIB = 1024 * 1024


def build_smoke_series(dst: Path, checkpoints: int = 4) -> None:
    """A tiny run: ``checkpoints`` safetensors files of drifting F32 weights (a few MiB)."""
    rng = np.random.default_rng(11)
    w = rng.normal(0, 0.05, (6, 256, 512)).astype(np.float32)
    for k in range(checkpoints):
        w += (1e-4 * rng.standard_normal(w.shape)).astype(np.float32)
        meta, pos = {}, 0
        for i in range(w.shape[0]):
            n = w[i].nbytes
            meta[f"layer.{i}.weight"] = {"dtype": "F32", "shape": list(w[i].shape), "data_offsets": [pos, pos + n]}
            pos += n
        head = json.dumps(meta).encode()
        head += b" " * (-len(head) % 8)
        ck = dst / "run" / f"checkpoint-{(k + 1) * 10:05d}"
        ck.mkdir(parents=True, exist_ok=True)
        (ck / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + w.tobytes())


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def run_depth(corpus: Path, depth: int, work: Path, fast_kdf: bool) -> dict[str, Any]:
    base = work / f"depth-{depth}"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    kdf = KdfParams(memory_kib=8192, time_cost=1, parallelism=1) if fast_kdf else None
    repo = Repository.init(base / "repo", PASSWORD, kdf=kdf, delta_max_depth=depth)
    raw = compare.dir_bytes(corpus)
    compare.warm(corpus)
    os.sync()
    t = time.perf_counter()
    snap = repo.backup([corpus]).snapshot
    backup_s = time.perf_counter() - t
    stored = compare.dir_bytes(base / "repo")
    os.sync()
    t = time.perf_counter()
    repo.restore(snap.id, base / "all")
    restore_s = time.perf_counter() - t
    identical = same_tree(corpus, base / "all" / corpus.name)
    shutil.rmtree(base / "all")
    newest = compare.checkpoint_dirs(corpus)[-1]
    newest_raw = compare.dir_bytes(corpus / newest)
    os.sync()
    t = time.perf_counter()
    repo.restore(snap.id, base / "newest", includes=[f"{corpus.name}/{newest.as_posix()}/**"])
    newest_s = time.perf_counter() - t
    identical = identical and same_tree(corpus / newest, base / "newest" / corpus.name / newest)
    shutil.rmtree(base / "newest")
    shutil.rmtree(base / "repo")
    return {
        "depth": depth, "raw_bytes": raw, "stored_bytes": stored, "stored_ratio": stored / raw,
        "backup_s": backup_s, "backup_mb_s": raw / 1e6 / backup_s,
        "restore_s": restore_s, "restore_mb_s": raw / 1e6 / restore_s,
        "newest": newest.as_posix(), "newest_raw_bytes": newest_raw,
        "newest_restore_s": newest_s, "newest_restore_mb_s": newest_raw / 1e6 / newest_s,
        "identical": identical,
    }


def markdown(name: str, rows: list[dict[str, Any]]) -> str:
    out = [f"corpus {name}: {rows[0]['raw_bytes'] / MIB:.1f} MiB; newest checkpoint {rows[0]['newest']} "
           f"{rows[0]['newest_raw_bytes'] / MIB:.1f} MiB", "",
           "| delta depth | stored MiB | stored / raw | backup s | backup MB/s | restore all s | restore all MB/s "
           "| restore newest s | restore newest MB/s | identical |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['depth']} | {r['stored_bytes'] / MIB:.1f} | {r['stored_ratio']:.3f} | {r['backup_s']:.2f} "
                   f"| {r['backup_mb_s']:.1f} | {r['restore_s']:.2f} | {r['restore_mb_s']:.1f} "
                   f"| {r['newest_restore_s']:.2f} | {r['newest_restore_mb_s']:.1f} "
                   f"| {'yes' if r['identical'] else 'NO'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="finetune-full")
    ap.add_argument("--depth", type=int, action="append")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "_work")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic series, fast KDF")
    a = ap.parse_args(argv)
    depths = a.depth or [0, 4, 8]
    if a.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="wv-delta-smoke-"))
        try:
            build_smoke_series(tmp / "corpus")
            rows = [run_depth(tmp / "corpus" / "run", d, tmp / "work", fast_kdf=True) for d in depths]
        finally:
            shutil.rmtree(tmp)
        name = "smoke"
    else:
        corpus = compare.ensure_corpus(a.corpus, a.work)
        runs = [p for p in corpus.iterdir() if p.is_dir()]
        root = runs[0] if len(runs) == 1 and not compare.checkpoint_dirs(corpus) else corpus
        rows = [run_depth(root, d, a.work / "delta-chain", fast_kdf=False) for d in depths]
        name = a.corpus
    print(markdown(name, rows))
    if a.json:
        a.json.write_text(json.dumps({"corpus": name, "rows": rows}, indent=2))
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
