"""Shared machinery of the tensor-aware splitters: turn tensor byte ranges into a chunk plan that
tiles a file, then read the plan sequentially.

A plan is a list of ``Piece``s (offset, length and hints) covering ``[0, size)`` exactly. Tensor
data is cut at element boundaries in pieces of at most ``TENSOR_CHUNK`` bytes (or the builder's
``tensor_chunk``); runs of adjacent small tensors of one dtype are grouped into pieces of at most
``GROUP_MAX`` bytes; everything else (headers, padding, bytes no tensor claims) becomes opaque
pieces of at most ``OPAQUE_CHUNK`` bytes, a single named piece, or a *region*: one chunk up to the
tensor piece size and FastCDC cuts beyond it, made while reading with bounded memory. A builder
may also let small metadata gaps between tensors (zip local headers) join a neighbouring group
instead of becoming pieces of their own. ``read_plan`` turns a plan into ``Chunk``s and keeps the
tiling contract even if the file shrinks or grows while it is read.
"""

from __future__ import annotations

import io
import os
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from weightvault.chunking.base import Chunk, ChunkerParams
from weightvault.chunking.cdc import CdcSplitter, cdc_cuts

__all__ = ["GROUP_MAX", "OPAQUE_CHUNK", "SMALL_TENSOR", "TENSOR_CHUNK", "CdcFallback", "Piece", "PlanBuilder",
           "TensorRange", "bounded_count", "file_size", "part_step", "piece_size", "read_exact", "read_plan"]

TENSOR_CHUNK = 4 * 1024 * 1024  # largest piece of one tensor (rounded down to whole elements)
SMALL_TENSOR = 256 * 1024  # tensors below this may share a piece with their neighbours
GROUP_MAX = 1024 * 1024  # largest piece made of several small tensors
OPAQUE_CHUNK = 1024 * 1024  # largest piece of bytes that belong to no tensor
_GROUP_MIN_CUT = 32 * 1024  # a group may end at a name-defined boundary once it holds this much
_CDC_WINDOW = 16 * 1024 * 1024  # bytes of a large region held in memory at once (at least)


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
    """One planned chunk: ``length`` bytes at ``offset`` with the hints its ``Chunk`` will carry.
    A ``region`` piece becomes one chunk up to ``piece_size(params)`` bytes and content-defined
    chunks beyond, cut when it is read."""

    offset: int
    length: int
    dtype: str | None = None
    tensor: str | None = None
    part: int = 0
    region: bool = False


def piece_size(params: ChunkerParams) -> int:
    """Tensor piece size that respects the repository's max chunk size: ``TENSOR_CHUNK``, or less
    if ``params.max_size`` is smaller; always a multiple of 64 (so of every element size)."""
    return max(64, min(TENSOR_CHUNK, params.max_size) // 64 * 64)


_HALF_FLOATS = frozenset({"BF16"})  # the dtype a cast makes (codec/cast.py)


def part_step(chunk: int, itemsize: int, dtype: str | None) -> int:
    """Bytes per piece of a large tensor: whole elements, at most ``chunk`` bytes. A BF16 tensor
    gets as many elements per piece as an F32 one (``chunk / 4``), so the pieces of a BF16 export
    line up with those of its F32 original (a cast, FORMAT.md section 5); for the same reason it
    counts as small when its F32 original would."""
    if dtype in _HALF_FLOATS and itemsize == 2 and chunk >= 8:
        return chunk // 4 * 2
    return chunk - chunk % itemsize if 0 < itemsize <= chunk else chunk


def _name_cut(name: str) -> bool:
    """A content-defined group boundary: depends on the tensor's name only, so groups re-align
    after a tensor is inserted or removed earlier in the file."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % 4 == 0


class PlanBuilder:
    """Appends pieces in file order; raises ValueError if asked to go backwards or leave a hole.

    ``tensor_chunk`` bounds every tensor and group piece; tensors below ``small`` bytes (0: none)
    are grouped. Metadata of at most ``max_gap`` bytes lying between two tensors joins the group
    before it, else the group after it if that piece would start on a multiple of ``align`` (0:
    gaps never join). With ``regions`` the bytes no tensor claims become region pieces rather than
    fixed opaque ones.
    """

    def __init__(self, tensor_chunk: int = TENSOR_CHUNK, *, small: int = SMALL_TENSOR, max_gap: int = 0,
                 align: int = 1, regions: bool = False) -> None:
        if tensor_chunk <= 0 or align <= 0:
            raise ValueError("tensor_chunk and align must be positive")
        self.pieces: list[Piece] = []
        self.pos = 0
        self._chunk = tensor_chunk
        self._small = min(small, tensor_chunk)
        self._group_max = min(GROUP_MAX, tensor_chunk)
        self._max_gap = max_gap
        self._align = align
        self._regions = regions

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

    def region(self, end: int) -> None:
        """``[pos, end)`` as one region piece (content-defined cuts when large), without hints."""
        self._check(end)
        if end > self.pos:
            self.pieces.append(Piece(self.pos, end - self.pos, region=True))
            self.pos = end

    def tensors(self, ranges: Iterable[TensorRange], end: int) -> None:
        """Tensors (sorted, non-overlapping, within ``[pos, end)``), then untyped bytes up to ``end``.

        Empty tensors produce nothing; gaps between tensors become untyped pieces unless they are
        small enough to join a neighbouring group (see the class).
        """
        fill = self.region if self._regions else self.opaque
        group: list[TensorRange] = []
        gstart = 0  # where the open group's piece starts (a joined gap before it included)
        after_tensor = -1  # end of the last tensor piece, while nothing else followed it

        def flush(upto: int) -> None:
            nonlocal after_tensor
            first = group[0]
            self.pieces.append(Piece(gstart, upto - gstart, first.dtype, first.name or None))
            self.pos = after_tensor = upto
            group.clear()

        for t in ranges:
            cur = group[-1].end if group else self.pos
            if t.start < cur or t.end < t.start or t.end > end:
                raise ValueError(f"tensor {t.name!r} at {t.start}..{t.end} overlaps or lies outside the data")
            length = t.end - t.start
            if length == 0:
                continue
            small = length * (2 if t.dtype in _HALF_FLOATS else 1) < self._small  # as its F32 original
            gap = t.start - cur
            if group:
                if (small and t.dtype == group[0].dtype and gap <= self._max_gap
                        and t.end - gstart <= self._group_max and (t.start - gstart) % max(1, t.itemsize) == 0
                        and not (_name_cut(group[-1].name) and cur - gstart >= _GROUP_MIN_CUT)):
                    group.append(t)
                    continue
                flush(t.start if 0 < gap <= self._max_gap and t.start - gstart <= self._group_max else cur)
            if small:
                lead = (0 < t.start - self.pos <= self._max_gap and after_tensor == self.pos
                        and self.pos % self._align == 0 and t.end - self.pos <= self._group_max)
                if not lead:
                    fill(t.start)
                gstart = self.pos
                group.append(t)
                continue
            fill(t.start)
            step = part_step(self._chunk, t.itemsize, t.dtype)
            for part, off in enumerate(range(t.start, t.end, step)):
                self.pieces.append(Piece(off, min(step, t.end - off), t.dtype, t.name or None, part))
            self.pos = after_tensor = t.end
        if group:
            flush(group[-1].end)
        fill(end)

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


def _read_region(stream: BinaryIO, pos: int, length: int, params: ChunkerParams, limit: int) -> Iterator[Chunk]:
    """``length`` bytes from the stream's position (file offset ``pos``): one chunk up to ``limit``,
    else FastCDC cuts over a sliding window so memory stays bounded. Stops early at end of file."""
    window = max(_CDC_WINDOW, 2 * params.max_size)
    left, buf = length, b""
    while True:
        want = min(window - len(buf), left)
        more = read_exact(stream, want) if want > 0 else b""
        left -= len(more)
        buf += more
        final = left == 0 or len(more) < want
        if not buf:
            return
        if final and len(buf) <= limit:
            yield Chunk(pos, buf)
            return
        cuts = cdc_cuts(buf, params)
        if not final:
            cuts = cuts[:-1]  # the last cut may move once more bytes are seen
        for off, n in cuts:
            yield Chunk(pos + off, buf[off:off + n])
        used = sum(n for _, n in cuts)
        pos, buf = pos + used, buf[used:]
        if final and not buf:
            return


def read_plan(stream: BinaryIO, pieces: Sequence[Piece], params: ChunkerParams | None = None) -> Iterator[Chunk]:
    """Read ``pieces`` from offset 0 in order and yield them as chunks; region pieces are cut with
    ``params`` (the defaults if None).

    If the file ends early (it shrank since it was planned) the rest of the plan is dropped; bytes
    beyond the plan (it grew) follow as opaque chunks. Either way the chunks tile what was read.
    """
    params = params or ChunkerParams()
    limit = piece_size(params)
    stream.seek(0)
    pos = 0
    for p in pieces:
        if p.offset != pos or p.length <= 0:
            raise ValueError(f"plan does not tile the file at offset {pos}")
        if p.region:
            for c in _read_region(stream, pos, p.length, params, limit):
                yield c
                pos += len(c.data)
            if pos < p.offset + p.length:
                return
            continue
        data = read_exact(stream, p.length)
        if data:
            yield Chunk(pos, data, p.dtype, p.tensor, p.part)
            pos += len(data)
        if len(data) < p.length:
            return
    while data := read_exact(stream, OPAQUE_CHUNK):
        yield Chunk(pos, data)
        pos += len(data)


class CdcFallback(Iterator[Chunk]):
    """The CDC chunks a format splitter fell back to, with ``reason``: why its parser refused the
    file (the backup tells the user, once per file)."""

    def __init__(self, chunks: Iterator[Chunk], reason: str) -> None:
        self._chunks = chunks
        self.reason = reason

    def __next__(self) -> Chunk:
        return next(self._chunks)


def split_or_fallback(
    stream: BinaryIO, params: ChunkerParams, plan: Callable[[], Sequence[Piece]]
) -> Iterator[Chunk]:
    """The chunks of ``plan()`` read from ``stream``; if planning raises anything (hostile, foreign
    or unsupported bytes), generic CDC over the whole stream instead (a ``CdcFallback``), so a file
    that only looks like a tensor file never fails a backup."""
    try:
        pieces = plan()
    except Exception as exc:  # any parser failure means "not a file we understand": CDC is always correct
        stream.seek(0)
        return CdcFallback(CdcSplitter().split(stream, params), f"{type(exc).__name__}: {exc}"[:300])
    return read_plan(stream, pieces, params)
