"""Retention and replication side by side: forget + prune, and copy, for weightvault, restic, borg.

On a checkpoint-series corpus (default ``finetune-full``: 8 real MiniLM checkpoints), each tool
backs up the run directory once per checkpoint (as a training loop would), the directory keeping
only its 2 newest checkpoints (``save_total_limit=2``), then:

1. **forget + prune** keeping the 2 newest snapshots: ``weightvault forget --keep-last 2 --prune``,
   ``restic forget --keep-last 2 --prune``, ``borg prune --keep-last 2`` + ``borg compact``;
   timed, with stored bytes before and after. The newest snapshot is then restored and compared
   byte for byte with the run directory (prune must keep every delta base its checkpoints need,
   so weightvault's deltas keep some bytes of forgotten checkpoints alive).
2. **copy** everything left to a fresh repository with another password: ``weightvault copy``,
   ``restic copy --from-repo`` (borg 1.x has no copy); timed, with the destination's bytes, and
   the copy restored and compared too.

    .venv/bin/python bench/lifecycle.py                     # finetune-full
    .venv/bin/python bench/lifecycle.py --smoke --json out.json   # tiny synthetic series (CI)

Timings are wall seconds of each tool's process (fsyncs included), after ``os.sync()``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare
import delta_chain

MIB = 1024 * 1024
OTHER_PASSWORD = "lifecycle-copy-destination"  # noqa: S105 (a throwaway benchmark repository)


def _forget_prune(tool: compare.Tool) -> list[list[str]]:
    if isinstance(tool, compare.Weightvault):
        return [[*compare._weightvault_argv(), "-q", "-r", str(tool.repo), "forget", "--keep-last", "2",
                 "--group-by", "", "--prune"]]
    if isinstance(tool, compare.Restic):
        return [[*tool._base(), "forget", "--keep-last", "2", "--group-by", "", "--prune"]]
    return [["borg", "prune", "--keep-last", "2", str(tool.repo)], ["borg", "compact", str(tool.repo)]]


def _copy(tool: compare.Tool, dest: Path) -> tuple[list[list[str]], dict[str, str]]:
    env = dict(tool.env)
    if isinstance(tool, compare.Weightvault):
        env.update(WEIGHTVAULT_FROM_PASSWORD=compare.PASSWORD, WEIGHTVAULT_PASSWORD=OTHER_PASSWORD)
        wv = compare._weightvault_argv()
        return [[*wv, "-q", "-r", str(dest), "init"],
                [*wv, "-q", "-r", str(dest), "copy", "--from", str(tool.repo)]], env
    env.update(RESTIC_FROM_PASSWORD=compare.PASSWORD, RESTIC_PASSWORD=OTHER_PASSWORD)
    base = ["restic", "-r", str(dest), "--cache-dir", str(tool.cache / "dest"), "-q"]
    return [[*base, "init", "--repository-version", "2"],
            [*base, "copy", "--from-repo", str(tool.repo)]], env


def _restore_latest(tool: compare.Tool, repo: Path, env: dict[str, str], target: Path, log: Path) -> None:
    target.mkdir(parents=True)
    if isinstance(tool, compare.Weightvault):
        argv = [*compare._weightvault_argv(), "-q", "-r", str(repo), "restore", "latest", "--target", str(target)]
    elif isinstance(tool, compare.Restic):
        argv = ["restic", "-r", str(repo), "--cache-dir", str(tool.cache / "r"), "-q", "restore", "latest",
                "--target", str(target)]
    else:
        last = compare.run_timed(["borg", "list", "--last", "1", "--short", str(repo)], env, target, log)
        argv = ["borg", "extract", f"{repo}::{last.stdout.strip()}"]
    compare.run_timed(argv, env, target, log)


def bench_tool(name: str, corpus: Path, work: Path) -> dict[str, Any]:
    base = work / name
    if base.exists():
        shutil.rmtree(base)
    tool = compare.make_tool(name, base)
    tool.cache.mkdir(parents=True)
    logs, cwd = base / "logs", base / "staging"
    (cwd / corpus.name).mkdir(parents=True)
    checkpoints = compare.checkpoint_dirs(corpus)
    compare.run_timed(tool.init(), tool.env, base, logs / "init")
    run = cwd / corpus.name
    for k in range(len(checkpoints)):
        compare._stage_increment(corpus, run, checkpoints, k)
        if k >= 2:
            shutil.rmtree(run / checkpoints[k - 2])  # save_total_limit=2
        compare.run_timed(tool.backup(corpus.name, f"ck{k + 1:02d}"), tool.env, cwd, logs / f"backup-{k}")
    r: dict[str, Any] = {"snapshots": len(checkpoints), "stored_before": compare.dir_bytes(tool.repo)}
    r["prune_s"] = sum(compare.run_timed(argv, tool.env, base, logs / f"prune-{i}").seconds
                       for i, argv in enumerate(_forget_prune(tool)))
    r["stored_after"] = compare.dir_bytes(tool.repo)
    r["reclaimed"] = r["stored_before"] - r["stored_after"]
    _restore_latest(tool, tool.repo, tool.env, base / "restored", logs / "restore")
    r["restore_identical"] = compare.compare_trees(run, base / "restored" / corpus.name)["identical"]
    shutil.rmtree(base / "restored")
    if name != "borg":
        dest = base / "copy"
        argvs, env = _copy(tool, dest)
        compare.run_timed(argvs[0], env, base, logs / "copy-init")
        r["copy_s"] = compare.run_timed(argvs[1], env, base, logs / "copy").seconds
        r["copy_stored"] = compare.dir_bytes(dest)
        _restore_latest(tool, dest, env, base / "restored", logs / "copy-restore")
        r["copy_identical"] = compare.compare_trees(run, base / "restored" / corpus.name)["identical"]
    shutil.rmtree(cwd, ignore_errors=True)
    return r


def markdown(corpus: str, raw: int, rows: dict[str, dict[str, Any]]) -> str:
    lines = [f"Corpus `{corpus}`: {raw / MIB:.0f} MiB raw; one backup per checkpoint of a run directory that keeps its"
             " 2 newest checkpoints; then forget all but the 2 newest snapshots and prune.", "",
             "| tool | stored before | forget+prune s | stored after | reclaimed | newest restores identical "
             "| copy s | copy stored | copy identical |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        copy = (f"{r['copy_s']:.1f} | {r['copy_stored'] / MIB:.0f} MiB | {r['copy_identical']}" if "copy_s" in r
                else "n/a (no copy in borg 1.x) | | ")
        lines.append(f"| {name} | {r['stored_before'] / MIB:.0f} MiB | {r['prune_s']:.1f} | "
                     f"{r['stored_after'] / MIB:.0f} MiB | {r['reclaimed'] / MIB:.0f} MiB | {r['restore_identical']} "
                     f"| {copy} |")
    wv = rows.get("weightvault")
    if wv:
        lines.append("")
        for peer in ("restic", "borg"):
            if peer in rows:
                p = rows[peer]
                parts = [f"prune time {wv['prune_s'] / p['prune_s']:.2f}x",
                         f"stored after {wv['stored_after'] / p['stored_after']:.2f}x"]
                if "copy_s" in p:
                    parts += [f"copy time {wv['copy_s'] / p['copy_s']:.2f}x",
                              f"copy stored {wv['copy_stored'] / p['copy_stored']:.2f}x"]
                lines.append(f"- weightvault / {peer}: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="finetune-full")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "_work")
    ap.add_argument("--tool", action="append", help="weightvault, restic, borg (default: those installed)")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic checkpoint series")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()
    tools = a.tool or ["weightvault"] + [t for t in ("restic", "borg") if compare.tool_version(t)]
    tmp = None
    if a.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="wv-lifecycle-smoke-"))
        delta_chain.build_smoke_series(tmp / "corpus")
        corpus, work = tmp / "corpus" / "run", tmp / "work"
    else:
        corpus = compare.ensure_corpus(a.corpus, a.work)
        work = a.work / "lifecycle"
    try:
        raw = compare.dir_bytes(corpus)
        rows = {t: bench_tool(t, corpus, work) for t in tools}
        text = markdown("smoke" if a.smoke else a.corpus, raw, rows)
        print(text)
        if a.json:
            a.json.write_text(json.dumps({"corpus": a.corpus, "raw_bytes": raw, "tools": rows,
                                          "machine": compare.machine_info()}, indent=2))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
