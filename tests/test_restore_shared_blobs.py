"""Restore reads and decodes a blob used by several files (or several times in one file) once,
within a bounded cache, and still writes every copy correctly."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import FAST_KDF, tree_digest, write
from weightvault.api import Repository
from weightvault.ops import restore as restore_mod
from weightvault.ops.restore_order import in_chain_order
from weightvault.repository.repo import Repository as Engine


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> Counter[bytes]:
    calls: Counter[bytes] = Counter()
    real = Engine.load_plain

    def counting(self: Engine, blob_id: bytes, load_base: Callable[[bytes], bytes | bytearray] | None = None,
                 check_id: bool = True) -> bytes | bytearray:
        calls[blob_id] += 1
        return real(self, blob_id, load_base, check_id)

    monkeypatch.setattr(Engine, "load_plain", counting)
    return calls


def test_duplicate_content_is_decoded_once(repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "run"
    shared = os.urandom(3 << 20)
    for i in range(4):  # four checkpoints sharing a frozen part, each with its own trained part
        write(src / f"ckpt-{i}" / "model.bin", shared + os.urandom(1 << 20))
    repo.backup([src])
    calls = _count_loads(monkeypatch)
    repo.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    data_loads = {b: n for b, n in calls.items() if n}
    assert max(data_loads.values()) == 1, "a shared blob was loaded more than once"


def test_cache_is_bounded_and_still_correct(repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "run"
    shared = os.urandom(4 << 20)
    write(src / "a.bin", shared)
    write(src / "b.bin", shared)
    repo.backup([src])
    monkeypatch.setattr(restore_mod, "_SHARED_BLOB_BYTES", 1024)  # smaller than any chunk: nothing kept
    calls = _count_loads(monkeypatch)
    repo.restore("latest", tmp_path / "out")
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    assert max(calls.values()) == 2  # without room in the cache, the second file loads again


def test_blobs_stored_back_to_back_are_read_with_one_range_read(repo_path: Path, tmp_path: Path) -> None:
    """A 12 MiB file of ~1 MiB chunks in one pack: restore fetches spans of up to 8 MiB holding
    several of them, not each blob on its own (what makes object storage restores cheap in
    requests)."""
    from weightvault.backends.base import FileType
    from weightvault.backends.local import LocalBackend
    from weightvault.ops.backup import BackupOptions, backup
    from weightvault.ops.restore import restore
    from weightvault.testing.faults import FaultyBackend

    src = write(tmp_path / "run" / "w.bin", os.urandom(12 << 20)).parent
    Repository.init(repo_path, "pw", kdf=FAST_KDF)
    faulty = FaultyBackend(LocalBackend(repo_path))
    eng = Engine.open(faulty, b"pw")
    with eng.lock():  # one worker: blobs land in the pack in file order, so the runs are deterministic
        snap = backup(eng, [str(src)], BackupOptions(workers=1)).snapshot
    blobs = {b for e in eng.index.entries() if e.blob.type.name == "DATA" for b in [e.blob.blob_id]}
    assert len(blobs) >= 8
    before = faulty.calls_of("load", FileType.PACK)
    restore(eng, snap, str(tmp_path / "out"))
    loads = faulty.calls_of("load", FileType.PACK) - before
    assert loads <= 3  # two 8 MiB-bounded spans of data plus the manifest; one read per blob without runs
    assert (tmp_path / "out" / "run" / "w.bin").read_bytes() == (tmp_path / "run" / "w.bin").read_bytes()


def test_files_are_restored_series_by_series_in_step_order() -> None:
    """Each checkpoint file comes right after its earlier version (its delta bases), not after a
    whole checkpoint of other files; directories come first."""
    from weightvault.ops.restore_tree import Place
    from weightvault.repository.manifest import Node

    paths = [b"run", b"run/checkpoint-10", b"run/checkpoint-10/model.bin", b"run/checkpoint-10/opt.pt",
             b"run/checkpoint-100", b"run/checkpoint-100/model.bin", b"run/checkpoint-100/opt.pt",
             b"run/checkpoint-20", b"run/checkpoint-20/model.bin", b"run/checkpoint-20/opt.pt", b"run/config.json"]
    plan = [(Node(path=p, type="file" if b"." in p else "dir"), Place(0, p.rsplit(b"/", 1)[-1])) for p in paths]
    order = [n.path for n, _ in in_chain_order(plan)]
    assert order == [b"run", b"run/checkpoint-10", b"run/checkpoint-100", b"run/checkpoint-20",
                     b"run/checkpoint-10/model.bin", b"run/checkpoint-20/model.bin", b"run/checkpoint-100/model.bin",
                     b"run/checkpoint-10/opt.pt", b"run/checkpoint-20/opt.pt", b"run/checkpoint-100/opt.pt",
                     b"run/config.json"]


def test_a_bf16_export_is_restored_right_after_the_f32_file_it_is_cast_from() -> None:
    """Its chunks are casts of the F32 chunks just decoded (format v7); other series keep their order."""
    from weightvault.ops.restore_tree import Place
    from weightvault.repository.manifest import Node

    def node(p: bytes) -> Node:
        dtype = "BF16" if b"bf16" in p else "F32" if p.endswith(b".safetensors") else None
        tensors: list[tuple[str, int, str | None] | None] | None = None
        if dtype is not None:
            tensors = [("__header__", 0, None), ("emb", 0, dtype), ("emb", 1, dtype)]
        return Node(path=p, type="file", tensors=tensors)

    paths = [f"run/checkpoint-{s}/{f}".encode() for s in (10, 20)
             for f in ("model-bf16.safetensors", "model.safetensors", "optimizer.pt")]
    order = [n.path for n, _ in in_chain_order([(node(p), Place(0, p)) for p in paths])]
    assert order == [b"run/checkpoint-10/model.safetensors", b"run/checkpoint-10/model-bf16.safetensors",
                     b"run/checkpoint-20/model.safetensors", b"run/checkpoint-20/model-bf16.safetensors",
                     b"run/checkpoint-10/optimizer.pt", b"run/checkpoint-20/optimizer.pt"]
