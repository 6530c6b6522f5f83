"""Shared machinery of the tensor-aware splitters: turn tensor byte ranges into a chunk plan that
tiles a file, then read the plan sequentially.

A plan is a list of ``Piece``s (offset, length and hints) covering ``[0, size)`` exactly. Tensor
data is cut at element boundaries in pieces of at most ``TENSOR_CHUNK`` bytes; runs of adjacent
small tensors of one dtype are grouped into pieces of at most ``GROUP_MAX`` bytes; everything else
(headers, padding, bytes no tensor claims) becomes opaque pieces of at most ``OPAQUE_CHUNK`` bytes
unless given as a single named piece. ``read_plan`` turns a plan into ``Chunk``s and keeps the
tiling contract even if the file shrinks or grows while it is read.
"""

from __future__ import annotations

import io
import os
import stat
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from weightvault.chunking.registry import Chunk

__all__ = [
    "GROUP_MAX", "OPAQUE_CHUNK", "SMALL_TENSOR", "TENSOR_CHUNK", "Piece", "PlanBuilder", "TensorRange",
    "bounded_count", "file_size", "read_exact", "read_plan",
]

TENSOR_CHUNK = 4 * 1024 * 1024  # largest piece of one tensor (rounded down to whole elements)
SMALL_TENSOR = 256 * 1024  # tensors below this may share a piece with their neighbours
GROUP_MAX = 1024 * 1024  # largest piece made of several small tensors
OPAQUE_CHUNK = 1024 * 1024  # largest piece of bytes that belong to no tensor
_GROUP_MIN_CUT = 32 * 1024  # a group may end at a name-defined boundary once it holds this much


@dataclass(frozen=True, slots=True)
class TensorRange:
    """One tensor's bytes ``[start, end)`` in the file; ``itemsize`` is its element size (pieces
    are cut at multiples of it). An empty ``name`` gives chunks without a tensor name."""

    start: int
    end: int
    name: str
    dtype: str | None
    itemsize: int


@dataclass(frozen=True, slots=True)
class Piece:
    """One planned chunk: ``length`` bytes at ``offset`` with the hints its ``Chunk`` will carry."""

    offset: int
    length: int
    dtype: str | None = None
    tensor: str | None = None
    part: int = 0


def _name_cut(name: str) -> bool:
    """A content-defined group boundary: depends on the tensor's name only, so groups re-align
    after a tensor is inserted or removed earlier in the file."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % 4 == 0


class PlanBuilder:
    """Appends pieces in file order; raises ValueError if asked to go backwards or leave a hole."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self.pos = 0

    def whole(self, end: int, tensor: str | None = None) -> None:
        """``[pos, end)`` as one piece (a header)."""
        self._check(end)
        if end > self.pos:
            self.pieces.append(Piece(self.pos, end - self.pos, None, tensor))
            self.pos = end

    def opaque(self, end: int) -> None:
        """``[pos, end)`` in pieces of at most ``OPAQUE_CHUNK`` bytes, without hints."""
        self._check(end)
        while self.pos < end:
            n = min(OPAQUE_CHUNK, end - self.pos)
            self.pieces.append(Piece(self.pos, n))
            self.pos += n

    def tensors(self, ranges: Iterable[TensorRange], end: int) -> None:
        """Tensors (sorted, non-overlapping, within ``[pos, end)``), then opaque bytes up to ``end``.

        Empty tensors produce nothing; gaps between tensors become opaque pieces.
        """
        group: list[TensorRange] = []

        def flush() -> None:
            if group:
                first, last = group[0], group[-1]
                self.pieces.append(Piece(first.start, last.end - first.start, first.dtype, first.name or None))
                self.pos = last.end
                group.clear()

        for t in ranges:
            cur = group[-1].end if group else self.pos
            if t.start < cur or t.end < t.start or t.end > end:
                raise ValueError(f"tensor {t.name!r} at {t.start}..{t.end} overlaps or lies outside the data")
            length = t.end - t.start
            if length == 0:
                continue
            if group and (
                t.start != cur or t.dtype != group[0].dtype or length >= SMALL_TENSOR
                or t.end - group[0].start > GROUP_MAX
                or (_name_cut(group[-1].name) and cur - group[0].start >= _GROUP_MIN_CUT)
            ):
                flush()
            if not group:
                self.opaque(t.start)
            if length < SMALL_TENSOR:
                group.append(t)
                continue
            step = TENSOR_CHUNK - TENSOR_CHUNK % t.itemsize if 0 < t.itemsize <= TENSOR_CHUNK else TENSOR_CHUNK
            for part, off in enumerate(range(t.start, t.end, step)):
                self.pieces.append(Piece(off, min(step, t.end - off), t.dtype, t.name or None, part))
            self.pos = t.end
        flush()
        self.opaque(end)

    def finish(self, size: int) -> list[Piece]:
        """The plan, after checking that it tiles ``[0, size)`` exactly (ValueError if not)."""
        pos = 0
        for p in self.pieces:
            if p.offset != pos or p.length <= 0:
                raise ValueError(f"plan does not tile the file at offset {pos}")
            pos += p.length
        if pos != size:
            raise ValueError(f"plan covers {pos} bytes of {size}")
        return self.pieces

    def _check(self, end: int) -> None:
        if end < self.pos:
            raise ValueError(f"plan goes backwards: {end} < {self.pos}")


def bounded_count(shape: Iterable[int], limit: int) -> int:
    """The number of elements of ``shape`` (non-negative ints); ValueError once it exceeds
    ``limit``, so a hostile shape of huge dimensions costs no big-number arithmetic."""
    dims = list(shape)
    if not all(type(d) is int and d >= 0 for d in dims):
        raise ValueError("shape dimensions must be non-negative integers")
    if 0 in dims:
        return 0
    count = 1
    for d in dims:
        count *= d
        if count > limit:
            raise ValueError(f"shape {dims[:8]} holds more elements than the file can")
    return count


def file_size(stream: BinaryIO) -> int:
    """The stream's size: ``fstat`` for a regular file, else by seeking to the end."""
    try:
        st = os.fstat(stream.fileno())
        if stat.S_ISREG(st.st_mode):
            return st.st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    size = stream.seek(0, os.SEEK_END)
    return size


def read_exact(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes; fewer only at end of file (loops over short reads)."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_plan(stream: BinaryIO, pieces: Sequence[Piece]) -> Iterator[Chunk]:
    """Read ``pieces`` from offset 0 in order and yield them as chunks.

    If the file ends early (it shrank since it was planned) the rest of the plan is dropped; bytes
    beyond the plan (it grew) follow as opaque chunks. Either way the chunks tile what was read.
    """
    stream.seek(0)
    pos = 0
    for p in pieces:
        if p.offset != pos or p.length <= 0:
            raise ValueError(f"plan does not tile the file at offset {pos}")
        data = read_exact(stream, p.length)
        if data:
            yield Chunk(pos, data, p.dtype, p.tensor, p.part)
            pos += len(data)
        if len(data) < p.length:
            return
    while data := read_exact(stream, OPAQUE_CHUNK):
        yield Chunk(pos, data)
        pos += len(data)
