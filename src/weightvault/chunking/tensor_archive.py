"""One tensor out of a ``torch.save`` zip archive, read without unpickling.

DCP's ``FileSystemWriter`` (and ``integrations.dcp.WeightvaultWriter``) store every tensor item
as ``torch.save(tensor)``: a zip archive whose ``data.pkl`` rebuilds one tensor over one storage
``data/<key>``. ``read_tensor_archive`` checks the zip structure (``zipscan.zip_members``), reads
``data.pkl`` through the non-executing scan (``pickle_scan.scan_tensors``) and returns the view
(dtype, shape, stride, offset) and the storage's raw little-endian bytes, so a reader can rebuild
the tensor with ``torch.frombuffer(...).as_strided(...)`` instead of ``torch.load``.

A DCP object item (``BYTE_IO``) is ``torch.save(obj)`` too: ``read_plain_object`` returns its
value when it is plain values (``pickle_values.exact_value``), and refuses anything else.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from weightvault.chunking.pickle_scan import ELEMENT_SIZES, TORCH_DTYPES, scan_tensors
from weightvault.chunking.pickle_values import exact_value
from weightvault.chunking.zipscan import ZIP_ERRORS, open_zip, zip_members

__all__ = ["ArchiveTensor", "read_plain_object", "read_tensor_archive"]

MAX_PKL = 1024 * 1024  # one tensor's data.pkl is a few hundred bytes
MAX_OBJECT = 256 * 1024 * 1024  # a pickled object larger than this is refused rather than decoded
# storage dtype code -> torch's canonical dtype name (the first name TORCH_DTYPES lists for it)
TORCH_NAMES: dict[str, str] = {}
for _name, _code in TORCH_DTYPES.items():
    TORCH_NAMES.setdefault(_code, _name)


@dataclass(frozen=True, slots=True)
class ArchiveTensor:
    """A tensor as ``torch.save`` stored it: ``dtype`` is torch's name ("float32", "bfloat16");
    ``offset`` and ``stride`` count elements of ``storage``."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    storage: bytes


def read_tensor_archive(data: bytes) -> ArchiveTensor:
    """The single tensor ``data`` (a whole ``torch.save`` zip archive) holds. ValueError naming
    the problem: not a zip archive, a zip structure that does not add up, a CRC mismatch, more or
    other than exactly one tensor at the root, a dtype this version does not know, big-endian
    storages, or a storage shorter than the view needs."""
    stream = io.BytesIO(data)
    with open_zip(stream) as zf:
        prefix = _prefix(zf, stream, len(data))
        scan = scan_tensors(_read(zf, f"{prefix}/data.pkl", MAX_PKL))
        if not scan.readable or len(scan.tensors) != 1 or [n for n, _ in scan.named] != [""]:
            raise ValueError("its data.pkl is not one tensor (as torch.save(tensor) writes)"
                             + (f": {scan.warnings[0]}" if scan.warnings else ""))
        ref = scan.tensors[0]
        if ref.dtype is None or ref.dtype not in TORCH_NAMES:
            raise ValueError(f"a tensor of a dtype this version does not read ({ref.storage.storage_type})")
        storage = _read(zf, f"{prefix}/data/{ref.storage.key}", None)
    need, expected = ref.needed_bytes(), ref.storage.nbytes
    if expected is not None and len(storage) != expected:
        raise ValueError(f"its storage holds {len(storage)} bytes, its record says {expected}")
    if need is None or need > len(storage) or len(storage) % ELEMENT_SIZES[ref.dtype]:
        raise ValueError(f"its storage of {len(storage)} bytes is too short for a {ref.dtype} view of shape"
                         f" {list(ref.shape)} at offset {ref.offset}")
    return ArchiveTensor(TORCH_NAMES[ref.dtype], ref.shape, ref.stride, ref.offset, storage)


def read_plain_object(data: bytes) -> object:
    """The value a ``torch.save(obj)`` archive (or a bare pickle) holds, if it is plain values:
    None, bool, int, float, bytes, str, tuple, list, dict. ValueError naming what is not (a class
    instance, a global, a tensor) or what does not add up; nothing is imported or executed."""
    if not data.startswith(b"PK\x03\x04"):
        return exact_value(data)
    stream = io.BytesIO(data)
    with open_zip(stream) as zf:
        prefix = _prefix(zf, stream, len(data))
        if any(n.startswith(f"{prefix}/data/") for n in zf.namelist()):
            raise ValueError("it holds tensor storages: not plain values")
        return exact_value(_read(zf, f"{prefix}/data.pkl", MAX_OBJECT))


def _prefix(zf: zipfile.ZipFile, stream: io.BytesIO, size: int) -> str:
    """The archive's record prefix, after checking its zip structure and byte order."""
    members = zip_members(zf, stream, size)
    pkls = [m.info for m in members if m.info.filename.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise ValueError(f"a torch.save archive has one <archive>/data.pkl, this one {len(pkls)}")
    prefix = pkls[0].filename[: -len("/data.pkl")]
    if f"{prefix}/byteorder" in zf.namelist() and _read(zf, f"{prefix}/byteorder", 16).strip() == b"big":
        raise ValueError("its storages are big-endian; only little-endian archives are read")
    return prefix


def _read(zf: zipfile.ZipFile, name: str, limit: int | None) -> bytes:
    try:
        info = zf.getinfo(name)
        if limit is not None and info.file_size > limit:
            raise ValueError(f"{name} is larger than {limit} bytes")
        return zf.read(info)  # checks the member's CRC-32
    except KeyError:
        raise ValueError(f"{name} is missing") from None
    except ZIP_ERRORS as exc:
        raise ValueError(f"{name} cannot be read: {exc}") from None
