"""Compression codecs, each identified by one byte stored per blob.

    0  RAW        stored as is (used whenever compression does not pay)
    1  ZSTD       zstandard frame, level from the repository config (default 3)
    2  BYTEPLANE  float tensors split into byte planes (``floatplanes``); format version 2
    3  DELTA      the difference from an earlier version of the same tensor chunk (its *base*);
                  format version 3. Payload::

                      base blob id (32) || inner (u8) || inner payload

                  inner 1 (ZSTD) or 2 (BYTEPLANE): the inner payload encodes ``plaintext XOR base
                  plaintext`` (equal lengths); inner 3 (SUB, format version 5): a BYTEPLANE payload
                  of element size k encoding, per k-byte little-endian element, ``plaintext - base``
                  modulo 2**(8k) (integer subtraction of the bit patterns), tail bytes XORed;
                  inner 4 (CAST, format version 7): a BF16 chunk derived from its F32 base of
                  twice its length (``codec/cast.py``).

An unknown id is refused with UnsupportedFormatError, never guessed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import zstandard

from weightvault.codec import floatplanes, kernels
from weightvault.codec.cast import INNER_CAST, uncast
from weightvault.codec.zstd_contexts import compressor, decompressor
from weightvault.errors import IntegrityError, UnsupportedFormatError

__all__ = [
    "BYTEPLANE", "CODEC_NAMES", "DELTA", "INNER_SUB", "RAW", "ZSTD", "Decision", "DecisionMemo", "compress_best",
    "compress_chunk", "decompress", "delta_base",
]

RAW = 0
ZSTD = 1
BYTEPLANE = 2
DELTA = 3
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", BYTEPLANE: "byteplane", DELTA: "delta"}
INNER_SUB = 3  # DELTA inner: byteplane of the element-wise integer difference (format version 5)
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
    allow_sub: bool = False,
) -> tuple[int, bytes]:
    """``compress_chunk`` without a prior decision; returns (codec id, payload)."""
    codec, payload, _ = compress_chunk(data, level, dtype, allow_byteplane, base, allow_sub)
    return codec, payload


@dataclass(frozen=True)
class Decision:
    """How a large chunk's delta was coded, kept so that the chunk's next version (whose base it
    is) can be coded the same way without a trial: integer difference or XOR, and the sizes per
    raw byte of the standalone coding (from the sample) and of the delta."""

    sub: bool
    alone: float
    delta: float
    kept: bool  # the delta was kept; else the chunk was coded standalone
    zstd: bool = False  # plain zstd was worth trying on the standalone chunk
    reuses: int = 0  # versions coded from this decision since the last sampled one

    def reusable(self) -> bool:
        """Clear enough to code the next version without a sample: a kept delta at most
        ``PRIOR_CONFIDENT`` of the standalone size, or a delta no smaller than standalone."""
        if self.reuses >= PRIOR_REUSES:
            return False
        return self.delta <= self.alone * PRIOR_CONFIDENT if self.kept else self.delta >= self.alone

    def again(self, delta: float | None = None) -> Decision:
        """This decision applied once more (with the new delta's size, if one was coded)."""
        return Decision(self.sub, self.alone, self.delta if delta is None else delta, self.kept, self.zstd,
                        self.reuses + 1)


class DecisionMemo:
    """The ``Decision`` of each recently stored delta blob by blob id (the newest ``capacity``),
    for ``compress_chunk``'s ``prior``. Thread-safe."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._items: dict[bytes, Decision] = {}

    def get(self, blob_id: bytes) -> Decision | None:
        return self._items.get(blob_id)

    def put(self, blob_id: bytes, decision: Decision | None) -> None:
        if decision is None:
            return
        with self._lock:
            if len(self._items) >= self._capacity:
                del self._items[next(iter(self._items))]
            self._items[blob_id] = decision


def compress_chunk(
    data: bytes | memoryview,
    level: int = 3,
    dtype: str | None = None,
    allow_byteplane: bool = False,
    base: tuple[bytes, bytes | memoryview] | None = None,
    allow_sub: bool = False,
    prior: Decision | None = None,
) -> tuple[int, bytes, Decision | None]:
    """Return (codec id, payload): RAW, ZSTD, BYTEPLANE (if allowed) or DELTA (if ``base`` =
    (base blob id, base plaintext) is given and has the same length as ``data``). A float chunk's
    delta is the XOR or, with ``allow_sub`` (format version 5), the integer difference of its
    elements (``INNER_SUB``), whichever codes smaller (on the sample, for a large chunk): the
    difference wins where values drift (F32 weights, AdamW second moments: 7-12 % smaller on a
    real fine-tuning run), the XOR where few low bits flip (BF16 exports).

    Every result is at most the raw size, and a compressed one must save >= 2 % over RAW. Without
    ``allow_byteplane`` (a format-v1 repository), or when ``dtype`` is not a float type of
    ``floatplanes.FLOAT_ELEMENT_SIZES``, or the data holds no whole element, the float codecs are
    not used (zstd-or-raw exactly as in format v1, or a delta with a zstd inner payload).

    A chunk under ``_SAMPLED_MIN`` (256 KiB) is coded every way that applies and the smallest kept
    (``_best_exact``): never larger than plain zstd. A larger chunk is decided from a sample of its
    middle (``_Sample``: at most 128 KiB, coded each way) and then coded in full only the chosen
    way, so each byte goes through one codec once: a delta when it codes the sample at least
    ``DELTA_MIN_GAIN / 2`` smaller than the standalone coding (and the full delta, checked
    against the standalone size the sample predicts, still pays; else the standalone coding is
    computed and the smaller kept), plain zstd over byteplane only when it came within
    ``ZSTD_SAMPLE_MARGIN`` of it on the sample. The price of sampling is that a chunk whose middle
    is unrepresentative may end up slightly larger than the best coding.

    The third element returned is the ``Decision`` taken for a large chunk that had a base (None
    otherwise). Given as ``prior`` when the chunk's next version is coded against this one, it
    spares that version the sample, for at most ``PRIOR_REUSES`` versions in a row: a standalone
    decision codes it standalone the same way; a clear delta decision (the delta at most
    ``PRIOR_CONFIDENT`` of the standalone size) codes the delta the same way and keeps it if it
    passes the same checks against the standalone size the prior predicts, else the chunk is
    decided from its sample as usual. Every result still obeys the bounds above.
    """
    n = len(data)
    k = floatplanes.FLOAT_ELEMENT_SIZES.get(dtype or "", 0)
    if not allow_byteplane or n < k:
        k = 0
    limit = int(n * (1 - _MIN_SAVING))
    if base is not None and (len(base[1]) != n or n == 0):
        base = None
    if base is not None and len(base[0]) != _ID_SIZE:
        raise ValueError("a delta base id has 32 bytes")
    sub = allow_sub and k > 0
    if n < _SAMPLED_MIN:
        return (*_best_exact(data, level, k, base, limit, sub), None)
    if base is not None and prior is not None and prior.reusable():
        if not prior.kept:
            return (*_standalone(data, level, k, prior.zstd, limit), prior.again())
        delta = _delta_payload(data, base, level, k, prior.sub and sub)
        if _delta_keeps(len(delta), n, limit, prior.alone * n):
            return DELTA, delta, prior.again(len(delta) / n)
    sample = _Sample(data, base, level, k, sub)
    if base is None:
        return (*_standalone(data, level, k, sample.zstd_may_win(), limit), None)
    alone, zstd, use_sub = sample.alone_size() / sample.length, sample.zstd_may_win(), sample.sub_wins()
    if not sample.delta_pays():
        tried = sample.best_delta() / sample.length
        return (*_standalone(data, level, k, zstd, limit), Decision(use_sub, alone, tried, False, zstd))
    delta = _delta_payload(data, base, level, k, use_sub)
    if _delta_keeps(len(delta), n, limit, alone * n):
        return DELTA, delta, Decision(use_sub, alone, len(delta) / n, True, zstd)
    codec, payload = _standalone(data, level, k, zstd, limit)
    kept = len(delta) <= min(limit, len(payload) * (1 - DELTA_MIN_GAIN))
    decision = Decision(use_sub, len(payload) / n, len(delta) / n, kept, zstd)
    return (DELTA, delta, decision) if kept else (codec, payload, decision)


def _delta_keeps(size: int, n: int, limit: int, expected: float) -> bool:
    """A delta of ``size`` bytes for ``n`` raw is kept without coding the chunk standalone: it
    saves ``DELTA_MIN_GAIN`` over raw and half that over the ``expected`` standalone size."""
    return size <= min(limit, n * (1 - DELTA_MIN_GAIN)) and size <= expected * (1 - DELTA_MIN_GAIN / 2)


def _standalone(data: bytes | memoryview, level: int, k: int, try_zstd: bool, limit: int) -> tuple[int, bytes]:
    """The best of byteplane (when ``k``), plain zstd (when ``try_zstd`` or not ``k``) and raw."""
    if not k:
        packed = compressor(level).compress(data)
        return (ZSTD, packed) if len(packed) <= limit else (RAW, bytes(data))
    planes = floatplanes.encode(data, k, level)
    best = (BYTEPLANE, planes) if len(planes) <= limit else (RAW, bytes(data))
    if try_zstd:
        packed_z = _zstd_unless_larger(data, level, min(limit, len(best[1])))
        if packed_z is not None:
            return ZSTD, packed_z
    return best


def _inner(data: bytes | memoryview, base: bytes | memoryview, level: int, k: int, sub: bool) -> tuple[int, bytes]:
    """(inner byte, inner payload) of the delta of ``data`` against ``base``: the integer
    difference (``sub``) or the XOR, byteplane-coded without rotation (their top bytes are mostly
    zero, not exponents) for a float dtype, else the XOR with zstd."""
    if k:  # the delta made within the plane split (one pass)
        mode = kernels.SUB if sub else kernels.XOR
        return (INNER_SUB if sub else BYTEPLANE), floatplanes.encode(data, k, level, False, base, mode)
    xor = np.bitwise_xor(np.frombuffer(data, dtype=np.uint8), np.frombuffer(base, dtype=np.uint8)).data
    return ZSTD, compressor(level).compress(xor)


def _delta_payload(data: bytes | memoryview, base: tuple[bytes, bytes | memoryview], level: int, k: int,
                   sub: bool = False) -> bytes:
    """The DELTA payload of ``data`` against ``base`` (``_inner``)."""
    inner_codec, inner = _inner(data, base[1], level, k, sub)
    return kernels.concat((base[0], bytes((inner_codec,)), inner))  # the copy without the GIL


def _best_exact(
    data: bytes | memoryview, level: int, k: int, base: tuple[bytes, bytes | memoryview] | None, limit: int,
    sub: bool = False,
) -> tuple[int, bytes]:
    """Every applicable coding of a small chunk, the smallest kept; a delta only if it is
    ``DELTA_MIN_GAIN`` smaller than every standalone coding (a delta makes restores decode its
    base too). Standalone candidates stop early once they cannot win."""
    n = len(data)
    bound = limit
    delta = None
    if base is not None:
        delta = _delta_payload(data, base, level, k)
        if sub:
            other = _delta_payload(data, base, level, k, sub=True)
            delta = other if len(other) < len(delta) else delta
        bound = min(limit, int(len(delta) / (1 - DELTA_MIN_GAIN)))
    best: tuple[int, bytes] | None = None
    if k:
        planes = floatplanes.encode_within(data, k, level, bound=bound)
        if planes is not None:
            best, bound = (BYTEPLANE, planes), len(planes)
    packed_z = _zstd_unless_larger(data, level, bound)
    if packed_z is not None:
        return ZSTD, packed_z
    if best is not None:
        return best
    if delta is not None and len(delta) <= n * (1 - DELTA_MIN_GAIN):
        return DELTA, delta
    return RAW, bytes(data)


_SAMPLED_MIN = 256 * 1024
_SAMPLE_MAX = 128 * 1024
ZSTD_SAMPLE_MARGIN = 0.03  # plain zstd must come within 3 % of byteplane on the sample to be tried
PRIOR_CONFIDENT = 0.8  # a base's delta decision is reused where its delta was at most 80 % of standalone
PRIOR_REUSES = 4  # ... for at most 4 versions in a row; the 5th is sampled again (values drift)


class _Sample:
    """A chunk's middle (a quarter of it, at most ``_SAMPLE_MAX`` bytes, whole 64-byte blocks)
    coded every way that applies; the sizes decide how the whole chunk is coded."""

    def __init__(self, data: bytes | memoryview, base: tuple[bytes, bytes | memoryview] | None, level: int,
                 k: int, sub: bool = False) -> None:
        n = len(data)
        self.length = min(_SAMPLE_MAX, n // 4) // 64 * 64
        start = (n // 2 - self.length // 2) // 64 * 64
        view = memoryview(data)[start : start + self.length]
        self.zstd = len(compressor(level).compress(view))
        self.planes = len(floatplanes.encode(view, k, level)) if k else None
        self.delta: int | None = None
        self.sub: int | None = None
        if base is not None:
            bview = memoryview(base[1])[start : start + self.length]
            self.delta = len(_inner(view, bview, level, k, False)[1])
            if sub:
                self.sub = len(_inner(view, bview, level, k, True)[1])

    def sub_wins(self) -> bool:
        """The integer difference coded the sample smaller than the XOR."""
        return self.sub is not None and self.delta is not None and self.sub < self.delta

    def best_delta(self) -> int:
        """The sample's smallest delta coding (its raw length without a base)."""
        if self.delta is None:
            return self.length
        return min(self.delta, self.sub) if self.sub is not None else self.delta

    def alone_size(self) -> int:
        """The sample's smallest standalone coding (raw included)."""
        return min(self.length, self.zstd, self.planes if self.planes is not None else self.length)

    def delta_pays(self) -> bool:
        return self.delta is not None and self.best_delta() < self.alone_size() * (1 - DELTA_MIN_GAIN / 2)

    def zstd_may_win(self) -> bool:
        """Plain zstd is worth running over the whole float chunk: it came within
        ``ZSTD_SAMPLE_MARGIN`` of byteplane on the sample. On real weights and optimizer states it
        practically never does."""
        return self.planes is None or self.zstd < self.planes * (1 + ZSTD_SAMPLE_MARGIN)


def delta_base(payload: bytes | bytearray | memoryview) -> bytes:
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
    codec: int, payload: bytes | bytearray | memoryview, raw_length: int, base: bytes | bytearray | None = None
) -> bytes | bytearray:
    """Invert ``compress_best``. Raises IntegrityError if the output length is not ``raw_length``.

    A DELTA payload needs ``base``, the plaintext of the blob named by ``delta_base(payload)``;
    the caller fetches it (and verifies the result's id, as for every codec). BYTEPLANE and DELTA
    results are built in place in a ``bytearray`` (one buffer per chunk, no final copy)."""
    if codec == DELTA:
        base_id = delta_base(payload)
        if base is None:
            raise IntegrityError(f"delta blob needs the plaintext of its base {base_id.hex()}")
        inner_codec = payload[_ID_SIZE]
        inner = memoryview(payload)[_ID_SIZE + 1 :]  # a view: the payload is not copied
        if inner_codec == INNER_CAST:  # a BF16 export of its F32 base (format version 7)
            residual = decompress(ZSTD, inner, raw_length)
            return uncast(residual, base, raw_length, f"delta blob on base {base_id.hex()}")
        if len(base) != raw_length:
            raise IntegrityError(f"delta base {base_id.hex()} has {len(base)} bytes, the blob {raw_length}")
        if inner_codec not in (ZSTD, BYTEPLANE, INNER_SUB):
            raise IntegrityError(f"delta payload has inner codec {inner_codec}; expected 1, 2, 3 or 4")
        if inner_codec != ZSTD:  # byte planes of the difference or XOR: rebuilt in their join
            return floatplanes.decode(inner, raw_length, base, kernels.SUB if inner_codec == INNER_SUB else kernels.XOR)
        diff = decompress(ZSTD, inner, raw_length)
        out_buf = diff if isinstance(diff, bytearray) else bytearray(diff)
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
