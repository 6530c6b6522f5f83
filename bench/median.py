#!/usr/bin/env python3
"""Medians of repeated side-by-side runs, and each time as a fraction of the machine's limit.

    .venv/bin/python bench/median.py [--runs 3] [--corpus NAME ...] [--work DIR] [--out DIR] [--reuse]

Runs ``bench/compare.py`` ``--runs`` times over the same corpora (each run: every tool, side by
side, in a fresh repository each), each run followed by ``bench/roofline.py`` per corpus, and prints a
markdown table per corpus: for every tool the median backup seconds, restore seconds (and restore
plus ``sync``), stored bytes and peak RSS; the median over runs of weightvault's speed ratio
against restic and borg (each ratio taken within one run, where the tools ran side by side); and
each time as a fraction of the roofline limit measured right after it, in the same run (limit /
time: 100 % would be the machine's best possible; the median over runs, with its range: the disks
of these machines vary by half from one minute to the next). The raw JSON of every run and of
every roofline lies under ``--out``.

A ratio's run-to-run spread is printed as min-max next to the median, so noise is visible.
The roofline's restore limit takes its write stage from a fresh ext4 loop device, the kind of file
system every restore here lands on (``bench/roofline.py --restore-target fresh``). ``--reuse``
prints the tables from the run JSONs already under ``--out`` (the roofline is measured again).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_CORPORA = ("finetune-full", "finetune-full-20", "finetune-frozen", "finetune-frozen-20")
TOOLS = ("weightvault", "restic", "borg")


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for i in range(args.runs):
        path = args.out / f"run-{i + 1}.json"
        if not args.reuse:
            cmd = [sys.executable, str(HERE / "compare.py"), "--work", str(args.work), "--json", str(path)]
            for c in args.corpus:
                cmd += ["--corpus", c]
            print(f"run {i + 1}/{args.runs}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
        run = json.loads(path.read_text())
        if not args.no_roofline:
            run["limits"] = {c: _roofline(args, c, i + 1) for c in args.corpus if c in run["corpora"]}
        out.append(run)
    return out


def _roofline(args: argparse.Namespace, corpus: str, run: int) -> dict[str, Any]:
    """The roofline of ``corpus`` after run ``run`` (measured now, or read back with ``--reuse``)."""
    path = args.out / f"roofline-{corpus}-run{run}.json"
    if not (args.reuse and path.exists()):
        subprocess.run([sys.executable, str(HERE / "roofline.py"), "--corpus", str(args.work / "corpora" / corpus),
                        "--work", str(args.work), "--json", str(path), "--restore-target", "fresh",
                        "--write-mb", "512"], check=True, stdout=subprocess.DEVNULL)
    doc = json.loads(path.read_text())
    limit: dict[str, Any] = doc["limit"]
    limit["target_write"] = doc["rates_bytes_per_s"].get("target_write")
    return limit


def _ratio_cells(per_run: list[dict[str, Any]], key: str) -> str:
    """Median over runs of weightvault's speed over the peer's for ``key`` seconds."""
    vals = [r["peer"][key] / r["wv"][key] for r in per_run if r["wv"].get(key) and r["peer"].get(key)]
    if not vals:
        return "-"
    return f"{_med(vals):.2f}x ({min(vals):.2f}-{max(vals):.2f})"


def _fraction(runs: list[dict[str, Any]], corpus: str, tool: str, step: str) -> str:
    """Median over runs of (that run's limit / that run's time), with its range."""
    vals = [r["limits"][corpus][f"{step}_limit_s"] / r["corpora"][corpus]["tools"][tool][f"{step}_s"] for r in runs]
    return f"{_med(vals):.0%} ({min(vals):.0%}-{max(vals):.0%})"


def _limit_line(runs: list[dict[str, Any]], corpus: str) -> str:
    lims = [r["limits"][corpus] for r in runs]

    def span(key: str, scale: float = 1.0) -> str:
        vals = [x[key] * scale for x in lims if x.get(key)]
        return f"{_med(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})" if vals else "-"

    return (f"Roofline limit on {lims[0]['cores']} cores, measured after each run: backup {span('backup_limit_s')} s,"
            f" restore {span('restore_limit_s')} s (`bench/roofline.py`; restored files written and flushed at"
            f" {span('target_write', 1e-9)} GB/s, the fresh target's best way).")


def table(corpus: str, runs: list[dict[str, Any]]) -> list[str]:
    tools = [t for t in TOOLS if all("backup_s" in r["corpora"][corpus]["tools"].get(t, {}) for r in runs)]
    rows: dict[str, dict[str, float]] = {}
    for t in tools:
        recs = [r["corpora"][corpus]["tools"][t] for r in runs]
        rows[t] = {
            "backup_s": _med([x["backup_s"] for x in recs]),
            "restore_s": _med([x["restore_s"] for x in recs]),
            "restore_sync_s": _med([x["restore_s"] + x.get("restore_sync_s", 0.0) for x in recs]),
            "stored": _med([x["stored_bytes"] for x in recs]),
            "rss": _med([x["peak_rss_kib"] for x in recs]),
        }
    raw = runs[0]["corpora"][corpus]["raw_bytes"]
    limit = all(corpus in r.get("limits", {}) for r in runs)
    lines = [f"### {corpus} ({raw / 1e9:.2f} GB, medians of {len(runs)} runs)", "",
             "| tool | backup s | restore s | restore + sync s | stored MB (of raw) | peak RSS MiB |"
             + (" backup / limit | restore / limit |" if limit else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if limit else "")]
    for t, v in rows.items():
        cells = [f"{v['backup_s']:.2f}", f"{v['restore_s']:.2f}", f"{v['restore_sync_s']:.2f}",
                 f"{v['stored'] / 1e6:.0f} ({v['stored'] / raw:.3f})", f"{v['rss'] / 1024:.0f}"]
        if limit:
            cells += [_fraction(runs, corpus, t, "backup"), _fraction(runs, corpus, t, "restore")]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if limit:
        lines += ["", _limit_line(runs, corpus)]
    lines += ["", "| weightvault vs | backup speed | restore speed | restore speed vs peer + sync | stored |",
              "|---|---:|---:|---:|---:|"]
    for peer in tools:
        if peer == "weightvault":
            continue
        per_run = [{"wv": r["corpora"][corpus]["tools"]["weightvault"], "peer": r["corpora"][corpus]["tools"][peer]}
                   for r in runs]
        for pr in per_run:
            synced = pr["peer"]["restore_s"] + pr["peer"].get("restore_sync_s", 0.0)
            pr["peer"] = {**pr["peer"], "restore_sync_s": synced}
            pr["wv"] = {**pr["wv"], "restore_sync_s": pr["wv"]["restore_s"]}
        stored = _med([pr["wv"]["stored_bytes"] / pr["peer"]["stored_bytes"] for pr in per_run])
        lines.append(f"| {peer} | {_ratio_cells(per_run, 'backup_s')} | {_ratio_cells(per_run, 'restore_s')} | "
                     f"{_ratio_cells(per_run, 'restore_sync_s')} | {stored:.3f}x |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--corpus", action="append", help="corpus to run (repeatable; default: the checkpoint series)")
    ap.add_argument("--work", type=Path, default=HERE / "_work")
    ap.add_argument("--out", type=Path, default=HERE / "_work" / "median")
    ap.add_argument("--no-roofline", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="tables from the run JSONs under --out, no new runs")
    args = ap.parse_args()
    args.corpus = args.corpus or list(DEFAULT_CORPORA)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = _runs(args)
    for corpus in args.corpus:
        if corpus not in runs[0]["corpora"]:
            print(f"{corpus}: skipped in the runs", file=sys.stderr)
            continue
        print("\n".join(table(corpus, runs)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
