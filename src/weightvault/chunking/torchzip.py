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
inconsistent in the zip structure sends the whole file to generic CDC. The zip ranges are checked
by ``zipscan.zip_members``, which validation (``torch_zip_members``) uses too.
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
    split_or_fallback,
)
from weightvault.chunking.zipscan import check_crcs, open_zip, zip_members

__all__ = ["GROUP", "SMALL", "TorchZipSplitter", "piece_size", "plan_torch_zip", "torch_zip_members"]

SMALL = SMALL_TENSOR  # storages below this may be grouped ...
GROUP = GROUP_MAX  # ... into chunks of up to this size
MAX_GAP = 4096  # zip metadata between two storages up to this size joins a neighbouring group
ALIGN = 64  # torch's storage alignment: a group may start early (at a gap) only on a multiple of it
MAX_PKL = 64 * 1024 * 1024  # larger data.pkl files are not scanned for dtypes
_EXTS = (b".pt", b".pth", b".bin", b".ckpt")
_TORCH_FIRST = (b"/data.pkl", b"/.format_version", b"/byteorder", b"/version", b"/.storage_alignment")
_LOCAL_SIG = b"PK\x03\x04"


def _storage_key(name: str) -> tuple[str, str] | None:
    """(archive prefix, key) for ``<archive>/data/<key>``."""
    parts = name.split("/")
    if len(parts) == 3 and parts[1] == "data" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def _is_pickle(name: str) -> bool:
    """``<archive>/data.pkl``: the object graph of a torch archive."""
    return name.endswith("/data.pkl") and name.count("/") == 1


def _scan_zip(stream: BinaryIO, size: int) -> list[TensorRange]:
    """Every STORED storage's data range with its dtype hint, in file order, after validating the
    archive; ValueError if it is inconsistent."""
    with zipfile.ZipFile(stream) as zf:
        storages: list[tuple[str, int, int]] = []
        pkl: dict[str, zipfile.ZipInfo] = {}
        for m in zip_members(zf, stream, size):
            info = m.info
            sk = _storage_key(info.filename)
            if sk is not None and info.compress_type == zipfile.ZIP_STORED and info.file_size == info.compress_size:
                storages.append((sk[1], m.data_start, m.data_end))
            elif _is_pickle(info.filename):
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


def torch_zip_members(stream: BinaryIO, size: int, *, check_crc: bool = False) -> list[str]:
    """The member names of a ``torch.save`` archive of ``size`` bytes, for validation: the zip's
    ranges checked as the splitter checks them (``zip_members``) and an ``<archive>/data.pkl``
    present (never unpickled), reading only the end record, the central directory and the local
    headers; ``check_crc`` also reads every member in full and checks its CRC-32. ValueError
    naming the problem."""
    with open_zip(stream) as zf:
        members = zip_members(zf, stream, size)
        if check_crc:
            check_crcs(zf)
    names = [m.info.filename for m in members]
    if not any(_is_pickle(n) for n in names):
        raise ValueError("a PyTorch archive without <archive>/data.pkl")
    return names


def plan_torch_zip(stream: BinaryIO, params: ChunkerParams) -> list[Piece]:
    """The chunk plan of a ``torch.save`` archive; ValueError or whatever zipfile raises on
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
