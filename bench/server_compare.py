"""The repository server vs the same disk directly (weightvault only).

In one run, for each corpus: back up and restore (verified, fsynced) into

1. ``local``: a repository directory on this disk;
2. ``server``: the same through a real ``weightvault serve`` process on 127.0.0.1 over TLS (its
   repositories on the same disk), as an ``append`` user for the backup and a ``read`` user for
   the restore;

then, through the server: requests per second for small objects (4 KiB create-only puts, then
gets, from 8 threads), and the server's peak RSS while 8 clients back up at once. Medians of
``--runs`` where times are compared. Client and server share the machine's cores, so this is the
price of the protocol, TLS and the audit log on one host, not of a network.

    .venv/bin/python bench/server_compare.py [--corpus finetune-frozen] [--runs 3]
    .venv/bin/python bench/server_compare.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare

from weightvault.api import KdfParams, Repository
from weightvault.backends.base import FileType
from weightvault.backends.http import HttpBackend
from weightvault.testing.repo_server import RepoServer, repo_server

PASSWORD = "server-bench"  # noqa: S105 - a throwaway benchmark repository
FAST = KdfParams(memory_kib=8192, time_cost=1, parallelism=1)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _as(srv: RepoServer, token: str) -> None:
    os.environ["WEIGHTVAULT_SERVER_TOKEN"] = token
    os.environ["WEIGHTVAULT_SERVER_CA"] = str(srv.ca)


def one(location: str, corpus: Path, work: Path, srv: RepoServer | None, tokens: dict[str, str]) -> dict[str, Any]:
    if srv:
        _as(srv, tokens["admin"])
    Repository.init(location, PASSWORD, kdf=FAST)
    if srv:
        _as(srv, tokens["append"])
    compare.warm(corpus)
    t = time.perf_counter()
    snap = Repository.open(location, PASSWORD).backup([corpus]).snapshot
    backup_s = time.perf_counter() - t
    if srv:
        _as(srv, tokens["read"])
    target = work / "restore"
    shutil.rmtree(target, ignore_errors=True)
    t = time.perf_counter()
    Repository.open(location, PASSWORD).restore(snap.id, target, verify=True)
    restore_s = time.perf_counter() - t
    identical = compare.compare_trees(corpus, target / corpus.name)["identical"]
    shutil.rmtree(target)
    return {"backup_s": backup_s, "restore_s": restore_s, "identical": identical}


def small_objects(srv: RepoServer, token: str, n: int) -> dict[str, float]:
    b = HttpBackend(srv.url("small"), token=token, ca_file=str(srv.ca))
    b.create()
    names = [os.urandom(32).hex() for _ in range(n)]
    data = os.urandom(4096)

    def run(fn: Any) -> float:
        chunks = [names[i::8] for i in range(8)]
        threads = [threading.Thread(target=lambda c=c: [fn(x) for x in c]) for c in chunks]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return n / (time.perf_counter() - t)

    put = run(lambda x: b.save(FileType.SNAPSHOT, x, data, create_only=True))
    get = run(lambda x: b.load(FileType.SNAPSHOT, x))
    return {"put_per_s": put, "get_per_s": get}


def eight_clients(srv: RepoServer, tokens: dict[str, str], corpus: Path) -> dict[str, Any]:
    url = srv.url("eight")
    _as(srv, tokens["admin"])
    Repository.init(url, PASSWORD, kdf=FAST)
    _as(srv, tokens["append"])
    errors: list[BaseException] = []

    def client() -> None:
        try:
            Repository.open(url, PASSWORD).backup([corpus])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"seconds": time.perf_counter() - t, "errors": [str(e) for e in errors],
            "server_peak_rss_mib": _peak_rss_mib(srv.process.pid)}


def bench(corpus: Path, work: Path, runs: int, small: int) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {"local": [], "server": []}
    with repo_server(work / "srv") as srv:
        tokens = {r: srv.add_user(f"{r}-bench", {"*": r}) for r in ("read", "append", "admin")}
        for i in range(runs):  # alternate, so drift hits both alike
            rows["local"].append(one(str(work / f"local-{i}"), corpus, work, None, tokens))
            rows["server"].append(one(srv.url(f"bench-{i}"), corpus, work, srv, tokens))
            shutil.rmtree(work / f"local-{i}")
        out: dict[str, Any] = {"raw_bytes": compare.dir_bytes(corpus), "runs": rows,
                               "small_objects": small_objects(srv, tokens["admin"], small),
                               "eight_clients": eight_clients(srv, tokens, corpus)}
        out["server_peak_rss_mib"] = _peak_rss_mib(srv.process.pid)
    return out


def markdown(name: str, r: dict[str, Any]) -> str:
    raw = r["raw_bytes"]

    def med(tool: str, key: str) -> float:
        return statistics.median(x[key] for x in r["runs"][tool])

    lines = [f"corpus {name}: {raw / 2**20:.1f} MiB, medians of {len(r['runs']['local'])}", "",
             "| path | backup s | backup MB/s | restore s | restore MB/s | identical |",
             "|---|---:|---:|---:|---:|---|"]
    for tool in ("local", "server"):
        b, s = med(tool, "backup_s"), med(tool, "restore_s")
        ident = all(x["identical"] for x in r["runs"][tool])
        lines.append(f"| {tool} | {b:.2f} | {raw / 1e6 / b:.1f} | {s:.2f} | {raw / 1e6 / s:.1f} |"
                     f" {'yes' if ident else 'NO'} |")
    bx = med("local", "backup_s") / med("server", "backup_s")
    rx = med("local", "restore_s") / med("server", "restore_s")
    so, e8 = r["small_objects"], r["eight_clients"]
    lines += ["", f"server / local speed: backup {bx:.2f}x, restore {rx:.2f}x; small objects (4 KiB, 8 threads):"
              f" {so['put_per_s']:.0f} puts/s, {so['get_per_s']:.0f} gets/s; 8 clients backing up at once:"
              f" {e8['seconds']:.1f} s, errors {len(e8['errors'])}; server peak RSS {r['server_peak_rss_mib']:.0f} MiB"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--small", type=int, default=2000, help="small objects to put and get")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "_work")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="wv-server-bench-"))
    try:
        if a.smoke:
            src = tmp / "corpus" / "run"
            for i in range(2):
                (src / f"d{i}").mkdir(parents=True)
                (src / f"d{i}" / "blob.bin").write_bytes(os.urandom(2 * 1024 * 1024))
                (src / f"d{i}" / "notes.txt").write_bytes(b"checkpoint notes\n" * 200)
            results["smoke"] = bench(src, tmp / "work", 1, 100)
        else:
            for name in a.corpus or ["finetune-frozen"]:
                root = compare.ensure_corpus(name, a.work)
                runs = [p for p in root.iterdir() if p.is_dir()]
                corpus = runs[0] if len(runs) == 1 else root
                results[name] = bench(corpus, tmp / name, a.runs, a.small)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = True
    for name, r in results.items():
        print(markdown(name, r))
        print()
        ok = ok and all(x["identical"] for rs in r["runs"].values() for x in rs) and not r["eight_clients"]["errors"]
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
