"""The ledger: every operation recorded in the repository, hash-chained, tampering detected."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository


def _ops(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "run"
    write(src / "a.bin", os.urandom(20_000))
    first = repo.backup([src]).snapshot.id
    write(src / "a.bin", os.urandom(20_000))
    repo.backup([src])
    repo.restore("latest", tmp_path / "out", verify=True)
    repo.verify("latest")
    repo.forget([first], prune=True)


def test_operations_are_recorded_and_the_chain_verifies(repo: Repository, tmp_path: Path, isolated_home: Path) -> None:
    _ops(repo, tmp_path)
    records = repo.ledger()
    assert [r["op"] for r in records] == ["backup", "backup", "restore", "verify", "forget"]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4] and records[0]["prev"] is None
    assert all(r["ok"] and "@" in r["operator"] and r["duration_s"] >= 0 for r in records)
    assert records[2]["target"] == str(tmp_path / "out") and records[0]["source"] == str(tmp_path / "run")
    assert repo.ledger(op="backup")[1]["snapshots"] == [repo.snapshots()[-1].id]
    check = repo.verify_ledger()
    assert check.ok and check.records == 5
    # the catalog caches, the repository copy is authoritative: a second client sees everything
    other = Repository.open(repo.location, PASSWORD)
    assert [r["seq"] for r in other.ledger(since=records[2]["time"])] == [2, 3, 4]


def test_failures_are_recorded(repo: Repository, repo_path: Path, tmp_path: Path, isolated_home: Path) -> None:
    write(tmp_path / "run" / "a.bin", os.urandom(20_000))
    repo.backup([tmp_path / "run"])
    pack = max((p for p in (repo_path / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[40] ^= 1
    pack.write_bytes(bytes(data))
    assert not Repository.open(repo_path, PASSWORD).verify("latest").ok
    last = repo.ledger()[-1]
    assert last["op"] == "verify" and last["ok"] is False and "damaged" in last["detail"]


def test_deleting_or_editing_a_record_is_detected(repo: Repository, repo_path: Path, tmp_path: Path,
                                                   isolated_home: Path) -> None:
    _ops(repo, tmp_path)
    ledger = sorted((repo_path / "ledger").iterdir())
    (ledger[2]).unlink()  # delete a record in the middle
    res = repo.verify_ledger()
    assert not res.ok and any("missing" in p for p in res.problems)
    # replace a record by another one (a valid record moved into its place) -> detected too
    (ledger[3]).rename(ledger[2])
    res = repo.verify_ledger()
    assert not res.ok and any("moved or renamed" in p or "missing" in p for p in res.problems)


def test_a_record_rewritten_with_a_foreign_key_is_detected(repo: Repository, repo_path: Path, tmp_path: Path,
                                                           isolated_home: Path) -> None:
    _ops(repo, tmp_path)
    other = Repository.init(tmp_path / "other", PASSWORD, kdf=FAST_KDF)
    _ops(other, tmp_path / "o")
    target = sorted((repo_path / "ledger").iterdir())[1]
    target.write_bytes(sorted((tmp_path / "other" / "ledger").iterdir())[1].read_bytes())
    res = repo.verify_ledger()
    assert not res.ok and any("record 0000000000000001" in p for p in res.problems)


def test_a_removed_tail_is_detected_by_a_client_that_saw_it(repo: Repository, repo_path: Path, tmp_path: Path,
                                                             isolated_home: Path) -> None:
    _ops(repo, tmp_path)
    assert len(repo.ledger()) == 5  # this client's catalog has seen records 0..4
    sorted((repo_path / "ledger").iterdir())[-1].unlink()
    res = repo.verify_ledger()
    assert not res.ok and any("end of the ledger was removed" in p for p in res.problems)


def test_concurrent_appends_do_not_fork_the_chain(repo: Repository, tmp_path: Path, isolated_home: Path) -> None:
    for i in range(4):
        write(tmp_path / f"s{i}" / "x.bin", os.urandom(5000))

    def work(i: int) -> None:
        Repository.open(repo.location, PASSWORD).backup([tmp_path / f"s{i}"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res = repo.verify_ledger()
    assert res.ok and res.records == 4


def test_cli_ledger(tmp_path: Path, repo: Repository, repo_path: Path) -> None:
    _ops(repo, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))

    def wv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), *args], env=env,
                              capture_output=True, text=True, timeout=120)

    assert [r["op"] for r in json.loads(wv("ledger", "--json").stdout)] == ["backup", "backup", "restore", "verify",
                                                                              "forget"]
    rows = list(csv.reader(io.StringIO(wv("ledger", "--csv", "--op", "backup").stdout)))
    assert rows[0][0] == "seq" and len(rows) == 3
    assert "chain intact" in wv("ledger", "verify").stdout
    sorted((repo_path / "ledger").iterdir())[0].unlink()
    bad = wv("ledger", "verify")
    assert bad.returncode == 4 and "missing" in bad.stdout


def test_a_callers_own_records_are_chained_and_cannot_pose_as_the_engines(
        repo: Repository, tmp_path: Path, isolated_home: Path) -> None:
    import pytest

    from weightvault.errors import UsageError

    write(tmp_path / "src" / "a.bin", b"x" * 1000)
    repo.backup([tmp_path / "src"])
    repo.record("failover", ok=True, detail="failover (us): eu unhealthy", source="eu=100", target="us=100",
                duration_s=2.5)
    for bad in ("backup", "restore", "Failover", "fail over", "", "x" * 41):
        with pytest.raises(UsageError):
            repo.record(bad)
    recs = repo.ledger()
    assert [r["op"] for r in recs] == ["backup", "failover"]
    assert recs[1]["duration_s"] == pytest.approx(2.5, abs=0.01) and recs[1]["target"] == "us=100"
    assert repo.verify_ledger().ok and repo.ledger(op="failover") == [recs[1]]


def test_check_verifies_the_ledger_chain_and_the_key_file_names(repo: Repository, tmp_path: Path,
                                                                isolated_home: Path) -> None:
    import shutil

    import blake3

    write(tmp_path / "src" / "a.bin", b"x" * 1000)
    repo.backup([tmp_path / "src"])
    repo.backup([tmp_path / "src"])
    assert repo.check().ok
    root = Path(repo.location)
    rec = sorted((root / "ledger").iterdir())[0]
    good = rec.read_bytes()
    rec.write_bytes(good[:40] + bytes([good[40] ^ 1]) + good[41:])  # one bit of record 0
    res = repo.check()
    assert not res.ok and any(e.startswith("ledger: record 0000000000000000") for e in res.errors), res.errors
    rec.write_bytes(good)
    assert repo.check().ok
    key = next((root / "keys").iterdir())
    raw = key.read_bytes()
    assert blake3.blake3(raw).hexdigest() == key.name
    shutil.copy(key, root / "keys" / ("0" * 64))  # a key file under a name that is not its hash
    res = repo.check()
    assert not res.ok and any(e.startswith(f"key file {'0' * 64}: its content no longer matches") for e in res.errors)


def test_check_warns_of_a_snapshot_the_ledger_made_that_is_gone_without_a_forget(
        repo: Repository, tmp_path: Path, isolated_home: Path) -> None:
    write(tmp_path / "src" / "a.bin", b"x" * 1000)
    first = repo.backup([tmp_path / "src"]).snapshot
    write(tmp_path / "src" / "b.bin", b"y" * 1000)
    second = repo.backup([tmp_path / "src"]).snapshot
    repo.forget([first.id])  # recorded: no warning for it
    res = repo.check()
    assert res.ok and not [w for w in res.warnings if "is gone" in w], res.warnings
    (Path(repo.location) / "snapshots" / second.id).unlink()  # behind the tool's back
    res = repo.check()
    gone = [w for w in res.warnings if "is gone" in w]
    assert len(gone) == 1 and gone[0].startswith(f"snapshot {second.id[:8]}, made by ledger record 1 (backup")


def test_check_notices_a_removed_ledger_end_it_saw_here_but_not_a_lagging_mirror(
        repo: Repository, tmp_path: Path, isolated_home: Path) -> None:
    import shutil

    write(tmp_path / "src" / "a.bin", b"x" * 1000)
    repo.backup([tmp_path / "src"])
    mirror = tmp_path / "mirror"
    shutil.copytree(repo.location, mirror)  # a mirror of the repository, taken now
    repo.backup([tmp_path / "src"])
    assert repo.check().ok  # this check saw 2 records (a third, its own, is not appended by check)
    assert Repository.open(mirror, PASSWORD).check().ok  # same id, another place: it lags, it is not damaged
    sorted((Path(repo.location) / "ledger").iterdir())[-1].unlink()  # the end removed
    res = repo.check()
    assert not res.ok and any("the end of the ledger was removed, from record 1 (ledger/0000000000000001)" in e
                              for e in res.errors), res.errors
