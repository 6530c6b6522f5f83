"""BF16 exports derived from their F32 originals: DELTA inner codec 4 (CAST, format version 7).

A model saved as F32 and exported as BF16 next to it stores the export twice: BF16 is the F32
tensor rounded to nearest, ties to even. A BF16 chunk whose F32 original (the same elements of
the same tensor, twice its length) is stored is kept as a DELTA against that chunk with inner
payload::

    ZSTD frame (content size = raw length) of  plaintext XOR bf16(base)

where ``bf16(base)``, per little-endian 32-bit element ``x`` of the base, is the 16-bit
``((x + 0x7FFF + ((x >> 16) & 1)) mod 2**32) >> 16``. Where the export was made by rounding to
nearest even (``torch.Tensor.to(torch.bfloat16)``, NumPy-free exporters alike) the residual is all
zeros except for NaNs, and a 2 MiB chunk costs a few dozen bytes; any other rounding is still
exact (the residual carries every difference), only larger. Decoding is verified like every blob
(the blob id is the keyed hash of the result).
"""

from __future__ import annotations

from weightvault.codec import kernels
from weightvault.codec.buffers import uninitialized
from weightvault.codec.zstd_contexts import compressor
from weightvault.errors import IntegrityError

__all__ = ["CAST_KEEP", "INNER_CAST", "cast_inner", "uncast"]

INNER_CAST = 4
#: writer policy: a cast is kept only if its payload is at most this fraction of the raw length
CAST_KEEP = 1 / 16


def cast_inner(data: bytes | memoryview, base: bytes | bytearray | memoryview, level: int) -> bytes | None:
    """The inner payload (after the inner byte) of ``data`` as a cast of ``base``, or None when
    the shapes do not fit (``base`` must hold exactly twice as many bytes, ``data`` whole BF16
    elements)."""
    n = len(data)
    if n == 0 or n % 2 or len(base) != 2 * n:
        return None
    residual = uninitialized(n)  # every byte written by the XOR
    kernels.bf16_xor(data, base, residual)
    return compressor(level).compress(residual)


def uncast(residual: bytes | bytearray, base: bytes | bytearray, raw_length: int, what: str) -> bytearray:
    """Rebuild the plaintext (a new buffer) from its decompressed ``residual`` (``raw_length``
    bytes) and the base plaintext; IntegrityError if the lengths do not fit a cast."""
    if raw_length % 2 or len(base) != 2 * raw_length or len(residual) != raw_length:
        raise IntegrityError(f"{what}: a cast needs a base of twice its {raw_length} bytes, got {len(base)}")
    out = uninitialized(raw_length)  # every byte written by the XOR below
    kernels.bf16_xor(residual, base, out)
    return out
