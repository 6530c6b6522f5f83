"""A restored file's bytes: blobs loaded in a pool and written at their offsets (``load_and_write``).

Stage times (``ops.stages``): ``load`` (fetch, decrypt, decompress, hash-check, through the blob
cache), ``zero_check`` (all-zero chunks become holes), ``write`` (pwrite), and ``wait_load`` in
the file's thread while it waits for the next blobs in file order."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from weightvault.ops.restore_durable import Writeback
from weightvault.ops.stages import Stages
from weightvault.repository.blobcache import BlobCache

__all__ = ["all_zero", "load_and_write", "pwrite_all", "runs_of"]


def all_zero(data: bytes | bytearray) -> bool:
    """Whether every byte is zero. Model data almost never starts or ends with 64 zero bytes, so
    both ends are looked at first; a chunk that passes is counted through by numpy (~50 GB/s)."""
    n = min(len(data), 64)
    if data[:64].count(0) != n or data[-64:].count(0) != n:
        return False
    words = len(data) // 8
    if np.count_nonzero(np.frombuffer(data, dtype=np.uint64, count=words)):
        return False
    return data[words * 8 :].count(0) == len(data) - words * 8


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


_RUN_BYTES = 8 * 1024 * 1024  # largest stored span fetched by one coalesced read


def _runs(repo: BlobCache, blobs: list[bytes]) -> list[list[tuple[bytes, int]]]:
    """Group the file's blobs into runs of (blob id, file offset): consecutive blobs of the file that
    lie in the same pack within one span of at most ``_RUN_BYTES`` (in any order: parallel backup
    workers store neighbours slightly out of order), with at most an eighth of the span being other
    blobs' bytes, become one range read. A blob the restore uses more than once (shared or a delta
    base) stays alone, so the cache sees it."""
    runs: list[list[tuple[bytes, int]]] = []
    pos = 0
    cur: tuple[str, int, int, int] | None = None  # pack, span start, span end, bytes wanted
    for b in blobs:
        e = repo.lookup(b)
        start, end = e.blob.offset, e.blob.offset + e.blob.length
        solo = repo.shared(b)
        if cur is not None and not solo and cur[0] == e.pack_id:
            lo, hi, wanted = min(cur[1], start), max(cur[2], end), cur[3] + e.blob.length
            if hi - lo <= _RUN_BYTES and (hi - lo - wanted) * 8 <= hi - lo:
                runs[-1].append((b, pos))
                cur = (e.pack_id, lo, hi, wanted)
                pos += e.blob.raw_length
                continue
        runs.append([(b, pos)])
        cur = None if solo else (e.pack_id, start, end, e.blob.length)
        pos += e.blob.raw_length
    return runs


def runs_of(repo: BlobCache, blobs: list[bytes]) -> list[list[bytes]]:
    """``blobs`` (of one file or of many) as runs, each fetched with one range read (``_runs``)."""
    return [[b for b, _ in run] for run in _runs(repo, blobs)]


def load_and_write(
    pool: ThreadPoolExecutor, repo: BlobCache, blobs: list[bytes], fd: int | None, lookahead: int, stages: Stages,
    writeback: Writeback | None = None,
) -> Iterator[bytes | bytearray]:
    """Load blobs in the pool and write each at its offset there (pwrite needs no ordering); yield
    the plaintexts in file order for hashing. Blobs stored back to back are fetched with one range
    read (``_runs``). All-zero chunks are left as holes, so sparse files stay sparse. Offsets come
    from the index's raw lengths; at most ``lookahead`` runs in flight. With ``writeback``, each
    written run is streamed to the device at once (``restore_durable.Writeback``). With ``fd``
    None the blobs are only loaded: the caller writes them (``restore_direct``)."""

    def work(run: list[tuple[bytes, int]]) -> list[bytes | bytearray]:
        t0 = time.perf_counter()
        out = repo.load_run([b for b, _ in run])
        stages.add("load", time.perf_counter() - t0)
        if fd is None:
            return out
        for (_, offset), data in zip(run, out, strict=True):
            t1 = time.perf_counter()
            zero = all_zero(data)
            t2 = time.perf_counter()
            if not zero:
                pwrite_all(fd, data, offset)
            stages.add("zero_check", t2 - t1)
            stages.add("write", time.perf_counter() - t2)
        if writeback is not None:
            t3 = time.perf_counter()
            writeback.written(run[0][1], sum(len(d) for d in out))
            stages.add("writeback", time.perf_counter() - t3)
        return out

    futs: list[Future[list[bytes | bytearray]]] = []
    pending = iter(_runs(repo, blobs))
    for run in pending:
        futs.append(pool.submit(work, run))
        if len(futs) >= lookahead:
            break
    try:
        while futs:
            t = time.perf_counter()
            datas = futs.pop(0).result()
            stages.add("wait_load", time.perf_counter() - t)
            nxt = next(pending, None)
            if nxt is not None:
                futs.append(pool.submit(work, nxt))
            yield from datas
    finally:
        for f in futs:  # on error, let in-flight writes finish before the caller closes fd
            f.cancel()
        for f in futs:
            if not f.cancelled():
                f.exception()
