"""Compression codecs, each identified by one byte stored per blob.

    0  RAW        stored as is (used whenever compression does not pay)
    1  ZSTD       zstandard frame, level from the repository config (default 3)
    2  BYTEPLANE  float tensors split into byte planes (``floatplanes``); format version 2

Later codecs (checkpoint deltas) register new ids here; an unknown id is refused with
UnsupportedFormatError, never guessed.
"""

from __future__ import annotations

import zstandard

from weightvault.codec import floatplanes
from weightvault.codec.zstd_contexts import compressor, decompressor
from weightvault.errors import IntegrityError, UnsupportedFormatError

__all__ = ["BYTEPLANE", "CODEC_NAMES", "RAW", "ZSTD", "compress_best", "decompress"]

RAW = 0
ZSTD = 1
BYTEPLANE = 2
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", BYTEPLANE: "byteplane"}

# Keep compression only if it saves at least this fraction.
_MIN_SAVING = 0.02


def compress_best(
    data: bytes | memoryview, level: int = 3, dtype: str | None = None, allow_byteplane: bool = False
) -> tuple[int, bytes]:
    """Return (codec id, payload), the smallest of RAW, ZSTD and (if allowed) BYTEPLANE.

    A compressed candidate must save >= 2 % over RAW; ties go to the lower codec id. Without
    ``allow_byteplane`` (a format-v1 repository), or when ``dtype`` is not a float type of
    ``floatplanes.FLOAT_ELEMENT_SIZES``, or the data holds no whole element, this is zstd-or-raw
    exactly as in format v1. Otherwise the byteplane payload (size B) is computed first and plain
    zstd is streamed after it, abandoned as soon as the bytes it has emitted reach B: a zstd frame
    is never shorter than its emitted prefix, so zstd could not have won, and the result is still
    never larger than plain zstd. On float tensors that abort skips the last 10-15 % of the zstd
    work; the rest is the price of the guarantee.
    """
    n = len(data)
    k = floatplanes.FLOAT_ELEMENT_SIZES.get(dtype or "", 0)
    limit = n * (1 - _MIN_SAVING)
    if not allow_byteplane or k == 0 or n < k:
        packed = compressor(level).compress(data)
        if len(packed) <= limit:
            return ZSTD, packed
        return RAW, bytes(data)
    planes = floatplanes.encode(data, k, level)
    best_codec, best = (BYTEPLANE, planes) if len(planes) <= limit else (RAW, bytes(data))
    packed_z = _zstd_unless_larger(data, level, len(best))
    if packed_z is not None and len(packed_z) <= limit:
        return ZSTD, packed_z
    return best_codec, best


_STEP = 256 * 1024


def _zstd_unless_larger(data: bytes | memoryview, level: int, bound: int) -> bytes | None:
    """The zstd frame of ``data`` if it is at most ``bound`` bytes long, else None (maybe early)."""
    cobj = compressor(level).compressobj(size=len(data))
    view = memoryview(data)
    out: list[bytes] = []
    emitted = 0
    for start in range(0, len(view), _STEP):
        piece = cobj.compress(view[start : start + _STEP])
        emitted += len(piece)
        if emitted > bound:
            return None
        out.append(piece)
    out.append(cobj.flush())
    frame = b"".join(out)
    return frame if len(frame) <= bound else None


def decompress(codec: int, payload: bytes, raw_length: int) -> bytes:
    """Invert ``compress_best``. Raises IntegrityError if the output length is not ``raw_length``."""
    if codec == RAW:
        out = payload
    elif codec == ZSTD:
        try:
            declared = zstandard.frame_content_size(payload)
            if declared not in (-1, raw_length):  # zstandard would allocate what the frame declares
                raise IntegrityError(f"zstd frame declares {declared} bytes, index says {raw_length}")
            out = decompressor().decompress(payload, max_output_size=raw_length)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"zstd payload does not decompress: {exc}") from exc
    elif codec == BYTEPLANE:
        out = floatplanes.decode(payload, raw_length)
    else:
        raise UnsupportedFormatError(
            f"blob uses codec id {codec}, unknown to this version of weightvault",
            hint="upgrade weightvault to read this repository",
        )
    if len(out) != raw_length:
        raise IntegrityError(f"blob decoded to {len(out)} bytes, index says {raw_length}")
    return out
