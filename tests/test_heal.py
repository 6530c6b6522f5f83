"""Self-healing: damaged or missing data rewritten from a replica that `copy` filled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from test_delta import Model
from weightvault.api import Repository

OTHER = "replica password"


def _setup(tmp_path: Path) -> tuple[Repository, Repository, Path]:
    primary = Repository.init(tmp_path / "primary", PASSWORD, kdf=FAST_KDF)
    src = tmp_path / "run"
    model = Model(layers=2)
    for _ in range(3):
        model.step()
        model.save(src / "model.safetensors")
        write(src / "notes.txt", os.urandom(3000))
        primary.backup([src])
    replica = Repository.init(tmp_path / "replica", OTHER, kdf=FAST_KDF)
    primary.copy_to(replica)
    return primary, replica, src


def _packs(path: Path) -> list[Path]:
    return sorted((p for p in (path / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_a_corrupted_pack_is_repaired_from_the_replica(tmp_path: Path, isolated_home: Path) -> None:
    primary, replica, src = _setup(tmp_path)
    pack = _packs(tmp_path / "primary")[-1]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    assert not primary.check(read_data=True).ok
    res = primary.heal_from(replica)
    assert res.damaged and res.repaired and res.ok and res.packs_written >= 1
    assert set(res.repaired) <= set(res.damaged)
    fresh = Repository.open(tmp_path / "primary", PASSWORD)
    assert fresh.check().ok
    fresh.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    fresh.prune()  # the damaged pack's bytes go; everything still restores
    assert fresh.check(read_data=True).ok
    journal = isolated_home / ".local" / "state" / "weightvault" / "journal.jsonl"
    rec = [json.loads(x) for x in journal.read_text().splitlines() if '"repair"' in x][-1]
    assert rec["ok"] and rec["repaired"] == len(res.repaired)


def test_a_lost_pack_is_rewritten(tmp_path: Path, isolated_home: Path) -> None:
    _primary, replica, src = _setup(tmp_path)
    _packs(tmp_path / "primary")[-1].unlink()
    res = Repository.open(tmp_path / "primary", PASSWORD).heal_from(replica)
    assert res.repaired and res.ok
    fresh = Repository.open(tmp_path / "primary", PASSWORD)
    for snap in fresh.snapshots():
        fresh.restore(snap.id, tmp_path / f"out-{snap.short_id}", verify=True)
    assert tree_digest(tmp_path / f"out-{fresh.snapshots()[-1].short_id}" / "run") == tree_digest(src)


def test_without_a_copy_in_the_replica_the_damage_is_reported(tmp_path: Path, isolated_home: Path) -> None:
    primary = Repository.init(tmp_path / "primary", PASSWORD, kdf=FAST_KDF)
    write(tmp_path / "run" / "a.bin", os.urandom(100_000))
    primary.backup([tmp_path / "run"])
    replica = Repository.init(tmp_path / "replica", OTHER, kdf=FAST_KDF)  # never copied into
    pack = _packs(tmp_path / "primary")[-1]
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    res = primary.heal_from(replica)
    assert res.damaged and not res.repaired and not res.ok
    assert "no copy" in res.unrepaired[0][1]


def test_cli_check_repair_from(tmp_path: Path) -> None:
    _primary, _replica, _src = _setup(tmp_path)
    pack = _packs(tmp_path / "primary")[-1]
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x01
    pack.write_bytes(bytes(data))
    (tmp_path / "replica.pw").write_text(OTHER + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))
    base = [sys.executable, "-m", "weightvault", "-r", str(tmp_path / "primary"), "check"]
    assert subprocess.run([*base, "--read-data"], env=env, capture_output=True, timeout=120).returncode == 5
    out = subprocess.run([*base, "--repair-from", str(tmp_path / "replica"), "--from-password-file",
                          str(tmp_path / "replica.pw")], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rewritten from the replica" in out.stdout and "no problems found" in out.stdout


def test_restore_heals_from_the_replica_on_the_way(tmp_path: Path, isolated_home: Path) -> None:
    _primary, replica, src = _setup(tmp_path)
    pack = _packs(tmp_path / "primary")[-1]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    res = Repository.open(tmp_path / "primary", PASSWORD).restore("latest", tmp_path / "out", verify=True,
                                                                   repair_from=replica)
    assert res.verified == res.files > 0  # RestoreResult.errors is gone: a failed file fails the restore
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    ops = [r["op"] for r in Repository.open(tmp_path / "primary", PASSWORD).ledger()]
    assert "repair" in ops and ops[-1] == "restore"


def test_a_lost_manifest_is_rebuilt_from_the_replicas_copy(tmp_path: Path, isolated_home: Path) -> None:
    """The pack holding snapshots' TREE blobs damaged: the manifests are rebuilt from the copies'
    (blob ids mapped back through the replica's plaintext) and accepted because they hash to the
    very TREE blob ids the snapshots name."""
    primary, replica, src = _setup(tmp_path)
    snap = primary.find_snapshot("latest")
    entry = primary._repo.index.get(snap.tree[0])
    assert entry is not None
    pack = next(p for p in _packs(tmp_path / "primary") if p.name == entry.pack_id)
    data = bytearray(pack.read_bytes())
    data[entry.blob.offset + entry.blob.length // 2] ^= 0xFF  # inside the manifest's envelope
    pack.write_bytes(bytes(data))
    fresh = Repository.open(tmp_path / "primary", PASSWORD)
    assert not fresh.check(read_data=True).ok
    res = fresh.heal_from(replica)
    assert res.ok, res.unrepaired
    assert snap.tree[0].hex() in res.repaired
    healed = Repository.open(tmp_path / "primary", PASSWORD)
    assert healed.check(read_data=True).ok
    for s in healed.snapshots():
        healed.restore(s.id, tmp_path / f"out-{s.short_id}", verify=True)
    assert tree_digest(tmp_path / f"out-{snap.short_id}" / "run") == tree_digest(src)


def test_a_pack_whose_header_no_longer_reads_is_rewritten(tmp_path: Path, isolated_home: Path) -> None:
    """Its blobs still read through the index, but the pack is damaged: heal moves them into a new
    pack and deletes it, so check is clean again."""
    _primary, replica, src = _setup(tmp_path)
    pack = _packs(tmp_path / "primary")[-1]
    data = bytearray(pack.read_bytes())
    data[-2] ^= 0x80  # the trailer's magic
    pack.write_bytes(bytes(data))
    fresh = Repository.open(tmp_path / "primary", PASSWORD)
    assert any("header unreadable" in e for e in fresh.check().errors)
    res = fresh.heal_from(replica)
    assert res.ok and res.rewritten_packs == [pack.name] and res.packs_written >= 1 and not pack.exists()
    healed = Repository.open(tmp_path / "primary", PASSWORD)
    assert healed.check(read_data=True).ok
    healed.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)


def test_a_heal_stopped_after_its_new_packs_and_index_is_finished_by_the_next(tmp_path: Path,
                                                                             isolated_home: Path) -> None:
    """Found by the crash-point campaign: killed after writing the repaired blobs' pack and its
    index but before rewriting the index without the lost pack, a heal left that pack named in
    the index; the next heal found every blob readable and did nothing, and `check` kept failing."""
    from weightvault import api
    from weightvault.backends.base import FileType
    from weightvault.backends.local import LocalBackend
    from weightvault.errors import BackendError
    from weightvault.testing.faults import FaultyBackend, backend_error

    _primary, replica, src = _setup(tmp_path)
    lost = _packs(tmp_path / "primary")[-1]
    lost.unlink()
    faulty = FaultyBackend(LocalBackend(str(tmp_path / "primary")))
    faulty.fail("save", nth=2, ftype=FileType.INDEX, error=backend_error)  # the index rewrite
    try:
        api.open_repository_on(faulty, PASSWORD).heal_from(replica)
    except BackendError:
        pass
    else:
        raise AssertionError("the injected failure did not fire")
    stopped = Repository.open(tmp_path / "primary", PASSWORD)
    stopped.unlock()
    assert not stopped.check(read_data=True).ok  # the lost pack is still in the index
    res = stopped.heal_from(replica)
    assert res.ok and res.dropped_packs == [lost.name]  # unindexed (its blobs may be rewritten once more)
    fresh = Repository.open(tmp_path / "primary", PASSWORD)
    assert fresh.check(read_data=True).ok
    fresh.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
