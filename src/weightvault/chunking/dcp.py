"""PyTorch Distributed Checkpoint (DCP) data files (``.distcp``): several ``torch.save`` zip
archives concatenated, one per write item (``FileSystemWriter`` writes each tensor with
``torch.save`` and each pickled object as the bytes of a ``torch.save``). Python's ``zipfile``
sees only the last archive, so ``dcp_archives`` finds every one from its end records:

    archive = local headers + data ... | central directory (cd_size bytes) | [zip64 end record
    "PK\\x06\\x06" (56 bytes) | zip64 locator "PK\\x06\\x07" (20 bytes)] | end record "PK\\x05\\x06"
    (22 bytes + comment)

Offsets inside an archive (the central directory's ``cd_offset``, each member's local header
offset) are relative to the archive's own first byte, so an archive starts at ``cd_start -
cd_offset``; torch writes the zip64 records for every archive. Archives are chained backwards
from the end of the file (each one ends where the next starts); if the chain breaks, the bytes
before the break are searched forward for end records. ``DcpSplitter`` plans each archive's
storages as the torch zip splitter does (``torch_zip_storages`` over a window of the file) and
leaves bytes between archives to content-defined regions.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import BinaryIO, cast

from weightvault.chunking.base import Chunk, ChunkerParams, SeekableReader, has_suffix
from weightvault.chunking.tensor_plan import (
    Piece,
    PlanBuilder,
    TensorRange,
    file_size,
    piece_size,
    read_exact,
    split_or_fallback,
)
from weightvault.chunking.torchzip import ALIGN, MAX_GAP, torch_zip_storages

__all__ = ["DcpSplitter", "Window", "dcp_archives", "plan_dcp"]

# end record: u32 sig, u16 disk, u16 cd disk, u16 entries here, u16 entries, u32 cd_size, u32 cd_offset,
# u16 comment length
EOCD_SIG = b"PK\x05\x06"
ZIP64_EOCD_SIG = b"PK\x06\x06"  # ... u64 entries here @24, u64 entries @32, u64 cd_size @40, u64 cd_offset @48
ZIP64_LOC_SIG = b"PK\x06\x07"  # u32 sig, u32 disk, u64 zip64 end record offset (archive-relative), u32 disks
CD_SIG = b"PK\x01\x02"
LOCAL_SIG = b"PK\x03\x04"
MAX_ARCHIVES = 1_000_000
_BLOCK = 1 << 20  # forward search block


def _read_at(stream: BinaryIO, pos: int, n: int) -> bytes:
    stream.seek(pos)
    return read_exact(stream, n)


def _archive_ending_at(stream: BinaryIO, e: int, size: int) -> tuple[int, int] | None:
    """(start, end) of the archive whose end record lies at ``e``, or None if the record and the
    central directory and first local header it points to are not consistent."""
    rec = _read_at(stream, e, 22)
    if len(rec) < 22 or rec[:4] != EOCD_SIG:
        return None
    disk, cd_disk, n_here, n_total, cd_size, cd_off, clen = struct.unpack_from("<HHHHIIH", rec, 4)
    end = e + 22 + clen
    if end > size or disk not in (0, 0xFFFF) or cd_disk not in (0, 0xFFFF) or n_here != n_total:
        return None
    cd_end = e
    loc = _read_at(stream, e - 20, 20) if e >= 20 else b""
    if loc[:4] == ZIP64_LOC_SIG:
        rec64_pos = e - 20 - 56
        rec64 = _read_at(stream, rec64_pos, 56) if rec64_pos >= 0 else b""
        if len(rec64) < 56 or rec64[:4] != ZIP64_EOCD_SIG:
            return None
        n_total, cd_size, cd_off = struct.unpack_from("<QQQ", rec64, 32)
        (rel64,) = struct.unpack_from("<Q", loc, 8)
        cd_end = rec64_pos
        if rec64_pos - (cd_end - cd_size - cd_off) != rel64:
            return None
    cd_start = cd_end - cd_size
    start = cd_start - cd_off
    if start < 0 or cd_start < start:
        return None
    if _read_at(stream, start, 4) != LOCAL_SIG or (n_total and _read_at(stream, cd_start, 4) != CD_SIG):
        return None
    return start, end


def _search(stream: BinaryIO, lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """Archives whose end records lie in ``[lo, hi)`` and which lie inside it, in file order, not
    overlapping (a later candidate overlapping an earlier one is dropped)."""
    found: list[tuple[int, int]] = []
    pos = lo
    while pos < hi and len(found) < MAX_ARCHIVES:
        block = _read_at(stream, pos, min(_BLOCK + 3, hi - pos))
        i = block.find(EOCD_SIG)
        while i >= 0:
            a = _archive_ending_at(stream, pos + i, size)
            if a is not None and a[1] <= hi and (not found or a[0] >= found[-1][1]):
                found.append(a)
            i = block.find(EOCD_SIG, i + 1)
        pos += _BLOCK
    return found


def dcp_archives(stream: BinaryIO, size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of every zip archive in the ``size`` bytes of ``stream``, in file order and
    not overlapping; bytes between them (if any) belong to no archive. Reads only end records,
    zip64 records and signatures while the archives chain back from the end of the file, and
    searches the bytes before a break in the chain. Empty if there is no archive."""
    chain: list[tuple[int, int]] = []
    p = size
    while p >= 22 and len(chain) < MAX_ARCHIVES:
        a = _archive_ending_at(stream, p - 22, size)
        if a is None or a[1] != p or a[0] >= p:
            break
        chain.append(a)
        p = a[0]
    chain.reverse()
    return (_search(stream, 0, p, size) if p > 0 else []) + chain


class Window(SeekableReader):
    """``[start, end)`` of a stream as a stream of its own (what ``zipfile`` opens for one archive)."""

    clamp_negative = True

    def __init__(self, stream: BinaryIO, start: int, end: int) -> None:
        super().__init__()
        self._s, self._start, self._end, self._pos, self._size = stream, start, end, 0, end - start

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(b), self._size - self._pos))
        if n == 0:
            return 0
        data = _read_at(self._s, self._start + self._pos, n)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)


def plan_dcp(stream: BinaryIO, params: ChunkerParams) -> list[Piece]:
    """The chunk plan of a ``.distcp`` file: each archive's storages as tensor pieces named
    ``"<archive index>/<storage key>"``; ValueError if the file holds fewer than two archives
    (a single one is the torch zip splitter's) or an archive is inconsistent."""
    size = file_size(stream)
    archives = dcp_archives(stream, size)
    if len(archives) < 2:
        raise ValueError("not several concatenated zip archives")
    plan = PlanBuilder(piece_size(params), max_gap=MAX_GAP, align=ALIGN, regions=True)
    if size >= params.min_size:
        for i, (start, end) in enumerate(archives):
            plan.region(start)
            window = cast(BinaryIO, io.BufferedReader(Window(stream, start, end)))
            ranges = [TensorRange(start + t.start, start + t.end, f"{i}/{t.name}", t.dtype, t.itemsize)
                      for t in torch_zip_storages(window, end - start)]
            plan.tensors(ranges, end)
    plan.region(size)
    return plan.finish(size)


class DcpSplitter:
    """Splits DCP ``.distcp`` files archive by archive, at storage boundaries with dtype hints.
    Register it before ``TorchZipSplitter``, which would otherwise take these files whole."""

    name = "dcp"

    def accepts(self, name: bytes, head: bytes) -> bool:
        if not head.startswith(LOCAL_SIG):
            return False
        if has_suffix(name, b".distcp"):
            return True
        i = head.find(EOCD_SIG)  # by content: another archive right after the first one's end record
        while i >= 0:
            if len(head) >= i + 22:
                (clen,) = struct.unpack_from("<H", head, i + 20)
                if head[i + 22 + clen:i + 26 + clen] == LOCAL_SIG:
                    return True
            i = head.find(EOCD_SIG, i + 1)
        return False

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        return split_or_fallback(stream, params, lambda: plan_dcp(stream, params))
