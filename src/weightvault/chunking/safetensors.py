"""Tensor-aligned splitting of safetensors files.

Layout: u64 little-endian header length N, N bytes of JSON ``{name: {"dtype", "shape",
"data_offsets": [b, e]}, "__metadata__": {...}}``, then the data section; tensor ``name`` lies at
``8 + N + b .. 8 + N + e``. The header becomes one chunk, each tensor its own element-aligned
chunks (see ``tensor_plan``), so a tensor's chunks are identical wherever the tensor moves in a
rewritten file. Anything inconsistent falls back to generic CDC over the whole file.
``parse_safetensors`` is the one header parser: lenient for the splitter, ``strict`` for
validation (``weightvault.ops.validate``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from weightvault.chunking.base import DTYPE_SIZES, Chunk, ChunkerParams
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
    "MAX_HEADER", "SafetensorsHeader", "SafetensorsSplitter", "SafetensorsTensor", "parse_safetensors",
    "plan_safetensors",
]

MAX_HEADER = 100 * 1000 * 1000  # safetensors' own limit on the JSON header


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
    by offset."""

    data_start: int
    tensors: list[SafetensorsTensor]


def parse_safetensors(stream: BinaryIO, size: int, *, strict: bool = False) -> SafetensorsHeader:
    """Parse the header of a safetensors file of ``size`` bytes from the stream's start, reading
    only its 8 + N header bytes; ValueError naming the first problem.

    Both modes check the header length against the file and safetensors' limit, the JSON, every
    entry's dtype, shape and offsets (inside the data section, length equal to shape x element
    size) and that no two tensors overlap. The splitter uses the lenient mode (gaps between tensors
    become untyped chunks); ``strict`` (validation) also requires the tensors to cover the data
    section exactly: no gap before, between or after them.
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
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r:.100}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise ValueError(f"tensor {name!r}: bad shape {shape!r:.100}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ValueError(f"tensor {name!r}: bad data_offsets")
        b, e = offsets
        if not 0 <= b <= e <= data_len:
            raise ValueError(f"tensor {name!r}: bytes {b}..{e} lie outside the data section ({data_len} bytes)")
        try:
            want = bounded_count(shape, data_len) * DTYPE_SIZES[dtype]
        except ValueError:
            raise ValueError(f"tensor {name!r}: shape {shape[:8]} holds more elements than the file can") from None
        if e - b != want:
            raise ValueError(f"tensor {name!r}: {e - b} bytes for shape {shape} of {dtype} ({want} expected)")
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
    return SafetensorsHeader(data_start, tensors)


def plan_safetensors(stream: BinaryIO) -> list[Piece]:
    """The chunk plan of a safetensors stream; ValueError (or another exception from parsing
    hostile bytes) if it is not a consistent safetensors file."""
    size = file_size(stream)
    header = parse_safetensors(stream, size)
    ranges = [TensorRange(t.start, t.end, t.name, t.dtype, DTYPE_SIZES[t.dtype]) for t in header.tensors]
    plan = PlanBuilder()
    plan.whole(header.data_start, "__header__")
    plan.tensors(ranges, size)
    return plan.finish(size)


class SafetensorsSplitter:
    """Header chunk, then element-aligned tensor chunks; CDC for anything that does not parse."""

    name = "safetensors"

    def accepts(self, name: bytes, head: bytes) -> bool:
        return name.lower().endswith(b".safetensors") or _looks_like(head)

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        return split_or_fallback(stream, params, lambda: plan_safetensors(stream))
