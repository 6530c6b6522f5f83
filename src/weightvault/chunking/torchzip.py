"""Tensor-aligned splitter for PyTorch ``torch.save`` zip archives (``.pt .pth .bin .ckpt``).

Layout written by torch >= 1.6: ``<archive>/data.pkl`` (the object graph), ``<archive>/data/<key>``
(each storage's raw little-endian bytes, STORED, data 64-byte aligned by a padding extra field),
small records (``version``, ``byteorder``, ``.data/serialization_id`` ...), then the central
directory. Entry sizes and offsets come from the central directory (local headers may defer them
to data descriptors); each STORED storage's data start is read from its local header.

Chunks tile the file exactly: bytes between storages (local headers, data descriptors, small
entries) form "metadata" chunks; each storage becomes fixed sub-chunks of at most 4 MiB, aligned
to its start, with the dtype found by ``pickle_scan`` (never by unpickling); runs of small
storages of one dtype are grouped up to ~1 MiB; the tail is cut like any other region. Files
below the repository's minimum chunk size stay one chunk, as with CDC. Anything inconsistent in
the zip structure sends the whole file to generic CDC. The module also provides
the region/tensor emitters shared with the GGUF splitter.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from weightvault.chunking.cdc import CdcSplitter, cdc_cuts
from weightvault.chunking.pickle_scan import scan_storage_dtypes
from weightvault.chunking.registry import DTYPE_SIZES, Chunk, ChunkerParams

__all__ = ["Segment", "ShortRead", "TorchZipSplitter", "emit_plan", "piece_size"]

PIECE = 4 * 1024 * 1024  # largest tensor sub-chunk
SMALL = 256 * 1024  # storages below this may be grouped ...
GROUP = 1024 * 1024  # ... into chunks of up to this size
MAX_PKL = 64 * 1024 * 1024  # larger data.pkl files are not scanned for dtypes
_EXTS = (b".pt", b".pth", b".bin", b".ckpt")
_TORCH_FIRST = (b"/data.pkl", b"/.format_version", b"/byteorder", b"/version", b"/.storage_alignment")
_LOCAL_SIG = b"PK\x03\x04"


class ShortRead(Exception):
    """The file shrank while it was being split: the chunks so far tile it up to its new end."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A planned byte range [start, end). ``tensor`` set: fixed aligned sub-chunks; else a region
    (one chunk up to ``piece``, content-defined cuts beyond)."""

    start: int
    end: int
    dtype: str | None = None
    tensor: str | None = None


def piece_size(params: ChunkerParams) -> int:
    """Tensor sub-chunk size: 4 MiB, or less if the repository's max chunk size is smaller; always
    a multiple of 64 (so of every element size)."""
    return max(64, min(PIECE, params.max_size) // 64 * 64)


def _read(stream: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        b = stream.read(n)
        if not b:
            break
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def _tensor_chunks(stream: BinaryIO, seg: Segment, piece: int) -> Iterator[Chunk]:
    stream.seek(seg.start)
    pos, part = seg.start, 0
    while pos < seg.end:
        n = min(piece, seg.end - pos)
        data = _read(stream, n)
        if data:
            yield Chunk(pos, data, seg.dtype, seg.tensor, part)
        if len(data) < n:
            raise ShortRead
        pos += n
        part += 1


def _region_chunks(stream: BinaryIO, start: int, end: int | None, params: ChunkerParams, piece: int,
                   dtype: str | None = None) -> Iterator[Chunk]:
    """Chunks for [start, end) (``end`` None: to EOF). Up to ``piece`` bytes: one chunk; beyond,
    FastCDC cuts over a sliding window, so memory stays bounded."""
    window = max(16 * 1024 * 1024, 2 * params.max_size)
    stream.seek(start)
    pos, buf = start, b""
    short = False
    while True:
        want = window - len(buf)
        if end is not None:
            want = min(want, end - pos - len(buf))
        more = _read(stream, want) if want > 0 else b""
        buf += more
        short = len(more) < want
        final = short or (end is not None and pos + len(buf) >= end)
        if not buf:
            break
        if final and len(buf) <= piece:
            yield Chunk(pos, buf, dtype)
            pos, buf = pos + len(buf), b""
        else:
            cuts = cdc_cuts(buf, params)
            if not final:
                cuts = cuts[:-1]  # the last cut may move once more bytes are seen
            for off, ln in cuts:
                yield Chunk(pos + off, buf[off:off + ln], dtype)
            used = sum(ln for _, ln in cuts)
            pos, buf = pos + used, buf[used:]
        if final and not buf:
            break
    if short and end is not None:
        raise ShortRead


def emit_plan(stream: BinaryIO, segments: list[Segment], params: ChunkerParams) -> Iterator[Chunk]:
    """Chunks for consecutive ``segments`` starting at 0, then the rest of the file to EOF (whatever
    its size is by then). Stops quietly if the file turns out shorter than planned."""
    piece = piece_size(params)
    pos = 0
    try:
        for seg in segments:
            assert seg.start == pos and seg.end > seg.start, "segments must be consecutive and non-empty"
            if seg.tensor is not None:
                yield from _tensor_chunks(stream, seg, piece)
            else:
                yield from _region_chunks(stream, seg.start, seg.end, params, piece, seg.dtype)
            pos = seg.end
        yield from _region_chunks(stream, pos, None, params, piece)
    except ShortRead:
        return


class _Bad(Exception):
    """The zip structure is not something this splitter trusts."""


@dataclass(frozen=True, slots=True)
class _Storage:
    key: str
    start: int
    end: int


def _storage_key(name: str) -> tuple[str, str] | None:
    """(archive prefix, key) for ``<archive>/data/<key>``."""
    parts = name.split("/")
    if len(parts) == 3 and parts[1] == "data" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def _scan_zip(stream: BinaryIO, size: int) -> tuple[list[_Storage], dict[str, str]]:
    """Validate the archive and locate every STORED storage's data; raise _Bad if inconsistent."""
    with zipfile.ZipFile(stream) as zf:
        start_dir = getattr(zf, "start_dir", None)
        if not isinstance(start_dir, int) or not 0 <= start_dir <= size:
            raise _Bad("central directory offset")
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        storages: list[_Storage] = []
        pkl: dict[str, zipfile.ZipInfo] = {}
        prev_end = 0
        for info in infos:
            off = info.header_offset
            if off < prev_end or off + 30 > start_dir:
                raise _Bad("overlapping or out-of-range entry")
            stream.seek(off)
            lh = _read(stream, 30)
            if len(lh) < 30 or lh[:4] != _LOCAL_SIG:
                raise _Bad("local header")
            flags = struct.unpack_from("<H", lh, 6)[0]
            nlen, elen = struct.unpack_from("<HH", lh, 26)
            lname = _read(stream, nlen)
            if lname.decode("utf-8" if flags & 0x800 else "cp437", "replace") != info.orig_filename:
                raise _Bad("local name differs from central directory")
            data_start = off + 30 + nlen + elen
            data_end = data_start + info.compress_size
            if info.compress_size < 0 or data_end > start_dir:
                raise _Bad("entry data past central directory")
            prev_end = data_end
            sk = _storage_key(info.filename)
            if sk is not None and info.compress_type == zipfile.ZIP_STORED and info.file_size == info.compress_size:
                storages.append(_Storage(sk[1], data_start, data_end))
            elif info.filename.endswith("/data.pkl") and info.filename.count("/") == 1:
                pkl[info.filename[:-len("/data.pkl")]] = info
        dtypes: dict[str, str] = {}
        if len(pkl) == 1:
            (pinfo,) = pkl.values()
            if pinfo.file_size <= MAX_PKL:
                try:
                    with zf.open(pinfo) as f:
                        dtypes = scan_storage_dtypes(f.read(MAX_PKL + 1)[:MAX_PKL])
                except Exception:  # unreadable pickle: no hints, boundaries unaffected
                    dtypes = {}
    return storages, dtypes


def _plan(storages: list[_Storage], dtypes: dict[str, str]) -> list[Segment]:
    segs: list[Segment] = []
    cursor = 0
    group: tuple[int, int, str | None] | None = None  # (start, end, dtype)

    def flush() -> None:
        nonlocal group, cursor
        if group is not None:
            segs.append(Segment(group[0], group[1], group[2]))
            cursor, group = group[1], None

    for s in storages:
        n = s.end - s.start
        if n == 0:
            continue
        dt = dtypes.get(s.key)
        if dt is not None and n % DTYPE_SIZES[dt]:
            dt = None
        if n < SMALL:
            if group is not None and group[2] == dt and s.end - group[0] <= GROUP:
                group = (group[0], s.end, dt)
                continue
            flush()
            if s.start > cursor:
                segs.append(Segment(cursor, s.start))
            group = (s.start, s.end, dt)
            cursor = s.end
            continue
        flush()
        if s.start > cursor:
            segs.append(Segment(cursor, s.start))
        segs.append(Segment(s.start, s.end, dt, s.key))
        cursor = s.end
    flush()
    return segs


class TorchZipSplitter:
    """Splits ``torch.save`` zip checkpoints at storage boundaries with dtype hints."""

    name = "torch-zip"

    def accepts(self, name: bytes, head: bytes) -> bool:
        if not head.startswith(_LOCAL_SIG):
            return False
        if name.lower().endswith(_EXTS):
            return True
        if len(head) < 30:
            return False
        nlen = struct.unpack_from("<H", head, 26)[0]
        return head[30:30 + nlen].endswith(_TORCH_FIRST)

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        try:
            size = stream.seek(0, 2)
            segs: list[Segment] = []
            if size >= params.min_size:  # smaller files are one chunk, as with CDC
                segs = _plan(*_scan_zip(stream, size))
        except Exception:  # hostile or unsupported archive: generic CDC is always correct
            stream.seek(0)
            yield from CdcSplitter().split(stream, params)
            return
        yield from emit_plan(stream, segs, params)
