"""Looking inside backed-up model files without restoring them: a file's tensors, and what changed
between two checkpoints tensor by tensor (the dashboard's snapshot browser and checkpoint diff).

``tensors`` reads a stored file through its blobs (``validate.StoredFile``: only the blobs the
format's header lives in) and parses it with the validation parsers, so nothing is unpickled and
no library is needed. ``tensor_diff`` compares two snapshots' manifests: files by path, and a file
whose directory differs only in numbers (``checkpoint-10/model.safetensors`` against
``checkpoint-20/model.safetensors``) is paired with its counterpart; in files cut along tensors
(``Node.tensors``) a tensor changed when the blobs that hold it differ; small tensors stored in
one piece with the tensor before them (``chunking.tensor_plan``) are reported under that tensor's
name, which ``grouped`` lists. ``stored_added`` counts the
stored bytes of blobs the second snapshot needs that the first did not reference.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import BinaryIO, cast

import numpy as np

from weightvault.errors import WeightvaultError
from weightvault.ops.formats import HEAD_BYTES, detect, parse
from weightvault.ops.validate import StoredFile
from weightvault.repository.blobcache import BlobCache
from weightvault.repository.manifest import Node, iter_manifest
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot

__all__ = ["FileChange", "TensorDiff", "TensorInfo", "TensorTable", "tensor_diff", "tensor_table"]

# element sizes by the dtype names the parsers report (safetensors, numpy, GGUF's float types)
_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I64": 64,
         "I32": 32, "I16": 16, "I8": 8, "U64": 64, "U32": 32, "U16": 16, "U8": 8, "BOOL": 8,
         "float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "int64": 64, "int32": 32, "int16": 16,
         "int8": 8, "uint8": 8, "bool": 8, "complex64": 64, "complex128": 128}
_NUMBERS = re.compile(r"\d+")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int | None  # None: a dtype whose element size this version does not know


@dataclass
class TensorTable:
    path: str
    size: int
    format: str | None  # None: not a model file this version reads
    tensors: list[TensorInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class FileChange:
    change: str  # "+" added, "-" removed, "M" content changed
    path: str  # in the second snapshot (the first for a removed file)
    before: str | None  # the path it was compared with (a paired checkpoint directory), if any
    size_before: int
    size_after: int
    stored_added: int  # stored bytes of this file's blobs that the first snapshot did not reference
    tensor_aware: bool  # both versions cut along tensors: the tensor lists below are exact
    changed: list[str] = field(default_factory=list)
    grouped: list[str] = field(default_factory=list)  # of ``changed``: stored with the small tensors after it
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0


@dataclass
class TensorDiff:
    a: str
    b: str
    files: list[FileChange] = field(default_factory=list)
    unchanged_files: int = 0
    stored_added: int = 0


def tensor_table(repo: Repository, node: Node) -> TensorTable:
    """The tensors of one stored file (empty, with ``format`` None, for anything else)."""
    shown = node.path.decode("utf-8", "replace")
    table = TensorTable(shown, node.size, None)
    if node.type != "file" or node.size == 0:
        return table
    cache = BlobCache(repo, 16 * 1024 * 1024)
    try:
        with StoredFile(repo, node, cache.load_blob) as f:
            head = f.read(HEAD_BYTES)
            fmt, warnings = detect(shown.rsplit("/", 1)[-1], head)
            table.format, table.warnings = fmt, list(warnings)
            if fmt is None:
                return table
            f.seek(0)
            parsed = parse(fmt, cast(BinaryIO, f), node.size, read_data=False)
    except (ValueError, WeightvaultError) as exc:
        table.warnings.append(f"cannot be read as {table.format or 'a model file'}: {exc}")
        return table
    table.warnings += parsed.warnings
    for name, (dtype, shape) in parsed.tensors.items():
        bits = _bits(dtype)
        table.tensors.append(TensorInfo(name, dtype, tuple(shape),
                                        None if bits is None else math.prod(shape) * bits // 8))
    return table


def _bits(dtype: str) -> int | None:
    """Bits per element of a parser's dtype name (safetensors ``F32``, numpy ``<f4``/``int64``);
    None for block-quantised or unknown types (GGUF ``Q4_K``)."""
    if dtype in _BITS:
        return _BITS[dtype]
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        return None
    return None if dt.kind in "OVU" else dt.itemsize * 8


def _pair_key(path: bytes) -> tuple[str, str]:
    text = path.decode("utf-8", "replace")
    head, _, name = text.rpartition("/")
    return _NUMBERS.sub("#", head), name


def _tensor_blobs(node: Node) -> dict[str, tuple[bytes, ...]] | None:
    if not node.tensors or all(t is None for t in node.tensors):
        return None
    out: dict[str, list[bytes]] = {}
    for blob, part in zip(node.blobs, node.tensors, strict=True):
        out.setdefault(part[0] if part is not None else "", []).append(blob)
    # a format's header and padding between tensors are parts too (``__header__``): not tensors
    return {k: tuple(v) for k, v in out.items() if k and not (k.startswith("__") and k.endswith("__"))}


def _stored(repo: Repository, blobs: list[bytes], known: set[bytes], counted: set[bytes]) -> tuple[int, int]:
    """(this file's new stored bytes, of them not counted for an earlier file)."""
    mine = total = 0
    for bid in dict.fromkeys(blobs):
        if bid in known:
            continue
        entry = repo.index.get(bid)
        n = entry.blob.length if entry is not None else 0
        mine += n
        if bid not in counted:
            counted.add(bid)
            total += n
    return mine, total


def _compare(repo: Repository, x: Node | None, y: Node | None, known: set[bytes], counted: set[bytes],
             res: TensorDiff) -> None:
    path = (y or x).path.decode("utf-8", "replace")  # type: ignore[union-attr]
    before = x.path.decode("utf-8", "replace") if x is not None and y is not None and x.path != y.path else None
    change = "+" if x is None else "-" if y is None else "M"
    mine, total = _stored(repo, y.blobs, known, counted) if y is not None else (0, 0)
    res.stored_added += total
    tx, ty = (_tensor_blobs(x) if x else None), (_tensor_blobs(y) if y else None)
    fc = FileChange(change, path, before, x.size if x else 0, y.size if y else 0, mine,
                    tx is not None and ty is not None)
    if tx is not None and ty is not None and y is not None:
        fc.changed = sorted(k for k in tx.keys() & ty.keys() if tx[k] != ty[k])
        fc.added, fc.removed = sorted(ty.keys() - tx.keys()), sorted(tx.keys() - ty.keys())
        fc.unchanged = len(tx.keys() & ty.keys()) - len(fc.changed)
        fc.grouped = _grouped(repo, y, ty, fc.changed)
    res.files.append(fc)


def _grouped(repo: Repository, node: Node, parts: dict[str, tuple[bytes, ...]], names: list[str]) -> list[str]:
    """Of ``names``, those whose pieces hold more bytes than the tensor itself: small tensors
    (biases, norms) share a piece with the one before them, and a change to any of them shows up
    under that one's name."""
    if not names:
        return []
    sizes = {t.name: t.nbytes for t in tensor_table(repo, node).tensors}
    out = []
    for name in names:
        entries = [repo.index.get(b) for b in parts[name]]
        held = sum(e.blob.raw_length for e in entries if e is not None)
        expected = sizes.get(name)
        if expected is not None and held > expected:
            out.append(name)
    return out


def tensor_diff(repo: Repository, a: Snapshot, b: Snapshot) -> TensorDiff:
    """What changed from ``a`` to ``b``, file by file and tensor by tensor (see the module doc)."""
    before = {n.path: n for n in iter_manifest(a.tree, repo.load_blob) if n.type == "file"}
    after = {n.path: n for n in iter_manifest(b.tree, repo.load_blob) if n.type == "file"}
    known = {bid for n in before.values() for bid in n.blobs}
    res, counted = TensorDiff(a.id, b.id), set[bytes]()
    gone = {p: n for p, n in before.items() if p not in after}
    new = {p: n for p, n in after.items() if p not in before}
    by_key: dict[tuple[str, str], list[bytes]] = {}
    for p in gone:
        by_key.setdefault(_pair_key(p), []).append(p)
    pairs: dict[bytes, bytes] = {}  # new path -> the gone path it continues
    new_by_key: dict[tuple[str, str], list[bytes]] = {}
    for p in new:
        new_by_key.setdefault(_pair_key(p), []).append(p)
    for key, news in new_by_key.items():
        olds = by_key.get(key, [])
        if len(news) == 1 and len(olds) == 1:
            pairs[news[0]] = olds[0]
    for path in sorted(after):
        y = after[path]
        x = before.get(path) or (before[pairs[path]] if path in pairs else None)
        if x is not None and (x.sha256, x.size) == (y.sha256, y.size):
            res.unchanged_files += 1
            continue
        _compare(repo, x, y, known, counted, res)
    paired = set(pairs.values())
    for path in sorted(gone):
        if path not in paired:
            _compare(repo, gone[path], None, known, counted, res)
    return res
