"""Generic content-defined chunking with the compiled FastCDC-2020 implementation (pyfastcdc)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

from weightvault.chunking.base import Chunk, ChunkerParams

__all__ = ["CdcSplitter", "cdc_cuts", "validate_params"]


_local = threading.local()


def _fastcdc(params: ChunkerParams) -> FastCDC:
    """A FastCDC instance for ``params``, built once per thread (construction costs ~1 ms and the
    object is not safe to share between threads)."""
    cache: dict[ChunkerParams, FastCDC] | None = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    cdc = cache.get(params)
    if cdc is None:
        # pyfastcdc's real mean chunk size is avg_size + min_size (cut-point skipping).
        avg = max(256, params.avg_size - params.min_size)
        cdc = cache[params] = FastCDC(avg, min_size=params.min_size, max_size=params.max_size, seed=params.seed)
    return cdc


def validate_params(params: ChunkerParams) -> str | None:
    """None if FastCDC accepts these sizes, else the reason (the chunker's own bounds check)."""
    if not params.min_size <= params.avg_size <= params.max_size:
        return "chunk sizes must satisfy min <= avg <= max"
    try:
        _fastcdc(params)
    except ValueError as exc:
        return str(exc)
    return None


class CdcSplitter:
    """Fallback splitter for every file: FastCDC with the repository's parameters and secret seed."""

    name = "cdc"

    def accepts(self, name: bytes, head: bytes) -> bool:
        return True

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        head = stream.read(params.min_size)
        if len(head) < params.min_size:  # a small file is one chunk; no chunker state needed
            if head:
                yield Chunk(0, head)
            return
        stream.seek(0)
        for c in _fastcdc(params).cut_stream(stream):
            yield Chunk(int(c.offset), bytes(c.data))


def cdc_cuts(data: bytes, params: ChunkerParams) -> list[tuple[int, int]]:
    """(offset, length) pairs for an in-memory buffer; used for manifest streams and tests."""
    return [(int(c.offset), int(c.length)) for c in _fastcdc(params).cut_buf(data)]
