"""Copy snapshots from one repository to another (other keys, other chunking parameters).

Blobs keep their boundaries (the source's chunks); each is decoded in the source (delta chains
resolved, content hash checked), hashed with the destination's key, and stored there only if the
destination lacks it, as a delta against the copy of its source base when that is smaller
(never copying a payload or a base id: the keys differ). The manifest is rewritten with the
destination's blob ids, the destination is flushed, every pack the copy wrote is read back and
verified (pack hash, every blob decoded and hash-checked; a pack written into an offline storage
class is only checked to exist), and only then is the snapshot saved,
with ``copied_from = {"repo": source repo id, "snapshot": source id}``.

Incremental: a source snapshot already copied is skipped, and the blobs of the snapshots copied
before are mapped to their destination ids from the two manifests (same node order, same blob
count), so a later copy reads from the source only blobs it has not copied yet. A crash leaves
what any interrupted backup leaves; the next copy adopts the packs and reuses the blobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import blake3

from weightvault.backends.base import FileType
from weightvault.errors import ColdDataError, IntegrityError, UsageError, WeightvaultError
from weightvault.repository.blobcache import BlobCache
from weightvault.repository.manifest import ManifestWriter, Node, iter_manifest
from weightvault.repository.packer import read_pack_header
from weightvault.repository.repo import DeltaBase, Repository
from weightvault.repository.snapshots import Snapshot
from weightvault.types import BlobType

__all__ = ["CopyResult", "copy_snapshots"]

log = logging.getLogger(__name__)


@dataclass
class CopyResult:
    copied: list[tuple[str, str]] = field(default_factory=list)  # (source id, destination id)
    skipped: list[str] = field(default_factory=list)  # source ids copied before
    blobs_copied: int = 0  # read from the source and stored in the destination
    blobs_present: int = 0  # read from the source, found in the destination
    blobs_mapped: int = 0  # known from an earlier copy: not read at all
    bytes_read: int = 0  # plaintext bytes read from the source
    stored_bytes_added: int = 0  # bytes the destination's new blobs take
    packs_verified: int = 0
    bytes_verified: int = 0
    packs_cold: int = 0  # written into an offline storage class: present, but not read back


def copy_snapshots(
    src: Repository, dst: Repository, snaps: list[Snapshot], say: Callable[[str], None] | None = None
) -> CopyResult:
    """Copy ``snaps`` (oldest first) from ``src`` to ``dst``. Both are locked by the caller
    (shared locks: this is a backup into ``dst``)."""
    if src.config.repo_id == dst.config.repo_id:
        raise UsageError("source and destination are the same repository")
    say = say or (lambda _msg: None)
    res = CopyResult()
    dst.load_index()
    dst.recover_unindexed_packs()  # an interrupted copy's packs are reused
    src_repo = src.config.repo_id
    done: dict[str, Snapshot] = {}
    for s in dst.snapshots():
        if s.copied_from is not None and s.copied_from["repo"] == src_repo:
            done.setdefault(s.copied_from["snapshot"], s)
    mapping = _known_mapping(src, dst, done)
    cache = BlobCache(src)
    for snap in sorted(snaps, key=lambda s: (s.datetime, s.id)):
        if snap.id in done:
            res.skipped.append(snap.id)
            continue
        say(f"copying snapshot {snap.short_id}")
        new = _copy_one(src, dst, snap, mapping, cache, done, res)
        done[snap.id] = new
        res.copied.append((snap.id, new.id))
    return res


def _known_mapping(src: Repository, dst: Repository, done: dict[str, Snapshot]) -> dict[bytes, bytes]:
    """source blob id -> destination blob id, from snapshots copied before."""
    mapping: dict[bytes, bytes] = {}
    for src_id, copied in done.items():
        try:
            original = src.load_snapshot(src_id)
            pairs = zip(iter_manifest(original.tree, src.load_blob), iter_manifest(copied.tree, dst.load_blob),
                        strict=False)
            for a, b in pairs:
                if a.path != b.path or len(a.blobs) != len(b.blobs):
                    break
                mapping.update(zip(a.blobs, b.blobs, strict=True))
        except WeightvaultError as exc:  # the source snapshot is gone or unreadable: only an optimisation
            log.debug("no blob mapping from copied snapshot %s: %s", src_id, exc)
    return mapping


def _copy_one(
    src: Repository,
    dst: Repository,
    snap: Snapshot,
    mapping: dict[bytes, bytes],
    cache: BlobCache,
    done: dict[str, Snapshot],
    res: CopyResult,
) -> Snapshot:
    written_before = len(dst.packs_written)
    stored_before = dst.stats_new_stored
    writer = ManifestWriter()
    try:
        for node in iter_manifest(snap.tree, src.load_blob):
            if node.type == "file":
                node.blobs = [_copy_blob(src, dst, node, i, b, mapping, cache, res) for i, b in enumerate(node.blobs)]
            writer.add(node)
    except BaseException:
        writer.close()
        raise
    tree = writer.finish(lambda data: dst.save_blob(BlobType.TREE, data)[0])
    dst.flush()  # packs, then index
    _verify_packs(dst, dst.packs_written[written_before:], res)
    res.stored_bytes_added += dst.stats_new_stored - stored_before
    parent = done.get(snap.parent) if snap.parent else None
    group = snap.group
    if group is not None and snap.group_rank is None:
        group = {k: v for k, v in group.items() if k != "ranks"} | {"ranks": []}  # ranks are not copied
    copied = Snapshot(
        time=snap.time, host=snap.host, user=snap.user, paths=list(snap.paths), tags=list(snap.tags), tree=tree,
        parent=parent.id if parent else None, summary=dict(snap.summary), program_version=snap.program_version,
        group=group, copied_from={"repo": src.config.repo_id, "snapshot": snap.id},
    )
    dst.save_snapshot(copied)  # last: everything it references is durable and verified
    return copied


def _copy_blob(
    src: Repository,
    dst: Repository,
    node: Node,
    i: int,
    blob_id: bytes,
    mapping: dict[bytes, bytes],
    cache: BlobCache,
    res: CopyResult,
) -> bytes:
    known = mapping.get(blob_id)
    if known is not None and dst.has_blob(known):
        res.blobs_mapped += 1
        return known
    data = cache.load_blob(blob_id)
    res.bytes_read += len(data)
    new_id = dst.key.blob_id(data)
    hint = node.tensors[i] if node.tensors and i < len(node.tensors) else None
    base = src.index.base_of(blob_id)
    delta = None
    if base is not None and base in mapping:
        delta = DeltaBase(mapping[base], lambda base=base: cache.load_blob(base))  # type: ignore[misc]
    _, stored = dst.save_blob(BlobType.DATA, data, new_id, dtype=hint[2] if hint else None, delta=delta)
    if stored:
        res.blobs_copied += 1
    else:
        res.blobs_present += 1
    mapping[blob_id] = new_id
    return new_id


def _verify_packs(dst: Repository, packs: list[str], res: CopyResult) -> None:
    """Read back every pack this copy wrote: its hash, header and every blob (deltas decoded). A
    pack the destination put in an offline storage class cannot be read back: it is checked to be
    there (its name is the hash of the bytes uploaded) and counted in ``packs_cold``."""
    for name in packs:
        try:
            data = dst.backend.load(FileType.PACK, name)
        except ColdDataError:
            dst.backend.stat(FileType.PACK, name)
            res.packs_cold += 1
            continue
        if blake3.blake3(data).hexdigest() != name:
            raise IntegrityError(f"pack {name} written by copy reads back with another content hash")
        for b in read_pack_header(dst.backend, dst.key, name, len(data)):
            dst.decode_blob(name, b, data[b.offset : b.offset + b.length])
        res.packs_verified += 1
        res.bytes_verified += len(data)
