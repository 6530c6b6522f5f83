"""Tensor-aligned splitting of safetensors files.

Layout: u64 little-endian header length N, N bytes of JSON ``{name: {"dtype", "shape",
"data_offsets": [b, e]}, "__metadata__": {...}}``, then the data section; tensor ``name`` lies at
``8 + N + b .. 8 + N + e``. The header becomes one chunk, each tensor its own element-aligned
chunks (see ``tensor_plan``), so a tensor's chunks are identical wherever the tensor moves in a
rewritten file. Anything inconsistent falls back to generic CDC over the whole file.
``parse_safetensors`` is the one header parser: lenient for the splitter, ``strict`` for
validation (``weightvault.ops.validate``).

Dtypes are those of the safetensors crate (``Dtype`` and ``Dtype::bitsize`` in
safetensors/src/tensor.rs, safetensors 0.8): sub-byte ones (F4, F6_*) pack their elements, so a
tensor holds ``numel * bits / 8`` bytes and that must be a whole number (the crate's rule). Chunk
dtype hints are given only for the names in ``DTYPE_SIZES``; other tensors get element-aligned
chunks without a hint. A dtype this table lacks (a newer format) is no error: the header's
``warnings`` name it and only that tensor's shape-to-length check is skipped.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from weightvault.chunking.base import DTYPE_SIZES, Chunk, ChunkerParams, has_suffix
from weightvault.chunking.tensor_plan import (
    Piece,
    PlanBuilder,
    TensorRange,
    bounded_count,
    file_size,
    read_exact,
    split_or_fallback,
)

__all__ = [
    "MAX_HEADER", "SAFETENSORS_DTYPE_BITS", "SafetensorsHeader", "SafetensorsSplitter", "SafetensorsTensor",
    "parse_safetensors", "plan_safetensors",
]

MAX_HEADER = 100 * 1000 * 1000  # safetensors' own limit on the JSON header

# Bits per element of every dtype the safetensors crate knows (safetensors/src/tensor.rs,
# ``Dtype::bitsize``; F4 is MXFP4's E2M1, F8_E8M0 the MX scale, C64 two F32s).
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "F64": 64, "I64": 64, "U64": 64, "C64": 64,
}


def _looks_like(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return 2 <= n <= MAX_HEADER and head[8:9] == b"{"


@dataclass(frozen=True, slots=True)
class SafetensorsTensor:
    """One tensor of a safetensors header; its bytes lie at ``start .. end`` of the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """A parsed header: the data section starts at ``data_start`` (8 + N); ``tensors`` are sorted
    by offset. ``warnings`` name what was accepted unchecked (a dtype this parser does not know)."""

    data_start: int
    tensors: list[SafetensorsTensor]
    warnings: list[str] = field(default_factory=list)


def parse_safetensors(stream: BinaryIO, size: int, *, strict: bool = False) -> SafetensorsHeader:
    """Parse the header of a safetensors file of ``size`` bytes from the stream's start, reading
    only its 8 + N header bytes; ValueError naming the first problem.

    Both modes check the header length against the file and safetensors' limit, the JSON, every
    entry's dtype, shape and offsets (inside the data section, length equal to shape x element
    bits / 8, a whole number of bytes) and that no two tensors overlap. A dtype name missing from
    ``SAFETENSORS_DTYPE_BITS`` only adds a warning and skips that tensor's length check. The
    splitter uses the lenient mode (gaps between tensors become untyped chunks); ``strict``
    (validation) also requires the tensors to cover the data section exactly: no gap before,
    between or after them.
    """
    stream.seek(0)
    prefix = read_exact(stream, 8)
    if len(prefix) < 8 or size < 8:
        raise ValueError("file is shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", prefix)
    if n > size - 8:
        raise ValueError(f"header length {n} runs past the end of the file ({size} bytes)")
    if n > MAX_HEADER:
        raise ValueError(f"header length {n} exceeds the format's limit of {MAX_HEADER} bytes")
    raw = read_exact(stream, n)
    if len(raw) != n:
        raise ValueError(f"header length {n} runs past the end of the file ({8 + len(raw)} bytes read)")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    data_start, data_len = 8 + n, size - 8 - n
    tensors: list[SafetensorsTensor] = []
    warnings: list[str] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise ValueError(f"tensor {name!r}: dtype {dtype!r:.100} is not a name")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise ValueError(f"tensor {name!r}: bad shape {shape!r:.100}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ValueError(f"tensor {name!r}: bad data_offsets")
        b, e = offsets
        if not 0 <= b <= e <= data_len:
            raise ValueError(f"tensor {name!r}: bytes {b}..{e} lie outside the data section ({data_len} bytes)")
        bits = SAFETENSORS_DTYPE_BITS.get(dtype)
        if bits is None:
            warnings.append(f"tensor {name!r}: dtype {dtype!r:.100} is not one this parser knows; its length"
                            " is unchecked")
        else:
            try:
                want_bits = bounded_count(shape, 8 * data_len) * bits
            except ValueError:
                raise ValueError(f"tensor {name!r}: shape {shape[:8]} holds more elements than the file can") from None
            if want_bits % 8:
                raise ValueError(f"tensor {name!r}: shape {shape} of {dtype} ({bits}-bit) is not a whole number"
                                 " of bytes")
            if e - b != want_bits // 8:
                raise ValueError(f"tensor {name!r}: {e - b} bytes for shape {shape} of {dtype}"
                                 f" ({want_bits // 8} expected)")
        tensors.append(SafetensorsTensor(name, dtype, tuple(shape), data_start + b, data_start + e))
    tensors.sort(key=lambda t: (t.start, t.end, t.name))
    pos = data_start
    for t in tensors:
        if t.start < pos or (strict and t.start != pos):
            where = "overlaps the tensor before it" if t.start < pos else "a gap precedes it"
            raise ValueError(f"tensor {t.name!r} starts at {t.start - data_start}: {where}")
        pos = t.end
    if strict and pos != size:
        raise ValueError(f"the data section has {data_len} bytes, the tensors cover {pos - data_start}"
                         " (truncated or padded)")
    return SafetensorsHeader(data_start, tensors, warnings)


def _range(t: SafetensorsTensor) -> TensorRange:
    """A tensor's plan range: a dtype hint only for ``DTYPE_SIZES`` names, cuts at whole elements
    where elements are whole bytes (else at any byte)."""
    if t.dtype in DTYPE_SIZES:
        return TensorRange(t.start, t.end, t.name, t.dtype, DTYPE_SIZES[t.dtype])
    bits = SAFETENSORS_DTYPE_BITS.get(t.dtype, 8)
    return TensorRange(t.start, t.end, t.name, None, bits // 8 if bits % 8 == 0 else 1)


def plan_safetensors(stream: BinaryIO) -> list[Piece]:
    """The chunk plan of a safetensors stream; ValueError (or another exception from parsing
    hostile bytes) if it is not a consistent safetensors file."""
    size = file_size(stream)
    header = parse_safetensors(stream, size)
    ranges = [_range(t) for t in header.tensors]
    plan = PlanBuilder()
    plan.whole(header.data_start, "__header__")
    plan.tensors(ranges, size)
    return plan.finish(size)


class SafetensorsSplitter:
    """Header chunk, then element-aligned tensor chunks; CDC for anything that does not parse."""

    name = "safetensors"

    def accepts(self, name: bytes, head: bytes) -> bool:
        return has_suffix(name, b".safetensors") or _looks_like(head)

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        return split_or_fallback(stream, params, lambda: plan_safetensors(stream))
