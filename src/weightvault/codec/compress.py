"""Compression codecs, each identified by one byte stored per blob.

    0  RAW        stored as is (used whenever compression does not pay)
    1  ZSTD       zstandard frame, level from the repository config (default 3)
    2  BYTEPLANE  float tensors split into byte planes (``floatplanes``); format version 2
    3  DELTA      XOR against an earlier version of the same tensor chunk (its *base*), then
                  BYTEPLANE (float dtypes) or ZSTD; format version 3. Payload::

                      base blob id (32) || inner codec (u8: 1 ZSTD or 2 BYTEPLANE) || inner payload

                  where the inner payload encodes ``plaintext XOR base plaintext`` (equal lengths).

An unknown id is refused with UnsupportedFormatError, never guessed.
"""

from __future__ import annotations

import numpy as np
import zstandard

from weightvault.codec import floatplanes
from weightvault.codec.zstd_contexts import compressor, decompressor
from weightvault.errors import IntegrityError, UnsupportedFormatError

__all__ = ["BYTEPLANE", "CODEC_NAMES", "DELTA", "RAW", "ZSTD", "compress_best", "decompress", "delta_base"]

RAW = 0
ZSTD = 1
BYTEPLANE = 2
DELTA = 3
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", BYTEPLANE: "byteplane", DELTA: "delta"}
_ID_SIZE = 32

# Keep compression only if it saves at least this fraction.
_MIN_SAVING = 0.02
# Keep a delta only if it is at least this fraction smaller than the best standalone coding.
DELTA_MIN_GAIN = 0.1


def compress_best(
    data: bytes | memoryview,
    level: int = 3,
    dtype: str | None = None,
    allow_byteplane: bool = False,
    base: tuple[bytes, bytes | memoryview] | None = None,
) -> tuple[int, bytes]:
    """Return (codec id, payload), the smallest of RAW, ZSTD, BYTEPLANE (if allowed) and DELTA
    (if ``base`` = (base blob id, base plaintext) is given and has the same length as ``data``).

    With a base, a 256 KiB sample of a chunk of >= 1 MiB is coded both ways first and the delta
    skipped if it does not pay there. Otherwise the delta payload (size D) is computed first; the
    byteplane and zstd candidates are abandoned once they exceed D / (1 - DELTA_MIN_GAIN), so a good delta costs
    little extra work. DELTA is kept only if it is at least ``DELTA_MIN_GAIN`` (10 %) smaller than
    every other candidate (a delta makes restores decode its base too): never larger than zstd.

    A compressed candidate must save >= 2 % over RAW; ties go to the lower codec id. Without
    ``allow_byteplane`` (a format-v1 repository), or when ``dtype`` is not a float type of
    ``floatplanes.FLOAT_ELEMENT_SIZES``, or the data holds no whole element, this is zstd-or-raw
    exactly as in format v1. Otherwise the byteplane payload (size B) is computed first. For a chunk
    of >= 1 MiB, plain zstd is tried only if it came within 3 % of byteplane on a 128 KiB sample
    from the middle (``_zstd_may_win``); then, and for smaller chunks, plain zstd is streamed,
    abandoned as soon as the bytes it has emitted reach B (a zstd frame is never shorter than its
    emitted prefix, so zstd could not have won). Smaller chunks are therefore never larger than
    plain zstd; a large one only where its middle misled the sample.
    """
    n = len(data)
    k = floatplanes.FLOAT_ELEMENT_SIZES.get(dtype or "", 0)
    limit = n * (1 - _MIN_SAVING)
    if base is not None and len(base[1]) == n and n > 0:
        kk = k if allow_byteplane else 0
        if _delta_may_pay(data, base[1], level, kk):
            return _best_with_delta(data, level, kk, base, int(limit))
    if not allow_byteplane or k == 0 or n < k:
        packed = compressor(level).compress(data)
        if len(packed) <= limit:
            return ZSTD, packed
        return RAW, bytes(data)
    planes = floatplanes.encode(data, k, level)
    best_codec, best = (BYTEPLANE, planes) if len(planes) <= limit else (RAW, bytes(data))
    if best_codec == BYTEPLANE and not _zstd_may_win(data, k, level):
        return BYTEPLANE, planes
    packed_z = _zstd_unless_larger(data, level, len(best))
    if packed_z is not None and len(packed_z) <= limit:
        return ZSTD, packed_z
    return best_codec, best


def _best_with_delta(
    data: bytes | memoryview, level: int, k: int, base: tuple[bytes, bytes | memoryview], limit: int
) -> tuple[int, bytes]:
    base_id, base_data = base
    if len(base_id) != _ID_SIZE:
        raise ValueError("a delta base id has 32 bytes")
    n = len(data)
    xor = np.bitwise_xor(np.frombuffer(data, dtype=np.uint8), np.frombuffer(base_data, dtype=np.uint8)).data
    if k and n >= k:  # no rotation: the XOR's top bytes are mostly zero, not exponents
        inner_codec, inner = BYTEPLANE, floatplanes.encode(xor, k, level, rotate=False)
    else:
        inner_codec, inner = ZSTD, compressor(level).compress(xor)
    delta_size = _ID_SIZE + 1 + len(inner)
    # A delta makes restores decode its base too: it must be DELTA_MIN_GAIN smaller than the best
    # standalone coding (RAW included), so standalone candidates only need to reach this bound.
    bound = min(limit, int(delta_size / (1 - DELTA_MIN_GAIN)))
    best: tuple[int, bytes] | None = None
    if k and n >= k:
        planes = floatplanes.encode_within(data, k, level, bound=bound)
        if planes is not None:
            best, bound = (BYTEPLANE, planes), len(planes)
    packed_z = _zstd_unless_larger(data, level, bound)
    if packed_z is not None:
        return ZSTD, packed_z
    if best is not None:
        return best
    if delta_size <= n * (1 - DELTA_MIN_GAIN):
        return DELTA, b"".join((base_id, bytes((inner_codec,)), inner))
    return RAW, bytes(data)


_SAMPLE = 256 * 1024
_ZSTD_SAMPLE = 128 * 1024
_ZSTD_CHECK_MIN = 1024 * 1024
ZSTD_SAMPLE_MARGIN = 0.03  # plain zstd must come within 3 % of byteplane on the sample to be tried


def _delta_may_pay(data: bytes | memoryview, base: bytes | memoryview, level: int, k: int) -> bool:
    """A cheap pre-check on a sample from the middle of a large chunk: False when the delta codes
    that sample no smaller than the standalone coding, so the full delta is not worth computing
    (AdamW moments, say, which change completely between checkpoints). Only a shortcut: it can
    only make the choice fall back to the standalone codecs, never affect correctness or size bounds.
    """
    n = len(data)
    if n < 4 * _SAMPLE:
        return True
    start = (n // 2) // 64 * 64
    view, bview = memoryview(data)[start : start + _SAMPLE], memoryview(base)[start : start + _SAMPLE]
    xor = np.bitwise_xor(np.frombuffer(view, dtype=np.uint8), np.frombuffer(bview, dtype=np.uint8)).data
    if k:
        delta = len(floatplanes.encode(xor, k, level, rotate=False))
        alone = len(floatplanes.encode(view, k, level))
    else:
        delta = len(compressor(level).compress(xor))
        alone = len(compressor(level).compress(view))
    return delta < alone * (1 - DELTA_MIN_GAIN / 2)


def _zstd_may_win(data: bytes | memoryview, k: int, level: int) -> bool:
    """A cheap pre-check before plain zstd runs over a whole float chunk of >= 1 MiB: a 128 KiB
    sample from its middle is coded both ways, and plain zstd is tried on the chunk only if it
    came within ``ZSTD_SAMPLE_MARGIN`` of byteplane there. On real weights and optimizer states it
    never does, so the second full compression of every float chunk is skipped; the price is that
    a chunk whose middle is unrepresentative may end up slightly larger than plain zstd."""
    n = len(data)
    if n < _ZSTD_CHECK_MIN:
        return True
    start = (n // 2) // 64 * 64
    view = memoryview(data)[start : start + _ZSTD_SAMPLE]
    planes = len(floatplanes.encode(view, k, level))
    return len(compressor(level).compress(view)) < planes * (1 + ZSTD_SAMPLE_MARGIN)


def delta_base(payload: bytes | memoryview) -> bytes:
    """The base blob id at the start of a DELTA payload."""
    if len(payload) < _ID_SIZE + 1:
        raise IntegrityError(f"delta payload of {len(payload)} bytes is shorter than its header")
    return bytes(payload[:_ID_SIZE])


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


def decompress(
    codec: int, payload: bytes | memoryview, raw_length: int, base: bytes | bytearray | None = None
) -> bytes | bytearray:
    """Invert ``compress_best``. Raises IntegrityError if the output length is not ``raw_length``.

    A DELTA payload needs ``base``, the plaintext of the blob named by ``delta_base(payload)``;
    the caller fetches it (and verifies the result's id, as for every codec). BYTEPLANE and DELTA
    results are built in place in a ``bytearray`` (one buffer per chunk, no final copy)."""
    if codec == DELTA:
        base_id = delta_base(payload)
        if base is None:
            raise IntegrityError(f"delta blob needs the plaintext of its base {base_id.hex()}")
        if len(base) != raw_length:
            raise IntegrityError(f"delta base {base_id.hex()} has {len(base)} bytes, the blob {raw_length}")
        inner_codec = payload[_ID_SIZE]
        if inner_codec not in (ZSTD, BYTEPLANE):
            raise IntegrityError(f"delta payload has inner codec {inner_codec}; expected 1 or 2")
        xor = decompress(inner_codec, payload[_ID_SIZE + 1 :], raw_length)
        out_buf = xor if isinstance(xor, bytearray) else bytearray(xor)
        arr = np.frombuffer(out_buf, dtype=np.uint8)
        np.bitwise_xor(arr, np.frombuffer(base, dtype=np.uint8), out=arr)  # in place: no further copy
        return out_buf
    out: bytes | bytearray
    if codec == RAW:
        out = payload if isinstance(payload, bytes) else bytes(payload)
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
