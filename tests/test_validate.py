"""Model validation (levels 1-3) and restore drills, on real file formats; nothing is unpickled."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import PASSWORD, write
from test_delta import safetensors_bytes
from test_splitter_gguf import LAYOUT, write_gguf
from weightvault.api import Repository
from weightvault.errors import UsageError, ValidationFailedError, WeightvaultError


def _tensors() -> dict[str, tuple[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return {"embed.weight": ("F32", rng.normal(size=(64, 32)).astype(np.float32)),
            "layer.0.weight": ("F32", rng.normal(size=(32, 48)).astype(np.float32)),
            "layer.0.bias": ("F32", rng.normal(size=(48,)).astype(np.float32))}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    src = tmp_path / "run"
    write(src / "model.safetensors", safetensors_bytes(_tensors()))
    buf = io.BytesIO()
    np.savez(buf, mean=np.arange(10, dtype=np.float32), std=np.ones((2, 5)))
    write(src / "stats.npz", buf.getvalue())
    write(src / "model.gguf", write_gguf(LAYOUT)[0])
    torch_zip = io.BytesIO()
    with zipfile.ZipFile(torch_zip, "w") as z:  # the layout torch.save writes (no pickle is ever run)
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/data/0", os.urandom(4096))
    write(src / "optimizer.pt", torch_zip.getvalue())
    write(src / "config.json", b'{"hidden": 32}')
    return src


def _restored(repo: Repository, snap: str, tmp: Path) -> Path:
    out = tmp / "restored"
    shutil.rmtree(out, ignore_errors=True)
    repo.restore(snap, out)
    return out / "run"


def _rewrite_header(path: Path, edit: dict[str, object]) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    for old, new in edit.items():
        if isinstance(new, str):
            header[new] = header.pop(old)
        else:
            header[old]["shape"] = new
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data[8 + n :])


def test_a_healthy_restore_passes_every_level(repo: Repository, run: Path, tmp_path: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    report = repo.validate(snap, _restored(repo, snap, tmp_path), level=3)
    assert report.ok, [f.problems for f in report.files]
    formats = {f.path: (f.format, f.passed) for f in report.files}
    assert formats["run/model.safetensors"] == ("safetensors", 3)
    assert formats["run/stats.npz"] == ("npz", 3)
    assert formats["run/model.gguf"] == ("gguf", 3)
    assert formats["run/optimizer.pt"] == ("torch-zip", 3)
    assert formats["run/config.json"] == (None, 1)


def test_a_flipped_byte_in_a_tensor_fails_level_1(repo: Repository, run: Path, tmp_path: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    root = _restored(repo, snap, tmp_path)
    data = bytearray((root / "model.safetensors").read_bytes())
    data[-10] ^= 0x40
    (root / "model.safetensors").write_bytes(bytes(data))
    report = repo.validate(snap, root, level=1)
    (bad,) = report.failed
    assert bad.path == "run/model.safetensors" and bad.passed == 0 and "level 1" in bad.problems[0]


def test_a_truncated_safetensors_file_fails_level_2(repo: Repository, run: Path, tmp_path: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    root = _restored(repo, snap, tmp_path)
    data = (root / "model.safetensors").read_bytes()
    (root / "model.safetensors").write_bytes(data[:-100])
    (bad,) = repo.validate(snap, root, level=2).failed
    assert any(p.startswith("level 2: safetensors:") and "outside the data section" in p for p in bad.problems)


def test_renamed_or_reshaped_tensors_fail_level_3(repo: Repository, run: Path, tmp_path: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    root = _restored(repo, snap, tmp_path)
    _rewrite_header(root / "model.safetensors", {"layer.0.bias": "layer.0.b"})
    (bad,) = repo.validate(snap, root, level=3).failed
    assert "level 3: tensor 'layer.0.bias' is missing" in bad.problems
    assert "level 3: tensor 'layer.0.b' is not in the backed-up file" in bad.problems
    assert bad.passed == 0 and not any(p.startswith("level 2") for p in bad.problems)  # still parses
    root = _restored(repo, snap, tmp_path)
    _rewrite_header(root / "model.safetensors", {"layer.0.weight": [48, 32]})
    (bad,) = repo.validate(snap, root, level=3).failed
    assert "level 3: tensor 'layer.0.weight' is F32 [48, 32], was F32 [32, 48]" in bad.problems


def test_corrupt_archives_fail_level_2(repo: Repository, run: Path, tmp_path: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    root = _restored(repo, snap, tmp_path)
    for name, at in (("stats.npz", 60), ("optimizer.pt", 200)):
        data = bytearray((root / name).read_bytes())
        data[at] ^= 0xFF  # inside a member's data
        (root / name).write_bytes(bytes(data))
    gguf = root / "model.gguf"
    gguf.write_bytes(gguf.read_bytes()[:200])
    failed = {f.path: f.problems for f in repo.validate(snap, root, level=2).failed}
    assert set(failed) == {"run/stats.npz", "run/optimizer.pt", "run/model.gguf"}
    for path, probs in failed.items():
        assert any(p.startswith("level 2") for p in probs), (path, probs)
    with pytest.raises(UsageError):
        repo.validate(snap, root, level=4)


def test_drill_passes_on_a_healthy_repository_and_records_rto(
    repo: Repository, run: Path, tmp_path: Path, isolated_home: Path
) -> None:
    repo.backup([run])
    work = tmp_path / "scratch"
    work.mkdir()
    res = repo.drill(level=3, workdir=work)
    assert res.ok and res.error is None and res.files == 5 and res.rto_s > 0 and res.report is not None
    assert list(work.iterdir()) == []  # cleaned up
    journal = isolated_home / ".local" / "state" / "weightvault" / "journal.jsonl"
    (rec,) = [json.loads(x) for x in journal.read_text().splitlines()]
    assert rec["step"] == "drill" and rec["ok"] and rec["rto_s"] > 0 and rec["snapshot"] == res.snapshot


def test_drill_on_a_corrupted_repository_fails_loudly(
    repo: Repository, repo_path: Path, run: Path, tmp_path: Path, isolated_home: Path
) -> None:
    repo.backup([run])
    pack = max((p for p in (repo_path / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[50] ^= 0xFF
    pack.write_bytes(bytes(data))
    work = tmp_path / "scratch"
    work.mkdir()
    res = Repository.open(repo_path, PASSWORD).drill(pick="random", seed=1, workdir=work)
    assert not res.ok and res.error is not None and res.error.startswith("restore failed")
    assert list(work.iterdir()) == []
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home2"))
    out = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "drill", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 9 and not json.loads(out.stdout)["ok"]
    restored = tmp_path / "r2"
    bad = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "validate", "latest",
                          str(run), "--level", "2"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 0, bad.stdout + bad.stderr  # the live source itself is fine
    (run / "model.safetensors").write_bytes(b"\x00" * 12)
    bad = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "validate", "latest",
                          str(run), "--level", "2"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 9 and "FAIL run/model.safetensors" in bad.stdout
    assert not restored.exists()


# -- restore --swap ----------------------------------------------------------------------------------
def test_swap_replaces_a_live_directory_and_keeps_a_dated_copy(repo: Repository, run: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    good = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    (run / "model.safetensors").write_bytes(b"half-written garbage")  # the live copy got damaged
    write(run / "scratch.tmp", b"x")
    res = repo.restore_swap(snap, run, level=3, backup_previous=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == good
    assert res.previous_snapshot is not None
    assert repo.find_snapshot(res.previous_snapshot).has_tag("safety-copy")
    assert res.previous is not None and Path(res.previous).name.startswith("run.before-")
    assert (Path(res.previous) / "model.safetensors").read_bytes() == b"half-written garbage"
    assert (Path(res.previous) / "scratch.tmp").exists()
    assert not [p for p in run.parent.iterdir() if ".wv-swap-" in p.name]  # no scratch left


def test_swap_leaves_the_original_untouched_when_validation_fails(
    repo: Repository, repo_path: Path, run: Path
) -> None:
    repo.backup([run])
    (run / "model.safetensors").write_bytes(b"\x00" * 8)
    snap = repo.backup([run]).snapshot.id  # a snapshot of a broken model
    write(run / "model.safetensors", safetensors_bytes(_tensors()))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ValidationFailedError) as ei:
        repo.restore_swap(snap, run, level=2)
    assert ei.value.exit_code == 9 and "untouched" in (ei.value.hint or "")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["repo", "run"]


def test_swap_leaves_the_original_untouched_when_restore_fails(
    repo: Repository, repo_path: Path, run: Path
) -> None:
    snap = repo.backup([run]).snapshot.id
    pack = max((p for p in (repo_path / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[50] ^= 0xFF
    pack.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(WeightvaultError):
        Repository.open(repo_path, PASSWORD).restore_swap(snap, run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["repo", "run"]


def test_cli_restore_swap(tmp_path: Path, repo: Repository, repo_path: Path, run: Path) -> None:
    repo.backup([run])
    (run / "config.json").write_bytes(b"changed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "restore", "latest", "--target",
                          str(run), "--swap", "--validate-level", "3", "--json"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (run / "config.json").read_bytes() == b'{"hidden": 32}'
    assert (Path(doc["previous"]) / "config.json").read_bytes() == b"changed"
    bad = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "restore", "latest", "--target",
                          str(run), "--swap", "--include", "*.json"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2


# -- level 4: the user's function check ------------------------------------------------------------
CHECK = '''
import json, struct
from pathlib import Path
import numpy as np

X = np.linspace(-1, 1, 32, dtype=np.float32)


def forward(root):
    data = (Path(root) / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header, base = json.loads(data[8 : 8 + n]), 8 + n

    def tensor(name):
        b, e = header[name]["data_offsets"]
        return np.frombuffer(data[base + b : base + e], dtype=np.float32).reshape(header[name]["shape"])

    y = X @ tensor("layer.0.weight") + tensor("layer.0.bias")
    err = float(np.abs(y - np.load(Path(__file__).with_name("expected.npy"))).max())
    return [] if err <= 1e-4 else [f"output differs from the recorded one by {err:.3g} (tolerance 1e-4)"]
'''


@pytest.fixture
def checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "checks"
    write(d / "mychecks.py", CHECK.encode())
    t = _tensors()
    x = np.linspace(-1, 1, 32, dtype=np.float32)
    np.save(d / "expected.npy", x @ t["layer.0.weight"][1] + t["layer.0.bias"][1])
    monkeypatch.setenv("PYTHONPATH", str(d))
    return d


def test_level_4_runs_the_users_forward_pass_check(repo: Repository, run: Path, tmp_path: Path,
                                                   checks: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    report = repo.validate(snap, _restored(repo, snap, tmp_path), level=4, check="mychecks:forward")
    assert report.ok and report.check == "mychecks:forward" and not report.check_problems
    # a later checkpoint whose output drifted beyond the tolerance: levels 1-3 pass, level 4 fails
    t = _tensors()
    t["layer.0.weight"] = ("F32", t["layer.0.weight"][1] * np.float32(1.05))
    write(run / "model.safetensors", safetensors_bytes(t))
    drifted = repo.backup([run]).snapshot.id
    report = repo.validate(drifted, _restored(repo, drifted, tmp_path), level=4, check="mychecks:forward")
    assert all(f.ok for f in report.files) and not report.ok
    assert "output differs from the recorded one" in report.check_problems[0]
    with pytest.raises(UsageError):
        repo.validate(snap, run, level=4)  # level 4 needs a check


def test_level_4_never_runs_code_from_the_restored_tree(repo: Repository, run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    evil = b"import os\nopen(os.environ['WV_MARK'], 'w').close()\ndef forward(root):\n    return []\n"
    write(run / "evilcheck.py", evil)
    snap = repo.backup([run]).snapshot.id
    root = _restored(repo, snap, tmp_path)
    mark = tmp_path / "ran"
    monkeypatch.setenv("WV_MARK", str(mark))
    monkeypatch.chdir(root)
    report = repo.validate(snap, root, level=4, check="evilcheck:forward")  # not importable from the tree
    assert not report.ok and not mark.exists()
    monkeypatch.setenv("PYTHONPATH", str(root))  # even when the user points there by mistake
    report = repo.validate(snap, root, level=4, check="evilcheck:forward")
    assert not report.ok and "inside the restored tree" in report.check_problems[0] and not mark.exists()


def test_drill_at_level_4(repo: Repository, run: Path, tmp_path: Path, checks: Path, isolated_home: Path) -> None:
    repo.backup([run])
    res = repo.drill(level=4, check="mychecks:forward")
    assert res.ok and res.report is not None and res.report.check == "mychecks:forward"


def test_swap_at_level_4_swaps_only_a_copy_that_passes_the_users_check(
        tmp_path: Path, repo: Repository, repo_path: Path, run: Path, checks: Path) -> None:
    good = repo.backup([run]).snapshot.id
    t = _tensors()
    t["layer.0.weight"] = ("F32", t["layer.0.weight"][1] * np.float32(1.05))  # drifted: levels 1-3 pass
    write(run / "model.safetensors", safetensors_bytes(t))
    drifted = repo.backup([run]).snapshot.id
    live = (run / "model.safetensors").read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))

    def swap(snap: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "restore", snap, "--target",
                               str(run), *extra], env=env, capture_output=True, text=True, timeout=120)

    bad = swap(drifted, "--swap", "--validate-level", "4", "--check", "mychecks:forward")
    assert bad.returncode != 0 and "output differs from the recorded one" in bad.stderr, bad.stderr
    assert (run / "model.safetensors").read_bytes() == live  # left untouched
    assert swap(good, "--swap", "--validate-level", "4").returncode == 2  # level 4 needs a check
    assert swap(good, "--check", "mychecks:forward").returncode == 2  # a check belongs to --swap
    ok = swap(good, "--swap", "--validate-level", "4", "--check", "mychecks:forward", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["validated_level"] == 4 and (run / "model.safetensors").read_bytes() != live
