"""A PyTorch Distributed Checkpoint's ``.metadata`` file, read without executing its pickle.

``FileSystemWriter.finish`` writes ``pickle.dump(Metadata)``: a dataclass
``torch.distributed.checkpoint.metadata.Metadata`` whose state holds

- ``state_dict_metadata``: fully qualified name -> ``TensorStorageMetadata`` (``properties``:
  ``TensorProperties`` whose state tuple starts with the dtype global, ``size``: ``torch.Size``,
  ``chunks``: ``ChunkStorageMetadata(offsets, sizes)``) or ``BytesStorageMetadata`` (a pickled
  object);
- ``storage_data``: ``MetadataIndex(fqn, offset, index)`` -> ``_StorageInfo(relative_path,
  offset, length[, transform_descriptors])``: where each item's bytes lie among the ``.distcp``
  files of the same directory.

``parse_dcp_metadata`` reads both through ``pickle_values.scan_objects`` (names are strings,
nothing is imported) and checks them against each other: every chunk lies inside its tensor and
has a storage entry, every object has one, every entry names a plain file name of the directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from weightvault.chunking.pickle_scan import ELEMENT_SIZES, TORCH_DTYPES
from weightvault.chunking.pickle_values import Name, Obj, scan_objects

__all__ = ["MAGIC", "DcpItem", "DcpMetadata", "parse_dcp_metadata"]

_MODULE = "torch.distributed.checkpoint.metadata"
MAGIC = _MODULE.encode()  # in the first bytes of the pickle (its first global)
MAX_BYTES = 256 * 1024 * 1024  # a larger .metadata is refused rather than decoded in memory
# quantised torch dtypes: kept as "torch.<name>", with their sizes
_OTHER_TORCH = {"qint8": 1, "quint8": 1, "qint32": 4}


@dataclass(frozen=True, slots=True)
class DcpItem:
    """One stored item: a tensor chunk (``chunk`` its offsets) or an object (``chunk`` None),
    held at ``[start, start + length)`` of the file ``path`` (a name in the checkpoint directory)."""

    fqn: str
    chunk: tuple[int, ...] | None
    path: str
    start: int
    length: int
    transformed: bool  # stored through DCP extensions (e.g. compression): not a plain torch.save
    nbytes: int | None  # a tensor chunk's raw size (elements x dtype size), None if unknown
    sizes: tuple[int, ...] | None = None  # a tensor chunk's extent per dimension


@dataclass
class DcpMetadata:
    tensors: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)  # fqn -> dtype, shape
    torch_dtypes: dict[str, str] = field(default_factory=dict)  # fqn -> torch's name ("float32")
    objects: list[str] = field(default_factory=list)  # fqns stored as pickled bytes
    items: list[DcpItem] = field(default_factory=list)
    version: str | None = None
    warnings: list[str] = field(default_factory=list)


def _ints(v: object) -> tuple[int, ...] | None:
    if isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        return v
    return None


def _torch_dtype(props: object, fqn: str) -> str:
    """torch's dtype name ("float32") from ``TensorProperties``' state (a tuple from
    ``__getstate__``, dtype first; or a dict with ``dtype``)."""
    state = props.state if isinstance(props, Obj) else None
    dt = state[0] if isinstance(state, tuple) and state else state.get("dtype") if isinstance(state, dict) else None
    if not isinstance(dt, Name) or not dt.name.startswith("torch."):
        raise ValueError(f"tensor {fqn!r}: no dtype in its properties")
    return dt.name.removeprefix("torch.")


def _dtype(short: str, fqn: str, warnings: list[str]) -> str:
    """The dtype in ``ELEMENT_SIZES``' vocabulary, or "torch.<name>" for one it does not hold."""
    known = TORCH_DTYPES.get(short)
    if known is None:
        if short not in _OTHER_TORCH:
            warnings.append(f"tensor {fqn!r}: dtype torch.{short} is not one this version knows;"
                            " shapes are still checked")
        return f"torch.{short}"
    return known


def _tensor(fqn: str, md: Obj, warnings: list[str]) -> tuple[str, tuple[int, ...], list[tuple[int, ...]], int]:
    """(dtype, shape, chunk offsets, dtype size or 0) of a ``TensorStorageMetadata``."""
    dtype = _dtype(_torch_dtype(md.field("properties"), fqn), fqn, warnings)
    shape = _ints(md.field("size"))
    chunks = md.field("chunks")
    if shape is None or not isinstance(chunks, list):
        raise ValueError(f"tensor {fqn!r}: no size or chunk list")
    offsets: list[tuple[int, ...]] = []
    for c in chunks:
        off = _ints(c.field("offsets")) if isinstance(c, Obj) else None
        sizes = _ints(c.field("sizes")) if isinstance(c, Obj) else None
        if off is None or sizes is None or len(off) != len(shape) or len(sizes) != len(shape):
            raise ValueError(f"tensor {fqn!r}: a chunk without offsets and sizes of {len(shape)} dimensions")
        if any(o + s > n for o, s, n in zip(off, sizes, shape, strict=True)):
            raise ValueError(f"tensor {fqn!r}: chunk at {list(off)} of size {list(sizes)} lies outside {list(shape)}")
        offsets.append(off)
    return dtype, shape, offsets, ELEMENT_SIZES.get(dtype) or _OTHER_TORCH.get(dtype.removeprefix("torch."), 0)


def _chunk_sizes(md: Obj) -> dict[tuple[int, ...], tuple[int, ...]]:
    out: dict[tuple[int, ...], tuple[int, ...]] = {}
    chunks = md.field("chunks")
    for c in chunks if isinstance(chunks, list) else []:
        if isinstance(c, Obj) and (off := _ints(c.field("offsets"))) is not None:
            out[off] = _ints(c.field("sizes")) or ()
    return out


def _storage(meta: Obj) -> dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int, bool]]:
    """(fqn, chunk offsets or None) -> (relative path, offset, length, transformed)."""
    data = meta.field("storage_data")
    if not isinstance(data, dict):
        raise ValueError("no storage_data: where the items lie is not recorded")
    out: dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int, bool]] = {}
    for key, info in data.items():
        fqn = key.field("fqn") if isinstance(key, Obj) else None
        where = info.field("relative_path") if isinstance(info, Obj) else None
        start = info.field("offset") if isinstance(info, Obj) else None
        length = info.field("length") if isinstance(info, Obj) else None
        if not (isinstance(fqn, str) and isinstance(where, str) and isinstance(start, int) and isinstance(length, int)
                and start >= 0 and length >= 0):
            raise ValueError("a storage_data entry without fqn, relative_path, offset and length")
        if not where or "/" in where or "\\" in where or where in (".", "..") or "\0" in where:
            raise ValueError(f"item {fqn!r}: relative_path {where!r} is not a file name of the checkpoint directory")
        off = key.field("offset") if isinstance(key, Obj) else None
        chunk = _ints(off) if off is not None else None
        descriptors = info.field("transform_descriptors")
        out[(fqn, chunk)] = (where, start, length, bool(descriptors))
    return out


def parse_dcp_metadata(data: bytes) -> DcpMetadata:
    """The tensors, objects and stored items a ``.metadata`` pickle describes; ValueError naming
    what is missing or inconsistent (see the module docstring)."""
    if len(data) > MAX_BYTES:
        raise ValueError(f"{len(data)} bytes: larger than the {MAX_BYTES} this reads")
    root, end = scan_objects(data)
    if not isinstance(root, Obj) or root.cls != f"{_MODULE}.Metadata":
        raise ValueError("not a pickled torch.distributed.checkpoint Metadata")
    out = DcpMetadata()
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes after the pickle")
    version = root.field("version")
    out.version = version if isinstance(version, str) else None
    sdm = root.field("state_dict_metadata")
    if not isinstance(sdm, dict):
        raise ValueError("no state_dict_metadata")
    storage = _storage(root)
    for fqn, md in sdm.items():
        if not isinstance(fqn, str) or not isinstance(md, Obj):
            raise ValueError("a state_dict_metadata entry that is not a name and a storage description")
        if md.cls == f"{_MODULE}.BytesStorageMetadata":
            out.objects.append(fqn)
            _item(out, storage, fqn, None, None)
        elif md.cls == f"{_MODULE}.TensorStorageMetadata":
            dtype, shape, offsets, itemsize = _tensor(fqn, md, out.warnings)
            out.tensors[fqn] = (dtype, shape)
            out.torch_dtypes[fqn] = _torch_dtype(md.field("properties"), fqn)
            sizes = _chunk_sizes(md)
            for off in offsets:
                _item(out, storage, fqn, off, sizes[off], itemsize)
        else:
            raise ValueError(f"{fqn!r}: storage description {md.cls} is not one DCP writes")
    return out


def _item(out: DcpMetadata, storage: dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int, bool]],
          fqn: str, chunk: tuple[int, ...] | None, sizes: tuple[int, ...] | None = None, itemsize: int = 0) -> None:
    where = storage.get((fqn, chunk))
    if where is None:
        what = f"chunk {list(chunk)} of tensor {fqn!r}" if chunk is not None else f"object {fqn!r}"
        raise ValueError(f"{what} has no storage_data entry: its bytes are not recorded anywhere")
    nbytes = math.prod(sizes) * itemsize if sizes is not None and itemsize else None
    out.items.append(DcpItem(fqn, chunk, where[0], where[1], where[2], where[3], nbytes, sizes))
