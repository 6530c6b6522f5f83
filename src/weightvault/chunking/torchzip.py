"""Tensor-aligned splitter for PyTorch ``torch.save`` zip archives (``.pt .pth .bin .ckpt``).

Layout written by torch >= 1.6: ``<archive>/data.pkl`` (the object graph), ``<archive>/data/<key>``
(each storage's raw little-endian bytes, STORED, data 64-byte aligned by a padding extra field),
small records (``version``, ``byteorder``, ``.data/serialization_id`` ...), then the central
directory. Entry sizes and offsets come from the central directory (local headers may defer them
to data descriptors); each STORED storage's data start is read from its local header.

The plan comes from ``tensor_plan``: each storage becomes fixed sub-chunks of at most 4 MiB,
aligned to its start, with the dtype found by ``pickle_scan`` (never by unpickling); runs of small
storages of one dtype are grouped up to 1 MiB, and the few hundred bytes of zip headers between
two storages join a neighbouring group instead of becoming chunks of their own. The bytes before
the first storage (``data.pkl``) and after the last one are regions (content-defined cuts beyond
4 MiB). Files below the repository's minimum chunk size stay one chunk, as with CDC. Anything
inconsistent in the zip structure sends the whole file to generic CDC.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator
from typing import BinaryIO

from weightvault.chunking.base import DTYPE_SIZES, Chunk, ChunkerParams
from weightvault.chunking.pickle_scan import scan_storage_dtypes
from weightvault.chunking.tensor_plan import (
    GROUP_MAX,
    SMALL_TENSOR,
    Piece,
    PlanBuilder,
    TensorRange,
    file_size,
    piece_size,
    read_exact,
    split_or_fallback,
)

__all__ = ["GROUP", "SMALL", "TorchZipSplitter", "piece_size", "plan_torch_zip"]

SMALL = SMALL_TENSOR  # storages below this may be grouped ...
GROUP = GROUP_MAX  # ... into chunks of up to this size
MAX_GAP = 4096  # zip metadata between two storages up to this size joins a neighbouring group
ALIGN = 64  # torch's storage alignment: a group may start early (at a gap) only on a multiple of it
MAX_PKL = 64 * 1024 * 1024  # larger data.pkl files are not scanned for dtypes
_EXTS = (b".pt", b".pth", b".bin", b".ckpt")
_TORCH_FIRST = (b"/data.pkl", b"/.format_version", b"/byteorder", b"/version", b"/.storage_alignment")
_LOCAL_SIG = b"PK\x03\x04"


class _Bad(Exception):
    """The zip structure is not something this splitter trusts."""


def _storage_key(name: str) -> tuple[str, str] | None:
    """(archive prefix, key) for ``<archive>/data/<key>``."""
    parts = name.split("/")
    if len(parts) == 3 and parts[1] == "data" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def _scan_zip(stream: BinaryIO, size: int) -> list[TensorRange]:
    """Every STORED storage's data range with its dtype hint, in file order, after validating the
    archive; raise _Bad if it is inconsistent."""
    with zipfile.ZipFile(stream) as zf:
        start_dir = getattr(zf, "start_dir", None)
        if not isinstance(start_dir, int) or not 0 <= start_dir <= size:
            raise _Bad("central directory offset")
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        storages: list[tuple[str, int, int]] = []
        pkl: dict[str, zipfile.ZipInfo] = {}
        prev_end = 0
        for info in infos:
            off = info.header_offset
            if off < prev_end or off + 30 > start_dir:
                raise _Bad("overlapping or out-of-range entry")
            stream.seek(off)
            lh = read_exact(stream, 30)
            if len(lh) < 30 or lh[:4] != _LOCAL_SIG:
                raise _Bad("local header")
            flags = struct.unpack_from("<H", lh, 6)[0]
            nlen, elen = struct.unpack_from("<HH", lh, 26)
            lname = read_exact(stream, nlen)
            if lname.decode("utf-8" if flags & 0x800 else "cp437", "replace") != info.orig_filename:
                raise _Bad("local name differs from central directory")
            data_start = off + 30 + nlen + elen
            data_end = data_start + info.compress_size
            if info.compress_size < 0 or data_end > start_dir:
                raise _Bad("entry data past central directory")
            prev_end = data_end
            sk = _storage_key(info.filename)
            if sk is not None and info.compress_type == zipfile.ZIP_STORED and info.file_size == info.compress_size:
                storages.append((sk[1], data_start, data_end))
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
    ranges: list[TensorRange] = []
    for key, start, end in storages:
        dt = dtypes.get(key)
        if dt is not None and (end - start) % DTYPE_SIZES[dt]:
            dt = None
        ranges.append(TensorRange(start, end, key, dt, DTYPE_SIZES[dt] if dt else 1))
    return ranges


def plan_torch_zip(stream: BinaryIO, params: ChunkerParams) -> list[Piece]:
    """The chunk plan of a ``torch.save`` archive; ValueError, _Bad or whatever zipfile raises on
    hostile bytes if it is not one this splitter trusts."""
    size = file_size(stream)
    plan = PlanBuilder(piece_size(params), max_gap=MAX_GAP, align=ALIGN, regions=True)
    if size >= params.min_size:  # smaller files are one chunk, as with CDC
        plan.tensors(_scan_zip(stream, size), size)
    plan.region(size)
    return plan.finish(size)


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
        return split_or_fallback(stream, params, lambda: plan_torch_zip(stream, params))
