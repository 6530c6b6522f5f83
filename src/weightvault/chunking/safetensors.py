"""Tensor-aligned splitting of safetensors files.

Layout: u64 little-endian header length N, N bytes of JSON ``{name: {"dtype", "shape",
"data_offsets": [b, e]}, "__metadata__": {...}}``, then the data section; tensor ``name`` lies at
``8 + N + b .. 8 + N + e``. The header becomes one chunk, each tensor its own element-aligned
chunks (see ``tensor_plan``), so a tensor's chunks are identical wherever the tensor moves in a
rewritten file. Anything inconsistent falls back to generic CDC over the whole file.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterator
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

__all__ = ["MAX_HEADER", "SafetensorsSplitter", "plan_safetensors"]

MAX_HEADER = 100 * 1000 * 1000  # safetensors' own limit on the JSON header


def _looks_like(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return 2 <= n <= MAX_HEADER and head[8:9] == b"{"


def _parse_header(raw: bytes, data_start: int, size: int) -> list[TensorRange]:
    """The tensors described by ``raw``, sorted by offset; ValueError if anything is off."""
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    tensors: list[TensorRange] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list):
            raise ValueError(f"tensor {name!r}: bad shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
            raise ValueError(f"tensor {name!r}: bad data_offsets")
        b, e = offsets
        size_of = DTYPE_SIZES[dtype]
        if not 0 <= b <= e or e - b != bounded_count(shape, size) * size_of or data_start + e > size:
            raise ValueError(f"tensor {name!r}: data_offsets {b}..{e} do not match its shape or the file")
        tensors.append(TensorRange(data_start + b, data_start + e, name, dtype, size_of))
    tensors.sort(key=lambda t: (t.start, t.end))
    for prev, cur in itertools.pairwise(tensors):
        if cur.start < prev.end:
            raise ValueError(f"tensors {prev.name!r} and {cur.name!r} overlap")
    return tensors


def plan_safetensors(stream: BinaryIO) -> list[Piece]:
    """The chunk plan of a safetensors stream; ValueError (or another exception from parsing
    hostile bytes) if it is not a consistent safetensors file."""
    size = file_size(stream)
    stream.seek(0)
    prefix = read_exact(stream, 8)
    if len(prefix) < 8:
        raise ValueError("truncated header length")
    (n,) = struct.unpack("<Q", prefix)
    if not 2 <= n <= MAX_HEADER or 8 + n > size:
        raise ValueError(f"header length {n} is out of range")
    raw = read_exact(stream, n)
    if len(raw) != n:
        raise ValueError("truncated header")
    tensors = _parse_header(raw, 8 + n, size)
    plan = PlanBuilder()
    plan.whole(8 + n, "__header__")
    plan.tensors(tensors, size)
    return plan.finish(size)


class SafetensorsSplitter:
    """Header chunk, then element-aligned tensor chunks; CDC for anything that does not parse."""

    name = "safetensors"

    def accepts(self, name: bytes, head: bytes) -> bool:
        return name.lower().endswith(b".safetensors") or _looks_like(head)

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        return split_or_fallback(stream, params, lambda: plan_safetensors(stream))
