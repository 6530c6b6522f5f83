"""Chunks into the repository: ``ChunkSaver`` (a worker pool with a bound on chunks in flight) and
``store_stream`` (one file's bytes split, hashed and queued), shared by ``backup`` and
``backup_data``. Each stage's time goes into the saver's ``stages`` (``ops.stages``): ``read``
(reading and splitting), ``sha256`` (the file digest, in its own thread), ``blob_id`` (keyed BLAKE3),
``wait_workers`` (the reader waiting for a free slot) and ``store`` (in the workers: compress,
encrypt, fill and write packs)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from weightvault.chunking.base import Chunk
from weightvault.chunking.cdc import CdcSplitter
from weightvault.chunking.registry import SplitterRegistry
from weightvault.ops.delta_bases import BaseFinder
from weightvault.ops.layout import fallback_reason
from weightvault.ops.stages import Stages
from weightvault.repository.manifest import Node, TensorPart
from weightvault.repository.repo import DeltaBase, Repository
from weightvault.types import BlobType

__all__ = ["ChunkSaver", "store_stream"]


_BATCH_BELOW = 64 * 1024  # smaller chunks that are not tensor data travel to the workers in batches
_BATCH_CHUNKS = 64
_BATCH_BYTES = 1024 * 1024


class ChunkSaver:
    """Stores chunks in a worker pool (compress, encrypt, pack) with a bound on chunks in flight.

    Blob ids are computed by the caller, so a file's node is complete as soon as it has been read
    and the next file can be read while its chunks are still being stored. A failed store is
    raised by the next ``submit`` or by ``close``, so the snapshot is never committed after one.
    """

    def __init__(self, repo: Repository, workers: int, stages: Stages | None = None) -> None:
        self.repo = repo
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="weightvault-backup")
        self.slots = threading.BoundedSemaphore(2 * workers + 2)
        self.stages = stages if stages is not None else Stages()
        self._failed: list[BaseException] = []
        # files' SHA-256 in their own thread, beside the reader's read and blob ids (hashlib
        # releases the GIL): in file order, one chunk after another (``FileDigest``)
        self.digest_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightvault-digest")
        self._batch: list[tuple[bytes, bytes]] = []  # small chunks not yet handed over
        self._batch_bytes = 0

    def _done(self, fut: Future[object]) -> None:
        self.slots.release()
        exc = fut.exception()
        if exc is not None:
            self._failed.append(exc)

    def submit(self, data: bytes, dtype: str | None = None, delta: DeltaBase | None = None) -> bytes:
        """Queue ``data`` for storing (``dtype``: element type hint for the codec; ``delta``: a
        candidate delta base); returns its blob id. Small chunks that are not tensor data (small
        files, mostly) are handed to the workers ``_BATCH_CHUNKS`` at a time: one hand-over
        instead of one per chunk. Tensor chunks go at once, so a later checkpoint finds them as
        delta bases in the pack being filled."""
        if self._failed:
            raise self._failed[0]
        t0 = time.perf_counter()
        blob_id = self.repo.key.blob_id(data)
        self.stages.add("blob_id", time.perf_counter() - t0)
        if dtype is None and delta is None and len(data) < _BATCH_BELOW:
            self._batch.append((data, blob_id))
            self._batch_bytes += len(data)
            if len(self._batch) >= _BATCH_CHUNKS or self._batch_bytes >= _BATCH_BYTES:
                self._hand_over()
            return blob_id
        self._queue(self._store, data, blob_id, dtype, delta)
        return blob_id

    def _queue(self, fn: Callable[..., object], *args: object) -> None:
        t1 = time.perf_counter()
        self.slots.acquire()
        self.stages.add("wait_workers", time.perf_counter() - t1)
        try:
            fut = self.pool.submit(fn, *args)
        except BaseException:
            self.slots.release()
            raise
        fut.add_done_callback(self._done)

    def _hand_over(self) -> None:
        if self._batch:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self._queue(self._store_batch, batch)

    def _store(self, data: bytes, blob_id: bytes, dtype: str | None, delta: DeltaBase | None) -> None:
        with self.stages("store"):
            self.repo.save_blob(BlobType.DATA, data, blob_id, dtype, delta)

    def _store_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        with self.stages("store"):
            for data, blob_id in batch:
                self.repo.save_blob(BlobType.DATA, data, blob_id)

    def close(self) -> None:
        """Wait for every queued chunk; raise the first storing error, if any."""
        if not self._failed:
            self._hand_over()
        self.pool.shutdown(wait=True)
        self.digest_pool.shutdown(wait=True)
        if self._failed:
            raise self._failed[0]

    def abort(self) -> None:
        """After a failure elsewhere: let queued work end, raise nothing."""
        self.pool.shutdown(wait=True)
        self.digest_pool.shutdown(wait=True)


_DIGEST_AHEAD = 8  # chunks queued for a file's digest before the reader waits
_DIGEST_INLINE = 256 * 1024  # a smaller chunk with none queued before it is hashed by the caller


class FileDigest:
    """A file's SHA-256, computed in the saver's digest thread in chunk order while the caller
    goes on reading; ``hexdigest`` waits for the last chunk. A small chunk with nothing queued
    ahead of it is hashed at once by the caller: for a small file the hand-over to the thread and
    back costs more than the hash."""

    def __init__(self, saver: ChunkSaver) -> None:
        self._sha = hashlib.sha256()
        self._pool = saver.digest_pool
        self._stages = saver.stages
        self._pending: list[Future[None]] = []

    def _update(self, data: bytes) -> None:
        t = time.perf_counter()
        self._sha.update(data)
        self._stages.add("sha256", time.perf_counter() - t)

    def update(self, data: bytes) -> None:
        if not self._pending and len(data) < _DIGEST_INLINE:
            self._update(data)
            return
        self._pending.append(self._pool.submit(self._update, data))
        if len(self._pending) > _DIGEST_AHEAD:
            self._pending.pop(0).result()

    def hexdigest(self) -> str:
        for f in self._pending:
            f.result()
        self._pending = []
        return self._sha.hexdigest()


def store_stream(f: BinaryIO | None, head: bytes, rel: bytes, saver: ChunkSaver, registry: SplitterRegistry,
                 repo: Repository, on_bytes: Callable[[int], None],
                 finder: BaseFinder) -> tuple[Node, list[int], str | None]:
    """Chunk ``f`` (its first bytes ``head``) with the splitter its name and content select,
    offering delta bases, and queue every chunk with ``saver``. Returns the file node (no
    metadata yet), the chunks' offsets, and why a model-looking file got generic CDC (or None).
    ``f`` None: ``head`` is the whole file, shorter than the smallest chunk."""
    splitter = registry.select(os.path.basename(rel), head)
    chunks: Iterable[Chunk]
    if f is None and isinstance(splitter, CdcSplitter):
        chunks = [Chunk(0, head)] if head else []  # what CDC makes of it, without its reads
    else:
        chunks = splitter.split(io.BytesIO(head) if f is None else f, repo.chunker)
    sha = FileDigest(saver)
    blobs: list[bytes] = []
    tensors: list[TensorPart | None] = []
    offsets: list[int] = []
    bases: dict[TensorPart, DeltaBase] | None = None
    size = 0
    it, stages = iter(chunks), saver.stages
    while True:
        t0 = time.perf_counter()
        chunk = next(it, None)
        t1 = time.perf_counter()
        if chunk is None:
            stages.add("read", t1 - t0)
            break
        sha.update(chunk.data)
        stages.add("read", t1 - t0)
        size += len(chunk.data)
        part: TensorPart | None = None
        delta = None
        if chunk.tensor is not None:
            part = (chunk.tensor, chunk.part, chunk.dtype)
            if bases is None:
                bases = finder.bases_for(rel)
            delta = bases.get(part)
        blobs.append(saver.submit(chunk.data, chunk.dtype, delta))
        tensors.append(part)
        offsets.append(chunk.offset)
        on_bytes(len(chunk.data))
    node = Node(path=rel, type="file", size=size, blobs=blobs, sha256=sha.hexdigest())
    if any(t is not None for t in tensors):
        node.tensors = tensors
    why = None if node.tensors or size < repo.chunker.min_size else fallback_reason(
        os.path.basename(rel), head, chunks)
    return node, offsets, why
