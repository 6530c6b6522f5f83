"""Tensor-aligned splitter for GGUF (llama.cpp) model files, versions 2 and 3, either byte order.

Layout: ``GGUF``, u32 version, u64 tensor_count, u64 kv_count, the key/value metadata, the tensor
infos (name, n_dims, dims, ggml type, offset relative to the data section), padding to
``general.alignment`` (default 32), then the data section. The plan comes from ``tensor_plan``:
the header, metadata, infos and padding (up to the first tensor) become one region
(content-defined cuts beyond 4 MiB); each tensor, however small, then gets its own fixed aligned
sub-chunks of at most 4 MiB with a dtype hint for plain types (quantized types get none). A
tensor's range runs to the next tensor's offset (alignment padding included), the last one to EOF.
Files below the minimum chunk size stay one chunk. The parser is bounded (counts, lengths,
nesting, total items, header size) and anything malformed sends the whole file to generic CDC.
Validation reads tensor infos through the same parser (``gguf_header``, with a ``strict`` mode).

Byte order: ``gguf.GGUFWriter(endianess=GGUFEndian.BIG)`` writes every integer (and the tensor
data) big-endian, so the version reads 0x03000000 little-endian; the version field decides the
order. Big-endian tensors get no dtype hints (hints describe little-endian data).

Tensor sizes: ``GGML_TYPES`` is ggml's type table (block size, bytes per block) as the gguf
package states it (``GGML_QUANT_SIZES`` in gguf-py/gguf/constants.py, gguf 0.19.0): a tensor of
``numel`` elements holds ``numel / block * bytes`` bytes, with ``dims[0]`` a multiple of the block.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
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

__all__ = ["GGML_DTYPES", "GGML_TYPES", "MAX_HEADER", "GgufHeader", "GgufSplitter", "gguf_header", "gguf_tensors",
           "plan_gguf"]

MAGIC = b"GGUF"
MAX_HEADER = 256 * 1024 * 1024  # header + metadata + infos beyond this: generic CDC
MAX_COUNT = 1 << 22  # tensors, keys
MAX_ITEMS = 1 << 24  # array items over the whole metadata
MAX_DIMS = 8
DEFAULT_ALIGNMENT = 32
SPLIT_READAHEAD = 1 << 20  # the splitter reads the header in steps of this size (it reads the file anyway)

# The plain ggml types and their names in Chunk.dtype (hints for little-endian files only).
GGML_DTYPES: dict[int, str] = {0: "F32", 1: "F16", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 30: "BF16"}

# ggml type id: (name, elements per block, bytes per block); GGML_QUANT_SIZES of gguf 0.19.0.
# Ids 4, 5 (Q4_2, Q4_3), 31-33 and 36-38 (repacked Q4_0/IQ4_NL variants) were removed from ggml.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

# Metadata value types: fixed sizes (string = 8, array = 9 are variable).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_INT_FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 10: "Q", 11: "q"}  # after the byte order
_STRING, _ARRAY = 8, 9


class _Bad(Exception):
    """Not a GGUF file this splitter trusts."""


class _Reader:
    """Reads the header incrementally from offset 0, never beyond MAX_HEADER or the file, at least
    ``readahead`` bytes at a time (0: exactly what is needed, so that reads through a backed-up
    file's blobs stop at the header)."""

    def __init__(self, stream: BinaryIO, size: int, readahead: int = SPLIT_READAHEAD) -> None:
        self.order = "<"  # "<" or ">", once the version is read
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
        v: int = struct.unpack_from(self.order + fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u32(self) -> int:
        return self.unpack("I", 4)

    def u64(self) -> int:
        return self.unpack("Q", 8)

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


@dataclass(frozen=True, slots=True)
class _Parsed:
    version: int
    byte_order: str  # "little" or "big"
    alignment: int
    data_start: int
    infos: list[_Info]


def _parse(stream: BinaryIO, size: int, readahead: int = SPLIT_READAHEAD) -> _Parsed:
    """The header's layout and tensor infos; raise _Bad if malformed."""
    r = _Reader(stream, size, readahead)
    r.need(24)
    if bytes(r.buf[:4]) != MAGIC:
        raise _Bad("magic")
    (version,) = struct.unpack_from("<I", r.buf, 4)
    if version not in (2, 3):
        (version,) = struct.unpack_from(">I", r.buf, 4)
        if version not in (2, 3):
            raise _Bad(f"version {version:#x} (in either byte order)")
        r.order = ">"
    r.pos = 8
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
    return _Parsed(version, "big" if r.order == ">" else "little", alignment, data_start, infos)


def _nbytes(t: _Info) -> int | None:
    """The tensor's data length by ggml's table, None for an unknown type or a first dimension
    that is not a whole number of blocks."""
    known = GGML_TYPES.get(t.ggml_type)
    if known is None:
        return None
    _, block, type_size = known
    if t.numel and (t.dims[0] if t.dims else 1) % block:
        return None
    return t.numel // block * type_size


def _ranges(data_start: int, infos: list[_Info], size: int, hints: bool = True) -> list[TensorRange]:
    """Each non-empty tensor's range, from its offset to the next tensor's (or EOF), in file order;
    a tensor of a plain type must fit its range (the lenient check: quantised sizes are strict
    mode's). Plain types get dtype hints if ``hints``."""
    order = sorted(infos, key=lambda t: t.offset)
    starts = [data_start + t.offset for t in order]
    for t, s in zip(order, starts, strict=True):
        if s > size:
            raise _Bad(f"tensor {t.name.decode('utf-8', 'replace')!r:.200} starts past the end of the file")
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
        plain = GGML_DTYPES.get(gtype)
        if plain is not None and numel * DTYPE_SIZES[plain] > end - start:
            raise _Bad(f"tensor {name.decode('utf-8', 'replace')!r:.200} larger than its range")
        dtype = plain if hints else None
        if dtype is not None and (end - start) % DTYPE_SIZES[dtype]:
            dtype = None
        ranges.append(TensorRange(start, end, name.decode("utf-8", "replace"), dtype,
                                  DTYPE_SIZES[dtype] if dtype else 1))
        cursor = end
    return ranges


@dataclass(frozen=True, slots=True)
class GgufHeader:
    """A parsed GGUF header: ``tensors`` are (name, ggml type id, dims) in the order of the infos
    (dims as stored: ``dims[0]`` is the innermost, contiguous one); the data section starts at
    ``data_start``; ``byte_order`` is "little" or "big"; ``warnings`` name what was accepted
    unchecked (a ggml type this parser does not know)."""

    version: int
    byte_order: str
    alignment: int
    data_start: int
    tensors: list[tuple[str, int, tuple[int, ...]]]
    warnings: list[str] = field(default_factory=list)


def gguf_header(stream: BinaryIO, size: int, *, strict: bool = False) -> GgufHeader:
    """Parse a GGUF file's header, reading the header only and no byte beyond it; ValueError
    naming the problem (and the tensor, where there is one).

    Both modes make the splitter's bounds checks: header, counts, offsets inside the file, no
    overlaps, a tensor of a plain type no longer than its range (to the next tensor or EOF).
    ``strict`` (validation) also checks what llama.cpp's loader checks: no tensor name twice,
    ``dims[0]`` a whole number of blocks, every offset a multiple of the alignment and equal to
    the end of the tensor before it (in info order) padded to the alignment, and every tensor's
    ``numel / block * bytes`` bytes inside the file (a truncated file names its first cut tensor).
    A type missing from ``GGML_TYPES`` is no failure in either mode: a warning, and its length
    is unchecked (the next tensor's offset is then taken as it is).
    """
    try:
        p = _parse(stream, size, readahead=0)
        _ranges(p.data_start, p.infos, size)
    except (_Bad, struct.error) as exc:
        raise ValueError(f"bad GGUF: {exc}") from None
    tensors = [(t.name.decode("utf-8", "replace"), t.ggml_type, t.dims) for t in p.infos]
    warnings = [f"tensor {name!r:.200}: ggml type {gtype} is not one this parser knows; its length is unchecked"
                for name, gtype, _ in tensors if gtype not in GGML_TYPES]
    if strict:
        _check_strict(p, tensors, size)
    return GgufHeader(p.version, p.byte_order, p.alignment, p.data_start, tensors, warnings)


def _check_strict(p: _Parsed, tensors: list[tuple[str, int, tuple[int, ...]]], size: int) -> None:
    if len({name for name, _, _ in tensors}) != len(tensors):
        raise ValueError("bad GGUF: a tensor name occurs twice")
    expected: int | None = 0  # where the next tensor must start (None: after an unknown type)
    before = "the data section's start"
    for t, (name, gtype, dims) in zip(p.infos, tensors, strict=True):
        if t.offset % p.alignment:
            raise ValueError(f"bad GGUF: tensor {name!r:.200} at offset {t.offset} is not {p.alignment}-byte aligned")
        if expected is not None and t.offset != expected:
            raise ValueError(f"bad GGUF: tensor {name!r:.200} at offset {t.offset}, but {before} puts it at"
                             f" {expected} (tensors follow each other, padded to {p.alignment} bytes)")
        before = f"the size of tensor {name!r:.200} ({_type_name(gtype)} {list(dims)})"
        known = GGML_TYPES.get(gtype)
        if known is None:
            expected = None
            continue
        tname, block, _ = known
        nbytes = _nbytes(t)
        if nbytes is None:
            raise ValueError(f"bad GGUF: tensor {name!r:.200}: dims {list(dims)} of {tname}: dims[0] is not a multiple"
                             f" of its block of {block}")
        if p.data_start + t.offset + nbytes > size:
            raise ValueError(f"bad GGUF: tensor {name!r:.200}: {nbytes} bytes of {tname} for dims {list(dims)} run past"
                             f" the end of the file ({size} bytes; truncated?)")
        expected = t.offset + -(-nbytes // p.alignment) * p.alignment


def _type_name(gtype: int) -> str:
    """A ggml type's name, or its id for a type this parser does not know."""
    known = GGML_TYPES.get(gtype)
    return known[0] if known else f"type {gtype}"


def gguf_tensors(stream: BinaryIO, size: int, *, strict: bool = False) -> list[tuple[str, int, tuple[int, ...]]]:
    """(name, ggml type, dims) of every tensor in the order of the infos: ``gguf_header``'s
    ``tensors``, with its checks."""
    return gguf_header(stream, size, strict=strict).tensors


def plan_gguf(stream: BinaryIO, params: ChunkerParams) -> list[Piece]:
    """The chunk plan of a GGUF stream; _Bad or ValueError if it is not a GGUF file this splitter
    trusts."""
    size = file_size(stream)
    plan = PlanBuilder(piece_size(params), small=0, regions=True)  # no grouping: a chunk per tensor
    if size >= params.min_size:  # smaller files are one chunk, as with CDC
        p = _parse(stream, size)
        plan.tensors(_ranges(p.data_start, p.infos, size, hints=p.byte_order == "little"), size)
    plan.region(size)
    return plan.finish(size)


class GgufSplitter:
    """Splits GGUF files into the header region and per-tensor aligned sub-chunks."""

    name = "gguf"

    def accepts(self, name: bytes, head: bytes) -> bool:
        return head.startswith(MAGIC)

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        return split_or_fallback(stream, params, lambda: plan_gguf(stream, params))
