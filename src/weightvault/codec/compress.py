"""Compression codecs, each identified by one byte stored per blob.

    0  RAW   stored as is (used whenever compression does not pay)
    1  ZSTD  zstandard frame, level from the repository config (default 3)

Later codecs (byte-plane float coding, checkpoint deltas) register new ids here; an unknown id
is refused with UnsupportedFormatError, never guessed.
"""

from __future__ import annotations

import threading

import zstandard

from weightvault.errors import IntegrityError, UnsupportedFormatError

__all__ = ["CODEC_NAMES", "RAW", "ZSTD", "compress_best", "decompress"]

RAW = 0
ZSTD = 1
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd"}

# Keep compression only if it saves at least this fraction.
_MIN_SAVING = 0.02
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def compress_best(data: bytes | memoryview, level: int = 3, dtype: str | None = None) -> tuple[int, bytes]:
    """Return (codec id, payload): zstd when it saves >= 2 %, otherwise RAW. ``dtype`` is the
    element-type hint of tensor data (unused by these codecs)."""
    packed = _compressor(level).compress(data)
    if len(packed) <= len(data) * (1 - _MIN_SAVING):
        return ZSTD, packed
    return RAW, bytes(data)


def decompress(codec: int, payload: bytes, raw_length: int) -> bytes:
    """Invert ``compress_best``. Raises IntegrityError if the output length is not ``raw_length``."""
    if codec == RAW:
        out = payload
    elif codec == ZSTD:
        try:
            out = _decompressor().decompress(payload, max_output_size=raw_length)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"zstd payload does not decompress: {exc}") from exc
    else:
        raise UnsupportedFormatError(
            f"blob uses codec id {codec}, unknown to this version of weightvault",
            hint="upgrade weightvault to read this repository",
        )
    if len(out) != raw_length:
        raise IntegrityError(f"blob decoded to {len(out)} bytes, index says {raw_length}")
    return out
