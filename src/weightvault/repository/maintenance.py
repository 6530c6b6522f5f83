"""What maintenance (prune, heal, repair) needs of the engine: a pack writer and index rewrites.

Operations never assemble packs or write index files themselves; they hand blobs to a
``PackWriter`` and replace index files with ``replace_index`` / ``rewrite_index`` (restic's
``MasterIndex.Rewrite`` is the model). The ordering rules live here, once:

* a pack is durable before any index file names it (``PackWriter.finish`` writes the packs,
  then one index file for them);
* a new set of index files is durable before any file it replaces is removed, so a crash at any
  point leaves every pack indexed at least once (several files may describe the same pack);
* removing the packs themselves is the caller's last step, after the index no longer names them.

``read_index_files`` is the one reader of the whole index: strict (maintenance refuses to act on
a partial view) or lenient (``check`` reports each unreadable file and goes on).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from weightvault.backends.base import FileType, save_pack
from weightvault.errors import IntegrityError, ObjectNotFoundError, UnsupportedFormatError, WeightvaultError
from weightvault.format.layout import blob_aad
from weightvault.repository.index import decode_index_file
from weightvault.repository.packer import PackBuilder
from weightvault.repository.repo import Repository
from weightvault.types import BlobType, PackedBlob

__all__ = ["INDEX_FILE_BLOBS", "IndexFiles", "PackWriter", "read_index_files", "replace_index", "rewrite_index"]

log = logging.getLogger(__name__)

INDEX_FILE_BLOBS = 100_000  # blobs per index file a rewrite writes


@dataclass
class IndexFiles:
    """The index as stored: the files read, every pack's blobs (first description wins), and
    (lenient reads) the files that could not be read with the reason."""

    files: list[str] = field(default_factory=list)
    packs: dict[str, dict[bytes, PackedBlob]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)

    def copies(self) -> dict[bytes, list[tuple[str, PackedBlob]]]:
        """blob id -> every (pack id, blob) holding it, packs in id order."""
        out: dict[bytes, list[tuple[str, PackedBlob]]] = defaultdict(list)
        for pack_id in sorted(self.packs):
            for b in self.packs[pack_id].values():
                out[b.blob_id].append((pack_id, b))
        return dict(out)


def read_index_files(repo: Repository, *, strict: bool, hint: str = "run `weightvault repair index` first"
                     ) -> IndexFiles:
    """Read every index file. A file removed between listing and reading was superseded (its
    packs are in the file that replaced it) and is skipped. An unreadable file raises
    IntegrityError (with ``hint``) when ``strict``, else is recorded in ``unreadable``."""
    out = IndexFiles()
    packs: dict[str, dict[bytes, PackedBlob]] = defaultdict(dict)
    for name, _ in repo.backend.list(FileType.INDEX):
        try:
            content = decode_index_file(repo.key, name, repo.backend.load(FileType.INDEX, name))
        except ObjectNotFoundError:
            continue
        except (IntegrityError, UnsupportedFormatError) as exc:
            if strict:
                raise IntegrityError(f"index file {name} cannot be read: {exc.message}", hint=hint) from exc
            out.unreadable[name] = exc.message
            continue
        except WeightvaultError as exc:
            if strict:
                raise
            out.unreadable[name] = exc.message
            continue
        out.files.append(name)
        for pack_id, blobs in content.items():
            for b in blobs:
                packs[pack_id].setdefault(b.blob_id, b)
    out.packs = dict(packs)
    return out


def replace_index(repo: Repository, packs: Mapping[str, Iterable[PackedBlob]], old_files: Iterable[str]) -> set[str]:
    """Write index files describing exactly ``packs``, then remove ``old_files`` (those not
    rewritten under the same name). Returns the names written. The engine's in-memory index is
    read again afterwards."""
    names: set[str] = set()
    batch: dict[str, list[PackedBlob]] = {}
    count = 0
    for pack_id in sorted(packs):
        batch[pack_id] = sorted(packs[pack_id], key=lambda b: b.offset)
        count += len(batch[pack_id])
        if count >= INDEX_FILE_BLOBS:
            names.add(repo.write_index_file(batch))
            batch, count = {}, 0
    if batch:
        names.add(repo.write_index_file(batch))
    for name in old_files:  # only once the new files are durable
        if name not in names:
            repo.backend.remove(FileType.INDEX, name)
    repo.reload_index()
    return names


def rewrite_index(repo: Repository, *, exclude_packs: Iterable[str] = (), view: IndexFiles | None = None
                  ) -> tuple[set[str], int]:
    """Replace the index files of ``view`` (default: all of them, read strictly now) by files
    naming the same packs except ``exclude_packs``. Returns (files written, files removed)."""
    view = view or read_index_files(repo, strict=True)
    drop = set(exclude_packs)
    written = replace_index(repo, {p: b.values() for p, b in view.packs.items() if p not in drop}, view.files)
    return written, len([n for n in view.files if n not in written])


class PackWriter:
    """New packs for blobs that maintenance moves, re-encodes or salvages. Packs are written as
    they fill; ``finish`` writes the rest and one index file naming them all (packs first)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._builders: dict[BlobType, PackBuilder] = {}
        self.written: dict[str, list[PackedBlob]] = {}
        self.bytes = 0

    def add_plain(self, btype: BlobType, blob_id: bytes, data: bytes, dtype: str | None = None) -> None:
        """Store ``data`` standalone (no delta base) with the best codec for it."""
        codec, envelope = self.repo.encode_blob(btype, blob_id, data, dtype)
        self._add(blob_id, btype, codec, envelope, len(data), None)

    def add_envelope(self, blob: PackedBlob, envelope: bytes | bytearray, where: str = "") -> None:
        """Copy a stored blob's envelope unchanged (its codec and delta base kept), after checking
        that it authenticates (IntegrityError otherwise)."""
        self.repo.key.open(envelope, blob_aad(blob.type, blob.codec, blob.blob_id),
                           f"blob {blob.blob_id.hex()}" + (f" in pack {where}" if where else ""))
        self._add(blob.blob_id, blob.type, blob.codec, envelope, blob.raw_length, blob.base)

    def _add(self, bid: bytes, btype: BlobType, codec: int, envelope: bytes | bytearray, raw: int,
             base: bytes | None) -> None:
        builder = self._builders.setdefault(btype, PackBuilder())
        builder.add(bid, btype, codec, envelope, raw, base)
        if builder.size >= self.repo.config.pack_size:
            self._write(self._builders.pop(btype))

    def _write(self, builder: PackBuilder) -> None:
        pack_id, data = builder.finish(self.repo.key)
        save_pack(self.repo.backend, pack_id, data, data_blobs=any(b.type is BlobType.DATA for b in builder.blobs))
        self.written[pack_id] = builder.blobs
        self.bytes += len(data)

    def finish(self) -> int:
        """Write what is left, then the index for every pack written; returns their bytes."""
        for builder in self._builders.values():
            if builder.blobs:
                self._write(builder)
        self._builders = {}
        if self.written:
            self.repo.index_packs(self.written)
        return self.bytes
