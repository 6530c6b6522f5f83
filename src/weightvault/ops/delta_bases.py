"""Delta bases for a backup: find the earlier version of each tensor chunk of a file.

For a file being backed up, the candidate earlier versions are, in order of preference:

1. the file at the same path in the parent snapshot (a model file rewritten in place);
2. the newest earlier checkpoints of the same run (up to ``SKIP_BACK``, newest first: one whose
   chain is at the depth limit gives way to an older one within it, instead of the chunk being
   stored alone): the files whose paths differ only in the numbers of one component
   (``run/checkpoint-40/model.safetensors`` after ``run/checkpoint-20/...``; ``step-00040``,
   ``epoch3-step1000``, ``model_step40.pt`` alike), taken from this snapshot or the parent, ordered
   by the numbers (never by name string, so ``checkpoint-500`` comes before ``checkpoint-1000``).

Within them a chunk's base is the blob with the same (tensor name, part, dtype), as recorded in the
manifest's ``tensors`` field. A BF16 chunk is first offered the F32 part of the same tensor from a
file of this backup in the same directory (a model saved as F32 with its BF16 export next to it:
stored as a cast of it, format version 7), its earlier version as the fallback; the repository then
only uses it if it has the same length, is durable and its chain is short enough
(``Repository.save_blob``). Everything here is a hint: a wrong or missing base only costs
compression, never correctness, because a delta blob's id is the hash of its own plaintext and
decoding is verified against it. A base's plaintext is read from the source file on disk when it is
still there (checked against the blob id, so a file changed since is never trusted), else loaded
from the repository.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass

from weightvault.errors import WeightvaultError
from weightvault.repository.manifest import Node, TensorPart
from weightvault.repository.repo import DeltaBase, Repository

__all__ = ["BaseFinder", "series_key"]

log = logging.getLogger(__name__)

_DIGITS = re.compile(rb"\d+")
#: earlier checkpoints of a run offered per chunk, newest first: where the newest one's chain is at
#: the depth limit, the chunk is coded against an older one within it rather than alone
SKIP_BACK = 4


def series_key(rel: bytes) -> tuple[bytes, tuple[int, ...]] | None:
    """(series, numbers) of a path: the deepest directory component holding digits (else the file
    name) has its digit runs replaced by ``#``; ``numbers`` are those runs as integers. None if no
    component holds a digit."""
    parts = rel.split(b"/")
    order = [*range(len(parts) - 2, -1, -1), len(parts) - 1]
    for i in order:
        runs = _DIGITS.findall(parts[i])
        if runs:
            key = [*parts[:i], _DIGITS.sub(b"#", parts[i]), *parts[i + 1 :]]
            return b"/".join(key), tuple(int(r) for r in runs)
    return None


@dataclass(slots=True)
class _FileRef:
    """A file version whose chunks may serve as bases."""

    rel: bytes
    blobs: list[bytes]
    tensors: list[TensorPart | None]
    abs_path: bytes | None  # where its bytes may still be on disk
    offsets: list[int] | None  # chunk offsets if known (files read by this backup)


@dataclass(frozen=True, slots=True)
class _BaseRef:
    blob_id: bytes
    abs_path: bytes | None
    offset: int | None
    length: int


class BaseFinder:
    """Per-backup registry of file versions that may serve as delta bases. Not thread-safe: used by
    the backup's reading thread; ``DeltaBase.load`` functions it returns are thread-safe."""

    def __init__(self, repo: Repository, previous: dict[bytes, Node], roots: dict[bytes, bytes]) -> None:
        self.repo = repo
        self._roots = roots
        self._parent: dict[bytes, _FileRef] = {}
        self._series: dict[bytes, dict[tuple[int, ...], _FileRef]] = {}
        self._f32: dict[bytes, list[_FileRef]] = {}  # directory -> files of this backup with F32 parts
        for node in previous.values():
            if node.tensors is not None:
                ref = _FileRef(node.path, node.blobs, node.tensors, self._abs_of(node.path), None)
                self._parent[node.path] = ref
                self._add_series(ref)

    def _abs_of(self, rel: bytes) -> bytes | None:
        root, _, rest = rel.partition(b"/")
        top = self._roots.get(root)
        if top is None:
            return None
        return os.path.join(top, rest) if rest else top

    def _add_series(self, ref: _FileRef) -> None:
        sk = series_key(ref.rel)
        if sk is not None:
            self._series.setdefault(sk[0], {})[sk[1]] = ref

    def note(self, rel: bytes, abs_path: bytes, node: Node, offsets: list[int] | None) -> None:
        """Record a file of this backup (read now, or unchanged from the parent) as a future base."""
        if node.tensors is not None:
            ref = _FileRef(rel, node.blobs, node.tensors, abs_path, offsets)
            self._add_series(ref)
            if any(t is not None and t[2] == "F32" for t in node.tensors):
                self._f32.setdefault(os.path.dirname(rel), []).append(ref)

    def bases_for(self, rel: bytes) -> dict[TensorPart, DeltaBase]:
        """Delta base candidates for the chunks of ``rel``, keyed by (tensor, part, dtype)."""
        refs: list[_FileRef] = []
        same = self._parent.get(rel)
        if same is not None:
            refs.append(same)
        sk = series_key(rel)
        if sk is not None:
            versions = self._series.get(sk[0], {})
            earlier = sorted((n for n in versions if n < sk[1]), reverse=True)[:SKIP_BACK]
            refs += [versions[n] for n in earlier]
        out: dict[TensorPart, DeltaBase] = {}
        for ref in reversed(refs):  # the preferred candidate comes last: the others are its fallbacks
            for key, base in self._chunk_bases(ref).items():
                out[key] = DeltaBase(base.blob_id, base.load, fallback=out.get(key))
        siblings = self._f32.get(os.path.dirname(rel))
        if siblings:
            self._add_casts(out, siblings)
        return out

    def _add_casts(self, out: dict[TensorPart, DeltaBase], siblings: list[_FileRef]) -> None:
        """Offer each F32 part of the sibling files as the first base of the BF16 part of the same
        tensor (a cast, tried before the chunk's earlier version, which stays its fallback)."""
        originals: dict[tuple[str, int], DeltaBase] = {}
        for ref in siblings:
            for (name, part, dtype), base in self._chunk_bases(ref).items():
                if dtype == "F32":
                    originals[(name, part)] = base
        for (name, part), base in originals.items():
            key = (name, part, "BF16")
            out[key] = DeltaBase(base.blob_id, base.load, fallback=out.get(key))

    def _chunk_bases(self, ref: _FileRef) -> dict[TensorPart, DeltaBase]:
        offsets = ref.offsets
        if offsets is None:
            offsets = []
            pos = 0
            for b in ref.blobs:
                entry = self.repo.index.get(b)
                if entry is None:  # cannot place the chunks on disk; bases still load from the repository
                    offsets = []
                    break
                offsets.append(pos)
                pos += entry.blob.raw_length
        out: dict[TensorPart, DeltaBase] = {}
        for i, (blob_id, t) in enumerate(zip(ref.blobs, ref.tensors, strict=True)):
            if t is None:
                continue
            # a base still being stored now may be durable by the time the dependant is saved
            # (Repository.save_blob decides); its length then comes from the recorded offsets
            if offsets and i + 1 < len(offsets):
                length = offsets[i + 1] - offsets[i]
            else:
                entry = self.repo.index.get(blob_id)
                if entry is None:
                    continue
                length = entry.blob.raw_length
            off = offsets[i] if offsets else None
            base = _BaseRef(blob_id, ref.abs_path, off, length)
            out[t] = DeltaBase(blob_id, functools.partial(self._load, base))
        return out

    def _load(self, ref: _BaseRef) -> bytes | None:
        """The base's plaintext: from the source file if it still holds it there, else the repository."""
        if ref.abs_path is not None and ref.offset is not None:
            try:
                fd = os.open(ref.abs_path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    data = os.pread(fd, ref.length, ref.offset)
                finally:
                    os.close(fd)
                if len(data) == ref.length and self.repo.key.blob_id(data) == ref.blob_id:
                    return data
            except OSError:
                pass
        try:
            return self.repo.load_blob(ref.blob_id)
        except WeightvaultError as exc:
            log.warning("delta base %s unavailable, storing without it: %s", ref.blob_id.hex(), exc.message)
            return None
