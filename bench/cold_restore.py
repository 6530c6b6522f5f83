"""What a restore from cold storage asks for and costs (weightvault only, moto's S3 on 127.0.0.1).

For each corpus: back up into a repository whose data packs go to ``--storage-class`` (GLACIER or
DEEP_ARCHIVE; trees, index, snapshots and keys stay STANDARD), then for the newest snapshot:

* the packs and bytes a restore must thaw, for the whole snapshot and for one file of it
  (``--include``; default the largest ``*.safetensors``), with the retrieval cost of each tier
  at AWS's published per-GB prices (``ops/thaw.py: RETRIEVAL``);
* the requests the thaw makes (a HEAD per pack, a RestoreObject per offline pack) and its time;
* the restore after the thaw, fsynced and verified, compared with the source.

moto restores at once, so the hours a real retrieval takes are AWS's published ones, not
measured here.

    .venv/bin/python bench/cold_restore.py --corpus finetune-frozen
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare

from weightvault.api import Repository, RetryPolicy, StorageOptions
from weightvault.codec.crypto import KdfParams
from weightvault.ops.thaw import RETRIEVAL, TIERS
from weightvault.testing.s3server import s3_endpoint

PASSWORD = b"cold-bench"  # a throwaway repository on a throwaway server
FAST = KdfParams(memory_kib=8192, time_cost=1, parallelism=1)


def _largest_model(corpus: Path) -> str:
    files = sorted(corpus.rglob("*.safetensors"), key=lambda p: p.stat().st_size)
    return str(files[-1].relative_to(corpus.parent)) if files else "*"


def bench(corpus: Path, storage_class: str, work: Path, endpoint: Any) -> dict[str, Any]:
    storage = StorageOptions(s3_endpoint=endpoint.endpoint, s3_storage_class=storage_class, retry=RetryPolicy())
    url = endpoint.url("cold-bench")
    repo = Repository.init(url, PASSWORD, kdf=FAST, storage=storage)
    t = time.perf_counter()
    snap = repo.backup([corpus]).snapshot
    out: dict[str, Any] = {"raw_bytes": compare.dir_bytes(corpus), "backup_s": time.perf_counter() - t,
                           "storage_class": storage_class, "snapshot": snap.id}
    one = _largest_model(corpus)
    col = 1 if storage_class == "DEEP_ARCHIVE" else 0
    asked = 0  # bytes already asked for by the one-file thaw (moto restores them at once)
    for label, includes in (("one file", [one]), ("whole snapshot", None)):
        t = time.perf_counter()
        rep = repo.thaw(snap.id, includes=includes, tier="Standard")
        total = asked + rep.bytes_requested
        out[label] = {"include": includes, "packs": rep.packs, "bytes_requested": total,
                      "thaw_s": time.perf_counter() - t,
                      "requests": {"head": rep.packs, "restore_object": rep.requested},
                      "cost_usd": {tier: total / 1e9 * RETRIEVAL[tier][col] for tier in TIERS}}
        asked = total
    if not repo.thaw(snap.id).ready:
        raise SystemExit("moto did not restore the requested packs")
    target = work / "cold-restore"
    shutil.rmtree(target, ignore_errors=True)
    t = time.perf_counter()
    repo.restore(snap.id, target, verify=True)
    out["restore_s"] = time.perf_counter() - t
    out["identical"] = compare.compare_trees(corpus, target / corpus.name)["identical"]
    shutil.rmtree(target)
    return out


def markdown(name: str, r: dict[str, Any]) -> str:
    lines = [f"corpus {name}: {r['raw_bytes'] / 1e9:.2f} GB, data packs in {r['storage_class']}; restore after the"
             f" thaw {r['restore_s']:.1f} s, identical: {'yes' if r['identical'] else 'NO'}", "",
             "| restore of | packs to thaw | bytes to retrieve | requests of this call (HEAD / RestoreObject) | "
             + " | ".join(f"{t} USD" for t in TIERS) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(TIERS)]
    for label in ("one file", "whole snapshot"):
        x = r[label]
        calls = x["requests"]
        lines.append(f"| {label} | {x['packs']} | {x['bytes_requested'] / 1e9:.3f} GB | {calls['head']} / "
                     f"{calls['restore_object']} "
                     "| " + " | ".join("n/a" if r["storage_class"] == "DEEP_ARCHIVE" and t == "Expedited"
                                        else f"{x['cost_usd'][t]:.4f}" for t in TIERS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append")
    ap.add_argument("--storage-class", default="DEEP_ARCHIVE", choices=["GLACIER", "DEEP_ARCHIVE"])
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "_work")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    results = {}
    with s3_endpoint() as ep:
        for name in a.corpus or ["finetune-frozen"]:
            root = compare.ensure_corpus(name, a.work)
            runs = [p for p in root.iterdir() if p.is_dir()]
            results[name] = bench(runs[0] if len(runs) == 1 else root, a.storage_class, a.work, ep)
            print(markdown(name, results[name]) + "\n")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(r["identical"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

