"""Small files on the backup's fast path: a file shorter than the smallest chunk is read by one
call and stored from it, small non-tensor chunks reach the workers in batches, and a small chunk's
SHA-256 is taken by the reader. Each must store exactly what the general path stores."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from conftest import write
from weightvault.api import Repository
from weightvault.chunking.cdc import CdcSplitter
from weightvault.errors import BackendError
from weightvault.ops import store as store_op
from weightvault.ops.store import ChunkSaver
from weightvault.repository.repo import Repository as Engine
from weightvault.types import BlobType


def _cdc_ids(repo: Repository, data: bytes) -> list[bytes]:
    """The blob ids the general path (CDC over the file's stream) gives ``data``."""
    engine = repo._repo
    return [engine.key.blob_id(c.data) for c in CdcSplitter().split(io.BytesIO(data), engine.chunker)]


def test_files_around_the_smallest_chunk_store_what_cdc_stores(repo: Repository, tmp_path: Path) -> None:
    min_size = repo._repo.chunker.min_size
    sizes = [0, 1, 4095, 65535, 65536, 65537, min_size - 1, min_size, min_size + 1, 3 * min_size + 7]
    src = tmp_path / "src"
    datas = {f"f{s}.bin": os.urandom(s) for s in sizes}
    for name, data in datas.items():
        write(src / name, data)
    repo.backup([src])
    nodes = {os.fsdecode(n.path).rsplit("/", 1)[-1]: n for n in repo.ls("latest") if n.type == "file"}
    for name, data in datas.items():
        node = nodes[name]
        assert node.size == len(data), name
        assert node.sha256 == hashlib.sha256(data).hexdigest(), name
        assert node.blobs == _cdc_ids(repo, data), name
    out = tmp_path / "out"
    repo.restore("latest", out, verify=True)
    for name, data in datas.items():
        assert (out / "src" / name).read_bytes() == data, name
    assert repo.check(read_data=True).ok


def test_many_small_files_are_all_stored_before_the_snapshot(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    datas = {f"d{i % 7}/f{i}.txt": os.urandom(i * 37 % 3000) + b"x" for i in range(700)}
    for rel, data in datas.items():
        write(src / rel, data)
    res = repo.backup([src])
    assert res.snapshot.summary["files"] == len(datas)
    indexed = {e.blob.blob_id for e in repo._repo.index.entries() if e.blob.type == BlobType.DATA}
    for n in repo.ls("latest"):
        if n.type == "file":
            assert set(n.blobs) <= indexed, n.path
    out = tmp_path / "out"
    repo.restore("latest", out, verify=True)
    for rel, data in datas.items():
        assert (out / "src" / rel).read_bytes() == data
    assert repo.check(read_data=True).ok


def test_a_failed_store_of_a_batched_chunk_fails_the_backup(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    for i in range(50):
        write(src / f"f{i}.txt", f"file {i}".encode() * 10)
    poisoned = repo._repo.key.blob_id(b"file 17" * 10)
    real = Engine.save_blob

    def save_blob(self: Engine, btype: BlobType, data: bytes, blob_id: bytes | None = None,
                  *args: object, **kw: object) -> tuple[bytes, bool]:
        if blob_id == poisoned:
            raise BackendError("injected: the pack could not be written")
        return real(self, btype, data, blob_id, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Engine, "save_blob", save_blob)
    with pytest.raises(BackendError, match="injected"):
        repo.backup([src])
    monkeypatch.setattr(Engine, "save_blob", real)
    assert repo.snapshots() == []


def test_the_saver_hands_batches_over_by_count_and_by_bytes(repo: Repository) -> None:
    engine = repo._repo
    queued: list[int] = []
    saver = ChunkSaver(engine, 2)
    real_queue = saver._queue

    def queue(fn: object, *args: object) -> None:
        queued.append(len(args[0]) if fn == saver._store_batch else -1)  # type: ignore[arg-type]
        real_queue(fn, *args)  # type: ignore[arg-type]

    saver._queue = queue  # type: ignore[method-assign]
    with engine.lock():
        engine.load_index()
        for i in range(store_op._BATCH_CHUNKS + 3):  # one full batch by count, 3 left for close
            saver.submit(b"tiny %d" % i)
        big = store_op._BATCH_BELOW - 1
        for _ in range(store_op._BATCH_BYTES // big + 1):  # a batch by bytes
            saver.submit(os.urandom(big))
        saver.submit(os.urandom(store_op._BATCH_BELOW))  # large enough to go at once
        saver.submit(b"tensor bytes", dtype="F32")  # tensor data goes at once
        saver.close()
        engine.flush()
    assert queued[0] == store_op._BATCH_CHUNKS
    assert queued.count(-1) == 2
    assert sum(q for q in queued if q > 0) == store_op._BATCH_CHUNKS + 3 + store_op._BATCH_BYTES // big + 1
    assert all(0 < q <= store_op._BATCH_CHUNKS for q in queued if q != -1)


def test_a_small_last_chunk_is_hashed_after_the_large_ones_before_it(repo: Repository, tmp_path: Path) -> None:
    # large chunks go to the digest thread; the small tail must not be hashed ahead of them
    data = os.urandom(9 * 1024 * 1024 + 1234)
    write(tmp_path / "src" / "big.bin", data)
    repo.backup([tmp_path / "src"])
    (node,) = [n for n in repo.ls("latest") if n.type == "file"]
    assert len(node.blobs) > 2
    assert node.sha256 == hashlib.sha256(data).hexdigest()
