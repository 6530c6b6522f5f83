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

``torch_zip_structure`` (validation's structure level) names each tensor with its dtype and shape
through the same non-executing scan (``pickle_scan.scan_tensors``) and, in strict mode, checks
every storage the pickle references against the archive: present, as long as its record says,
long enough for every tensor viewing it. It also reads legacy (non-zip) ``torch.save`` files:

    pickle: magic number 0x1950a86a20f9469cfc6c | pickle: protocol version 1001 | pickle: sys_info
    {"little_endian", ...} | pickle: the object (storages as persistent ids) | pickle: sorted list
    of storage keys | per key, in that order: int64 numel (in the storage's elements, byte order of
    sys_info) + numel x element size raw bytes
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from weightvault.chunking.base import DTYPE_SIZES, Chunk, ChunkerParams, has_suffix
from weightvault.chunking.pickle_scan import (
    PickleTensors,
    StorageRef,
    TensorRef,
    scan_storage_dtypes,
    scan_tensors,
)
from weightvault.chunking.pickle_values import scan_value
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
from weightvault.chunking.zipscan import ZIP_ERRORS, check_crcs, open_zip, zip_members

__all__ = ["GROUP", "SMALL", "TorchStructure", "TorchZipSplitter", "piece_size", "plan_torch_zip",
           "torch_zip_members", "torch_zip_storages", "torch_zip_structure"]

SMALL = SMALL_TENSOR  # storages below this may be grouped ...
GROUP = GROUP_MAX  # ... into chunks of up to this size
MAX_GAP = 4096  # zip metadata between two storages up to this size joins a neighbouring group
ALIGN = 64  # torch's storage alignment: a group may start early (at a gap) only on a multiple of it
MAX_PKL = 64 * 1024 * 1024  # larger data.pkl files are not scanned for dtypes
_EXTS = (b".pt", b".pth", b".bin", b".ckpt")
_TORCH_FIRST = (b"/data.pkl", b"/.format_version", b"/byteorder", b"/version", b"/.storage_alignment")
_LOCAL_SIG = b"PK\x03\x04"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy torch.save file
LEGACY_PROTOCOL = 1001


def _storage_key(name: str) -> tuple[str, str] | None:
    """(archive prefix, key) for ``<archive>/data/<key>``."""
    parts = name.split("/")
    if len(parts) == 3 and parts[1] == "data" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def _is_pickle(name: str) -> bool:
    """``<archive>/data.pkl``: the object graph of a torch archive."""
    return name.endswith("/data.pkl") and name.count("/") == 1


def torch_zip_storages(stream: BinaryIO, size: int) -> list[TensorRange]:
    """Every STORED storage's data range (named by its key) with its dtype hint, in file order,
    after validating the archive; ValueError if it is inconsistent (the splitters' plan)."""
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
        plan.tensors(torch_zip_storages(stream, size), size)
    plan.region(size)
    return plan.finish(size)


class TorchZipSplitter:
    """Splits ``torch.save`` zip checkpoints at storage boundaries with dtype hints."""

    name = "torch-zip"

    def accepts(self, name: bytes, head: bytes) -> bool:
        if not head.startswith(_LOCAL_SIG):
            return False
        if has_suffix(name, _EXTS):
            return True
        if len(head) < 30:
            return False
        nlen = struct.unpack_from("<H", head, 26)[0]
        return head[30:30 + nlen].endswith(_TORCH_FIRST)

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        return split_or_fallback(stream, params, lambda: plan_torch_zip(stream, params))


# -- structure (validation) -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TorchStructure:
    """The tensors of a ``torch.save`` file, name -> (dtype in ``DTYPE_SIZES``' vocabulary, shape),
    in pickle order; ``warnings`` say what the scan could not follow or (non-strict) check."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    warnings: list[str]


def torch_zip_structure(stream: BinaryIO, size: int, *, strict: bool = False) -> TorchStructure:
    """Tensor names, dtypes and shapes of a ``torch.save`` file of ``size`` bytes (zip archive or
    legacy format), read without executing its pickle (``pickle_scan.scan_tensors``); names are
    key paths ("state_dict.layer.weight", list indices as numbers).

    Reads the zip's end record, central directory, local headers and ``data.pkl`` (legacy: the
    pickles and the 8-byte header of each storage), never the storages' data. ValueError if the
    file is not a torch.save file or its zip structure is inconsistent (``zip_members``). With
    ``strict`` also ValueError, naming the tensor, when a storage the pickle references is missing,
    holds other than its record's numel x element size, or is shorter than a tensor viewing it
    needs (offset + furthest element by size and stride); without it these are warnings. A pickle
    the scan cannot read at all gives no tensors and a warning; objects it cannot follow (custom
    classes, unknown rebuild functions) are warnings, never failures."""
    stream.seek(0)
    head = read_exact(stream, 4)
    if head == _LOCAL_SIG:
        return _zip_structure(stream, size, strict)
    if head[:1] == b"\x80":  # pickle protocol >= 2: maybe legacy torch.save
        return _legacy_structure(stream, size, strict)
    raise ValueError("neither a torch.save zip archive nor a legacy torch.save file")


def _zip_structure(stream: BinaryIO, size: int, strict: bool) -> TorchStructure:
    warnings: list[str] = []
    with open_zip(stream) as zf:
        members = zip_members(zf, stream, size)
        pkls = [m for m in members if _is_pickle(m.info.filename)]
        if len(pkls) != 1:
            raise ValueError(f"a PyTorch archive needs one <archive>/data.pkl, found {len(pkls)}")
        pinfo = pkls[0].info
        prefix = pinfo.filename[:-len("/data.pkl")]
        have: dict[str, int | None] = {}
        for m in members:
            sk = _storage_key(m.info.filename)
            if sk is not None and sk[0] == prefix:
                have[sk[1]] = m.info.file_size
            elif m.info.filename == f"{prefix}/byteorder" and _byteorder(zf, m.info) == b"big":
                warnings.append("storages are big-endian")
        if pinfo.file_size > MAX_PKL:
            return TorchStructure({}, [*warnings, f"{pinfo.filename} is larger than {MAX_PKL} bytes: not scanned"])
        try:
            pkl = _read_member(zf, pinfo, MAX_PKL)
        except ValueError as exc:
            if strict:
                raise
            return TorchStructure({}, [*warnings, str(exc)])
    scan = scan_tensors(pkl)
    extra = sorted(set(have) - set(scan.storages)) if scan.readable else []
    if extra:
        warnings.append(f"{len(extra)} storages no tensor references, e.g. {prefix}/data/{extra[0]}")
    return _finish(scan, have, lambda k: f"{prefix}/data/{k}", warnings, strict)


def _byteorder(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return _read_member(zf, info, 16).strip()
    except ValueError:
        return b""


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    try:
        with zf.open(info) as f:
            return f.read(limit)
    except ZIP_ERRORS as exc:
        raise ValueError(f"{info.filename} cannot be read: {exc}") from None


def _legacy_pickles(head: bytes) -> tuple[Literal["little", "big"], PickleTensors, list[str] | None, int]:
    """Byte order, object scan, storage keys (None if unreadable) and the offset after the keys."""
    try:
        magic, pos = scan_value(head)
    except ValueError:
        magic, pos = None, 0
    if magic != LEGACY_MAGIC or isinstance(magic, bool):
        raise ValueError("a pickle without torch's magic number: not a torch.save file")
    proto, pos = scan_value(head, pos)
    if proto != LEGACY_PROTOCOL or isinstance(proto, bool):
        raise ValueError(f"legacy torch.save protocol {proto!r} is unknown")
    info, pos = scan_value(head, pos)
    order: Literal["little", "big"] = (
        "big" if isinstance(info, dict) and info.get("little_endian", True) is False else "little")
    scan = scan_tensors(head, pos)
    if not scan.readable:
        return order, scan, None, -1
    try:
        keys, end = scan_value(head, scan.end)
    except ValueError:
        return order, scan, None, -1
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        return order, scan, None, -1
    return order, scan, keys, end


def _legacy_structure(stream: BinaryIO, size: int, strict: bool) -> TorchStructure:
    n = 1 << 20
    while True:  # the pickles come first: read more of the file only while they do not decode
        stream.seek(0)
        head = read_exact(stream, min(size, n))
        order, scan, keys, pos = _legacy_pickles(head)
        if keys is not None or n >= min(size, MAX_PKL):
            break
        n *= 4
    warnings = ["storages are big-endian"] if order == "big" else []
    if not scan.readable:
        if size > MAX_PKL:
            warnings.append(f"only the first {MAX_PKL} bytes are scanned")
        return TorchStructure({}, [*warnings, *scan.warnings])
    if keys is None:
        msg = "the legacy storage key list cannot be read"
        if strict:
            raise ValueError(msg)
        return _finish(scan, {k: None for k in scan.storages}, str, [*warnings, msg], strict)
    have: dict[str, int | None] = {k: None for k in keys}
    off = pos
    for key in keys:
        ref = scan.storages.get(key)
        if ref is None or ref.unit is None:
            warnings.append(f"legacy storage {key!r}: element size unknown, it and later storages are not checked")
            break
        stream.seek(off)
        hdr = read_exact(stream, 8)
        numel = int.from_bytes(hdr, order) if len(hdr) == 8 else 0
        avail = max(0, min(numel * ref.unit, size - off - 8))
        have[key] = avail
        off += 8 + numel * ref.unit
        if off > size:
            break
    else:
        if off < size:
            warnings.append(f"{size - off} bytes after the last legacy storage")
    extra = sorted(set(keys) - set(scan.storages))
    if extra:
        warnings.append(f"{len(extra)} storages no tensor references, e.g. {extra[0]!r}")
    return _finish(scan, have, lambda k: f"legacy storage {k!r}", warnings, strict)


def _storage_problems(scan: PickleTensors, have: dict[str, int | None], where: Callable[[str], str],
                      first: dict[int, str]) -> list[str]:
    """Each referenced storage: present, as long as its record, long enough for its tensors."""
    viewers: dict[str, list[TensorRef]] = {}
    for t in scan.tensors:
        viewers.setdefault(t.storage.key, []).append(t)
    problems: list[str] = []
    for key, ref in scan.storages.items():
        ts = viewers.get(key, [])
        label = next((f"tensor {first[id(t)]!r}" for t in ts if id(t) in first), f"a tensor on storage {key!r}")
        if key not in have:
            problems.append(f"{label}: its storage {where(key)} is missing")
            continue
        n = have[key]
        if n is None:
            continue
        if ref.nbytes is not None and ref.nbytes != n:
            problems.append(f"{label}: storage {where(key)} holds {n} bytes, its record says "
                            f"{ref.numel} x {ref.unit} ({_storage_name(ref)})")
        for t in ts:
            need = t.needed_bytes()
            if need is not None and need > n:
                name = first.get(id(t), f"on storage {key!r}")
                problems.append(f"tensor {name!r} ({t.dtype} {list(t.shape)}, offset {t.offset}, stride "
                                f"{list(t.stride)}) needs {need} bytes of storage {where(key)}, which holds {n}")
    return problems


def _storage_name(ref: StorageRef) -> str:
    return ref.storage_type.rsplit(".", 1)[-1]


def _finish(scan: PickleTensors, have: dict[str, int | None], where: Callable[[str], str],
            warnings: list[str], strict: bool) -> TorchStructure:
    first: dict[int, str] = {}
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, t in scan.named:
        first.setdefault(id(t), name)
        if t.dtype is None:
            warnings.append(f"tensor {name!r}: dtype unknown, left out")
        elif name in tensors and tensors[name] != (t.dtype, t.shape):
            warnings.append(f"two different tensors are named {name!r}; the first is kept")
        else:
            tensors.setdefault(name, (t.dtype, t.shape))
    problems = _storage_problems(scan, have, where, first)
    if strict and problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)
    return TorchStructure(tensors, [*warnings, *scan.warnings, *problems])
