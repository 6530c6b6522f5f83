"""Tensor-aligned splitter for GGUF (llama.cpp) model files, versions 2 and 3, little-endian.

Layout: ``GGUF``, u32 version, u64 tensor_count, u64 kv_count, the key/value metadata, the tensor
infos (name, n_dims, dims, ggml type, offset relative to the data section), padding to
``general.alignment`` (default 32), then the data section. The plan comes from ``tensor_plan``:
the header, metadata, infos and padding (up to the first tensor) become one region
(content-defined cuts beyond 4 MiB); each tensor, however small, then gets its own fixed aligned
sub-chunks of at most 4 MiB with a dtype hint for plain types (quantized types get none). A
tensor's range runs to the next tensor's offset (alignment padding included), the last one to EOF.
Files below the minimum chunk size stay one chunk. The parser is bounded (counts, lengths,
nesting, total items, header size) and anything malformed sends the whole file to generic CDC.
Validation reads tensor infos through the same parser (``gguf_tensors``, with a ``strict`` mode).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from weightvault.chunking.base import DTYPE_SIZES, Chunk, ChunkerParams
from weightvault.chunking.tensor_plan import (
    Piece,
    PlanBuilder,
    TensorRange,
    file_size,
    piece_size,
    split_or_fallback,
)

__all__ = ["GGML_DTYPES", "MAX_HEADER", "GgufSplitter", "gguf_tensors", "plan_gguf"]

MAGIC = b"GGUF"
MAX_HEADER = 256 * 1024 * 1024  # header + metadata + infos beyond this: generic CDC
MAX_COUNT = 1 << 22  # tensors, keys
MAX_ITEMS = 1 << 24  # array items over the whole metadata
MAX_DIMS = 8
DEFAULT_ALIGNMENT = 32
SPLIT_READAHEAD = 1 << 20  # the splitter reads the header in steps of this size (it reads the file anyway)

GGML_DTYPES: dict[int, str] = {0: "F32", 1: "F16", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 30: "BF16"}

# Metadata value types: fixed sizes (string = 8, array = 9 are variable).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_INT_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
_STRING, _ARRAY = 8, 9


class _Bad(Exception):
    """Not a GGUF file this splitter trusts."""


class _Reader:
    """Reads the header incrementally from offset 0, never beyond MAX_HEADER or the file, at least
    ``readahead`` bytes at a time (0: exactly what is needed, so that reads through a backed-up
    file's blobs stop at the header)."""

    def __init__(self, stream: BinaryIO, size: int, readahead: int = SPLIT_READAHEAD) -> None:
        self.stream = stream
        self.readahead = readahead
        self.limit = min(size, MAX_HEADER)
        self.buf = bytearray()
        self.pos = 0
        self.items = 0
        stream.seek(0)

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.limit:
            raise _Bad("header runs past the file or the header size limit")
        while len(self.buf) < self.pos + n:
            more = self.stream.read(max(self.readahead, self.pos + n - len(self.buf)))
            if not more:
                raise _Bad("short read")
            self.buf += more

    def skip(self, n: int) -> None:
        self.need(n)
        self.pos += n

    def unpack(self, fmt: str, n: int) -> int:
        self.need(n)
        v: int = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u32(self) -> int:
        return self.unpack("<I", 4)

    def u64(self) -> int:
        return self.unpack("<Q", 8)

    def string(self) -> bytes:
        n = self.u64()
        self.need(n)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s

    def value(self, vtype: int, depth: int = 0) -> int | None:
        """Consume one metadata value; return it if it is an integer, else None."""
        if vtype in _INT_FMT:
            return self.unpack(_INT_FMT[vtype], _FIXED[vtype])
        if vtype in _FIXED:
            self.skip(_FIXED[vtype])
        elif vtype == _STRING:
            self.skip(self.u64())
        elif vtype == _ARRAY:
            if depth >= 3:
                raise _Bad("arrays nested too deeply")
            itype, count = self.u32(), self.u64()
            self.items += count
            if self.items > MAX_ITEMS:
                raise _Bad("too many array items")
            if itype in _FIXED:
                self.skip(count * _FIXED[itype])
            elif itype == _STRING:
                self.need(count * 8)  # each string has at least its length field
                for _ in range(count):
                    self.skip(self.u64())
            elif itype == _ARRAY:
                self.need(count * 12)
                for _ in range(count):
                    self.value(_ARRAY, depth + 1)
            else:
                raise _Bad(f"unknown array item type {itype}")
        else:
            raise _Bad(f"unknown value type {vtype}")
        return None


@dataclass(frozen=True, slots=True)
class _Info:
    name: bytes
    ggml_type: int
    offset: int  # relative to the data section
    dims: tuple[int, ...]
    numel: int


def _parse(stream: BinaryIO, size: int, readahead: int = SPLIT_READAHEAD) -> tuple[int, int, list[_Info]]:
    """(data section start, alignment, tensor infos); raise _Bad if malformed."""
    r = _Reader(stream, size, readahead)
    r.need(24)
    if bytes(r.buf[:4]) != MAGIC:
        raise _Bad("magic")
    r.pos = 4
    version = r.u32()
    if version not in (2, 3):
        raise _Bad(f"version {version}")
    n_tensors, n_kv = r.u64(), r.u64()
    if n_tensors > MAX_COUNT or n_kv > MAX_COUNT or n_tensors * 24 + n_kv * 12 > size:
        raise _Bad("absurd counts")
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = r.string()
        vtype = r.u32()
        v = r.value(vtype)
        if key == b"general.alignment":
            if v is None or v <= 0 or v & (v - 1) or v > 1 << 20:
                raise _Bad("general.alignment")
            alignment = v
    infos: list[_Info] = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.u32()
        if n_dims > MAX_DIMS:
            raise _Bad("n_dims")
        dims = tuple(r.u64() for _ in range(n_dims))
        numel = 1
        for d in dims:
            numel *= d
        ggml_type, offset = r.u32(), r.u64()
        infos.append(_Info(name, ggml_type, offset, dims, numel))
    data_start = -(-r.pos // alignment) * alignment
    if data_start > size:
        raise _Bad("data section past EOF")
    return data_start, alignment, infos


def _ranges(data_start: int, infos: list[_Info], size: int) -> list[TensorRange]:
    """Each non-empty tensor's range, from its offset to the next tensor's (or EOF), in file order."""
    order = sorted(infos, key=lambda t: t.offset)
    starts = [data_start + t.offset for t in order]
    if any(s > size for s in starts):
        raise _Bad("tensor offset past EOF")
    ranges: list[TensorRange] = []
    cursor = 0
    for i, t in enumerate(order):
        name, gtype, numel = t.name, t.ggml_type, t.numel
        if numel == 0:
            continue  # an empty tensor may share its offset with the next one
        start = starts[i]
        j = bisect.bisect_right(starts, start)
        end = starts[j] if j < len(starts) else size
        if start < cursor or start == end:
            raise _Bad("tensors overlap")
        dtype = GGML_DTYPES.get(gtype)
        if dtype is not None:
            if numel * DTYPE_SIZES[dtype] > end - start:
                raise _Bad("tensor larger than its range")
            if (end - start) % DTYPE_SIZES[dtype]:
                dtype = None
        ranges.append(TensorRange(start, end, name.decode("utf-8", "replace"), dtype,
                                  DTYPE_SIZES[dtype] if dtype else 1))
        cursor = end
    return ranges


def gguf_tensors(stream: BinaryIO, size: int, *, strict: bool = False) -> list[tuple[str, int, tuple[int, ...]]]:
    """(name, ggml type, dims) of every tensor in file order of the infos, after the bounds checks
    the splitter makes (header, counts, offsets inside the file, no overlaps, a plain-typed tensor
    fits its range); reads the header only, and no byte beyond it. ``strict`` (validation) also wants every offset a
    multiple of the alignment and no tensor name twice. ValueError naming the problem."""
    try:
        data_start, alignment, infos = _parse(stream, size, readahead=0)
        _ranges(data_start, infos, size)
    except (_Bad, struct.error) as exc:
        raise ValueError(f"bad GGUF: {exc}") from None
    out = [(t.name.decode("utf-8", "replace"), t.ggml_type, t.dims) for t in infos]
    if strict:
        for t, (name, _, _) in zip(infos, out, strict=True):
            if t.offset % alignment:
                raise ValueError(f"bad GGUF: tensor {name!r} at offset {t.offset} is not {alignment}-byte aligned")
        if len({name for name, _, _ in out}) != len(out):
            raise ValueError("bad GGUF: a tensor name occurs twice")
    return out


def plan_gguf(stream: BinaryIO, params: ChunkerParams) -> list[Piece]:
    """The chunk plan of a GGUF stream; _Bad or ValueError if it is not a GGUF file this splitter
    trusts."""
    size = file_size(stream)
    plan = PlanBuilder(piece_size(params), small=0, regions=True)  # no grouping: a chunk per tensor
    if size >= params.min_size:  # smaller files are one chunk, as with CDC
        data_start, _alignment, infos = _parse(stream, size)
        plan.tensors(_ranges(data_start, infos, size), size)
    plan.region(size)
    return plan.finish(size)


class GgufSplitter:
    """Splits GGUF files into the header region and per-tensor aligned sub-chunks."""

    name = "gguf"

    def accepts(self, name: bytes, head: bytes) -> bool:
        return head.startswith(MAGIC)

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        return split_or_fallback(stream, params, lambda: plan_gguf(stream, params))
