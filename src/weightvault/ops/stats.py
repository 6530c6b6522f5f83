"""Stats: raw bytes, unique bytes after deduplication, stored bytes after compression/encryption."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from weightvault.backends.base import FileType
from weightvault.codec.compress import CODEC_NAMES
from weightvault.ops.layout import chunking_of
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot

__all__ = ["Stats", "stats"]


@dataclass
class Stats:
    snapshots: int
    files: int
    raw_bytes: int  # sum of file sizes over the selected snapshots
    unique_bytes: int  # plaintext bytes of the distinct blobs they reference
    stored_bytes: int  # bytes those blobs and the delta bases they need occupy in packs
    blobs: int
    repository_bytes: int  # size of every pack file (whole repository)
    packs: int
    delta_blobs: int = 0  # of ``blobs``, stored as checkpoint deltas (codec 3)
    base_bytes: int = 0  # of ``stored_bytes``, delta bases needed that the snapshots do not reference
    stored_by_codec: dict[str, int] = field(default_factory=dict)  # ``stored_bytes`` by codec (raw, zstd, ...)
    raw_by_chunking: dict[str, int] = field(default_factory=dict)  # file bytes: tensor-aware / cdc (ops.layout)

    @property
    def dedup_ratio(self) -> float:
        return self.raw_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def stored_fraction(self) -> float:
        return self.stored_bytes / self.raw_bytes if self.raw_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            dedup_ratio=round(self.dedup_ratio, 4),
            compression_ratio=round(self.compression_ratio, 4),
            stored_fraction=round(self.stored_fraction, 4),
        )
        return d


def stats(repo: Repository, snaps: list[Snapshot]) -> Stats:
    """Sizes of ``snaps`` together. ``stored_bytes`` counts what restoring them needs: their blobs
    plus every delta base on those blobs' chains (``base_bytes`` of it)."""
    seen: set[bytes] = set()
    bases: set[bytes] = set()
    files = raw = unique = stored = deltas = 0
    by_codec: dict[str, int] = {}
    by_chunking: dict[str, int] = {}
    for snap in snaps:
        for node in iter_manifest(snap.tree, repo.load_blob):
            if node.type != "file":
                continue
            files += 1
            raw += node.size
            kind = chunking_of(node)
            by_chunking[kind] = by_chunking.get(kind, 0) + node.size
            for bid in node.blobs:
                if bid in seen:
                    continue
                seen.add(bid)
                entry = repo.index.get(bid)
                if entry is not None:
                    unique += entry.blob.raw_length
                    stored += entry.blob.length
                    codec = CODEC_NAMES.get(entry.blob.codec, f"codec-{entry.blob.codec}")
                    by_codec[codec] = by_codec.get(codec, 0) + entry.blob.length
                    deltas += entry.blob.base is not None
                    base = entry.blob.base
                    while base is not None and base not in bases:
                        bases.add(base)
                        base = repo.index.base_of(base)
    base_bytes = 0
    for bid in bases - seen:
        entry = repo.index.get(bid)
        if entry is not None:
            base_bytes += entry.blob.length
            codec = CODEC_NAMES.get(entry.blob.codec, f"codec-{entry.blob.codec}")
            by_codec[codec] = by_codec.get(codec, 0) + entry.blob.length
    packs = list(repo.backend.list(FileType.PACK))
    return Stats(len(snaps), files, raw, unique, stored + base_bytes, len(seen), sum(s for _, s in packs), len(packs),
                 deltas, base_bytes, by_codec, by_chunking)
