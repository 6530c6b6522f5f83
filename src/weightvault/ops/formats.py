"""Model file formats as validation sees them: recognised by content, parsed strictly.

``detect`` names a file's format from its first bytes (``chunking.registry.detect_format``: the
splitters' own tests, asked without the file's name), so a hub-cache blob, a ``*.weights`` file or
a renamed checkpoint is checked as what it is; a file whose *name* says model but whose content is
no known format gets a warning instead of silence. ``parse`` runs the splitters' parsers in strict
mode and returns the tensors' dtypes and shapes with any warnings (a dtype this version does not
know, a format whose library is not installed): a warning never fails validation, a ValueError
always does. Nothing is ever unpickled or executed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from weightvault.chunking.dcp import Window, dcp_archives
from weightvault.chunking.dcp_metadata import DcpItem, parse_dcp_metadata
from weightvault.chunking.gguf import gguf_header
from weightvault.chunking.numpy_formats import npz_arrays, parse_npy_header
from weightvault.chunking.registry import detect_format, looks_like_model
from weightvault.chunking.safetensors import parse_safetensors
from weightvault.chunking.torchzip import torch_zip_members, torch_zip_structure
from weightvault.ops.shard_index import MAX_INDEX, is_shard_index, parse_shard_index

__all__ = ["FORMATS", "HEAD_BYTES", "Parsed", "Structure", "check_items", "detect", "parse", "structure"]

HEAD_BYTES = 64 * 1024  # what detection reads, as the splitters do
Structure = dict[str, tuple[str, tuple[int, ...]]]  # tensor name -> (dtype, shape)


@dataclass
class Parsed:
    tensors: Structure = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    checked: bool = True  # False: nothing could be checked (the warnings say why): no level is claimed
    items: list[DcpItem] = field(default_factory=list)  # a DCP .metadata's items, in sibling files
    weight_map: dict[str, str] = field(default_factory=dict)  # a shard index: tensor -> shard file


# names that claim one format: content that is not that format fails level 2, as a broken model
# (not ``.keras``: Keras 3 writes a zip there, Keras 2 HDF5, which content recognises)
_CLAIMED = {".safetensors": "safetensors", ".npy": "npy", ".npz": "npz", ".gguf": "gguf", ".h5": "hdf5",
            ".hdf5": "hdf5"}


def detect(name: str, head: bytes) -> tuple[str | None, list[str]]:
    """(format or None, warnings). Content decides; failing that, a name that claims one format
    (``model.safetensors``) is checked as that format, so a broken model fails; a name that only
    says "model" (``.bin``, ``.pt``: torch, but also anything else) gets a warning."""
    fmt = detect_format(head)
    lower = name.lower()
    if fmt == "torch-zip" and lower.endswith(".distcp"):
        return "dcp", []  # a shard whose first archive is larger than the head: every archive is checked
    if fmt is not None:
        return fmt, []
    if is_shard_index(lower, head):
        return "shard-index", []
    claimed = next((f for ext, f in _CLAIMED.items() if lower.endswith(ext)), None)
    if claimed is not None:
        return claimed, []
    if looks_like_model(name):
        what = "empty" if not head else "none of safetensors, npy, npz, torch, DCP, GGUF or HDF5"
        return None, [f"the name says model file but the content is {what}: only level 1 applies"]
    return None, []


def parse(fmt: str, f: BinaryIO, size: int, *, read_data: bool = True) -> Parsed:
    """Parse ``f`` (``size`` bytes) as ``fmt`` strictly; ValueError naming the problem.
    ``read_data``: also check what needs the whole file read (zip members' CRCs); False for a
    backed-up file, whose blobs are authenticated and hash-checked as they load."""
    return FORMATS[fmt](f, size, read_data)


def structure(fmt: str, f: BinaryIO, size: int, *, read_data: bool = True) -> Structure:
    """``parse(...).tensors``."""
    return parse(fmt, f, size, read_data=read_data).tensors


def _safetensors(f: BinaryIO, size: int, read_data: bool) -> Parsed:
    h = parse_safetensors(f, size, strict=True)
    return Parsed({t.name: (t.dtype, t.shape) for t in h.tensors}, list(h.warnings))


def _npy(f: BinaryIO, size: int, read_data: bool) -> Parsed:
    try:
        h = parse_npy_header(f, size, strict=True)
    except ValueError as exc:
        raise ValueError(f"array: {exc}") from None
    return Parsed({"": (h.descr, h.shape)})


def _npz(f: BinaryIO, size: int, read_data: bool) -> Parsed:
    return Parsed({name: (h.descr, h.shape) for name, h in npz_arrays(f, size, check_crc=read_data).items()})


def _torch_zip(f: BinaryIO, size: int, read_data: bool) -> Parsed:
    """Member ranges (CRCs with ``read_data``), then the tensors the pickle describes, read by the
    non-executing scan; every storage a tensor views must exist and be long enough."""
    torch_zip_members(f, size, check_crc=read_data)
    return _torch(f, size)


def _torch(f: BinaryIO, size: int) -> Parsed:
    found = torch_zip_structure(f, size, strict=True)
    return Parsed(dict(found.tensors), list(found.warnings))


def _torch_legacy(f: BinaryIO, size: int, read_data: bool) -> Parsed:
    return _torch(f, size)


def _dcp(f: BinaryIO, size: int, read_data: bool) -> Parsed:
    """A DCP ``.distcp`` shard: each concatenated torch zip checked as one, its tensors named
    ``<archive index>/<name>`` (the fully qualified names live in the checkpoint's ``.metadata``,
    which is not read here)."""
    out = Parsed()
    archives = dcp_archives(f, size)
    if not archives:
        raise ValueError("no torch zip archive found in the shard")
    for i, (start, end) in enumerate(archives):
        window = cast(BinaryIO, io.BufferedReader(Window(f, start, end)))
        try:
            part = _torch_zip(window, end - start, read_data)
        except ValueError as exc:
            raise ValueError(f"archive {i} (bytes {start}..{end}): {exc}") from None
        out.tensors.update({f"{i}/{name}": t for name, t in part.tensors.items()})
        out.warnings += [f"archive {i}: {w}" for w in part.warnings]
    return out


def _dcp_metadata(f: BinaryIO, size: int, read_data: bool) -> Parsed:
    """A DCP ``.metadata``: tensors by fully qualified name (dtype, global shape), pickled objects
    as ``("object", ())``, and the items whose bytes ``check_items`` finds in the shards."""
    md = parse_dcp_metadata(f.read(size))
    tensors: Structure = dict(md.tensors)
    tensors.update({fqn: ("object", ()) for fqn in md.objects})
    return Parsed(tensors, md.warnings, items=md.items)


def check_items(items: list[DcpItem], directory: str, inside: str) -> list[str]:
    """Problems with the shards a DCP ``.metadata`` in ``directory`` points to: each file must be
    there (not through a link leading outside ``inside``), each item's range inside it and, unless
    DCP extensions transformed it, exactly one ``torch.save`` archive of the file or (raw
    serialization) exactly the chunk's bytes."""
    problems: list[str] = []
    by_file: dict[str, list[DcpItem]] = {}
    for it in items:
        by_file.setdefault(it.path, []).append(it)
    for name, its in sorted(by_file.items()):
        path = os.path.join(directory, name)
        real = os.path.realpath(path)
        if not real.startswith(inside.rstrip(os.sep) + os.sep):
            problems.append(f"shard {name!r} resolves outside the validated tree: not read")
            continue
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                archives = set(dcp_archives(f, size))
        except OSError as exc:
            problems.append(f"shard {name!r} holding {len(its)} items cannot be read: {exc.strerror or exc}")
            continue
        for it in its:
            what = f"chunk {list(it.chunk)} of tensor {it.fqn!r}" if it.chunk is not None else f"object {it.fqn!r}"
            end = it.start + it.length
            if end > size:
                problems.append(f"{what}: bytes {it.start}..{end} lie beyond the end of {name} ({size} bytes)")
            elif not it.transformed and (it.start, end) not in archives and it.length != it.nbytes:
                problems.append(f"{what}: bytes {it.start}..{end} of {name} are not one torch.save archive")
    return problems


def _shard_index(f: BinaryIO, size: int, read_data: bool) -> Parsed:
    """A sharded checkpoint's index (``ops.shard_index``): each tensor "in <shard file>"."""
    if size > MAX_INDEX:
        raise ValueError(f"{size} bytes: larger than the {MAX_INDEX} an index is read up to")
    wm = parse_shard_index(f.read(size))
    return Parsed({name: (f"in {shard}", ()) for name, shard in wm.items()}, weight_map=wm)


def _gguf(f: BinaryIO, size: int, read_data: bool) -> Parsed:
    h = gguf_header(f, size, strict=True)
    return Parsed({name: (f"ggml-{gtype}", dims) for name, gtype, dims in h.tensors}, list(h.warnings))


def _hdf5(f: BinaryIO, size: int, read_data: bool) -> Parsed:
    """Datasets' dtypes and shapes through h5py (an optional extra); without it, a warning. A
    contiguous dataset's bytes must lie inside the file; with ``read_data`` every dataset is read
    (chunked, compressed ones decompress)."""
    try:
        import h5py
    except ImportError:
        return Parsed(warnings=["HDF5: levels 2 and 3 skipped: h5py is not installed (pip install h5py)"],
                      checked=False)
    out: Structure = {}
    problems: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        out[name] = (str(obj.dtype), tuple(int(n) for n in obj.shape))
        offset = obj.id.get_offset()
        if offset is not None and offset + obj.id.get_storage_size() > size:
            problems.append(f"dataset {name!r} lies beyond the end of the file")
        elif read_data and obj.size:
            obj[()]  # decodes every chunk: a damaged one raises

    try:
        with h5py.File(io.BufferedReader(_Unclosable(f)), "r") as h5:
            h5.visititems(visit)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"HDF5: {exc}") from None
    if problems:
        raise ValueError(problems[0])
    return Parsed(out)


class _Unclosable(io.RawIOBase):
    """``f`` for h5py, which closes what it is given."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


FORMATS: dict[str, Callable[[BinaryIO, int, bool], Parsed]] = {
    "safetensors": _safetensors, "npy": _npy, "npz": _npz, "gguf": _gguf, "torch-zip": _torch_zip,
    "torch-legacy": _torch_legacy, "dcp": _dcp, "dcp-metadata": _dcp_metadata, "hdf5": _hdf5,
    "shard-index": _shard_index,
}
