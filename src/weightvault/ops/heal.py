"""Self-healing: rewrite blobs that are damaged or missing here from a replica's good copies.

A replica is a repository that ``copy`` filled (other keys, so other blob ids). For every
snapshot here, its copy there is found by lineage (time, host, paths, tags: ``copy`` keeps them),
and the two manifests are walked side by side (``copy`` keeps node order and blob boundaries), so
each blob here has its counterpart there. Every blob a snapshot here needs is decoded; one that
fails (its own bytes or its chain) is read from the replica (decoded and hash-checked there), its
plaintext hashed with this repository's key and compared with the blob id, and written again,
standalone, into new packs with an index. The other blobs of each damaged pack that still
authenticate are copied (envelopes unchanged) into the new packs too, the index is rewritten
without the damaged packs, and those packs are deleted. Runs under an exclusive lock (it
rewrites the index and deletes packs). A pack whose header no longer reads while its blobs do
(their offsets are in the index) is rewritten the same way: its blobs moved, the pack deleted.
A pack the index names that is gone while every blob of it is stored in another pack (a heal
killed after writing the new packs and their index) is dropped from the index.

A snapshot whose manifest (its TREE blobs) is damaged is rebuilt from its copy's: the replica's
nodes with each blob id mapped back to this repository's (the replica's plaintext, hashed with
this key; a blob missing here too is repaired on the way), written as a manifest stream again
(the manifest chunker is deterministic), and accepted only if the rebuilt stream's TREE blob ids
are exactly the ones the snapshot names: content-addressed, so a rebuild is either the lost
manifest byte for byte or reported, never a different one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from weightvault.backends.base import FileType
from weightvault.errors import ColdDataError, WeightvaultError
from weightvault.format.layout import blob_aad
from weightvault.repository.blobcache import BlobCache
from weightvault.repository.maintenance import PackWriter, read_index_files, rewrite_index
from weightvault.repository.manifest import ManifestWriter, Node, iter_manifest
from weightvault.repository.packer import read_pack_header
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot
from weightvault.types import BlobType, PackedBlob

__all__ = ["HealResult", "heal"]


@dataclass
class HealResult:
    checked_blobs: int = 0
    damaged: list[str] = field(default_factory=list)  # blob ids (hex) found unreadable here
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[tuple[str, str]] = field(default_factory=list)  # (blob hex, why)
    packs_written: int = 0
    rewritten_packs: list[str] = field(default_factory=list)  # header unreadable, blobs intact: moved
    dropped_packs: list[str] = field(default_factory=list)  # missing, every blob stored elsewhere: unindexed

    @property
    def ok(self) -> bool:
        return not self.unrepaired


def _lineage(s: Snapshot) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
    return (s.time, s.host, tuple(sorted(s.paths)), tuple(sorted(s.tags)))


def _pairs(repo: Repository, snap: Snapshot, replica: Repository, twin: Snapshot | None
           ) -> Iterator[tuple[Node, Node | None]]:
    """This snapshot's file nodes, each with its twin in the replica's copy (None if unmatched)."""
    theirs = iter_manifest(twin.tree, replica.load_blob) if twin is not None else iter([])
    for node in iter_manifest(snap.tree, repo.load_blob):
        other = next(theirs, None)
        if node.type != "file":
            continue
        ok = other is not None and other.path == node.path and len(other.blobs) == len(node.blobs)
        yield node, other if ok else None


def heal(repo: Repository, replica: Repository, dry_run: bool = False) -> HealResult:
    """Find and rewrite this repository's unreadable blobs from ``replica``. The caller holds an
    exclusive lock here and a shared one on the replica."""
    res = HealResult()
    twins = {_lineage(s): s for s in replica.snapshots()}
    ours = BlobCache(repo, 64 * 1024 * 1024)
    theirs = BlobCache(replica, 64 * 1024 * 1024)
    seen: set[bytes] = set()
    repaired: dict[bytes, tuple[bytes, BlobType, str | None]] = {}
    for snap in repo.snapshots():
        copy_there = twins.get(_lineage(snap))
        try:
            pairs = list(_pairs(repo, snap, replica, copy_there))
        except WeightvaultError as exc:
            why = _rebuild_manifest(repo, snap, replica, copy_there, ours, theirs, repaired)
            if why is not None:
                res.unrepaired.append((snap.id, f"the manifest of snapshot {snap.short_id} cannot be read here"
                                                f" ({exc.message}) and {why}"))
            continue
        for node, twin in pairs:
            for i, bid in enumerate(node.blobs):
                if bid in seen:
                    continue
                seen.add(bid)
                try:
                    ours.load(bid)
                    continue
                except WeightvaultError:
                    res.damaged.append(bid.hex())
                if twin is None:
                    res.unrepaired.append((bid.hex(), "the replica has no copy of this snapshot's file"))
                    continue
                try:
                    data = theirs.load_blob(twin.blobs[i])
                except WeightvaultError as exc:
                    res.unrepaired.append((bid.hex(), f"the replica's copy is damaged too: {exc.message}"))
                    continue
                if repo.key.blob_id(data) != bid:
                    res.unrepaired.append((bid.hex(), "the replica's counterpart holds other data"))
                    continue
                hint = node.tensors[i] if node.tensors and i < len(node.tensors) else None
                repaired[bid] = (data, BlobType.DATA, hint[2] if hint else None)
    res.checked_blobs = len(seen)
    headless = _unreadable_headers(repo)  # its blobs read (through the index) but the pack is damaged
    res.rewritten_packs = sorted(headless)
    superseded = _superseded_missing(repo, set(repaired))
    res.dropped_packs = sorted(superseded)
    if (repaired or headless or superseded) and not dry_run:
        bad_packs = {e.pack_id for b in repaired if (e := repo.index.get(b)) is not None} | headless | superseded
        salvaged = _salvage(repo, bad_packs, set(repaired))
        new_packs = _write(repo, repaired, salvaged)
        res.packs_written = len(new_packs)
        _drop_packs(repo, bad_packs)
        repo.reload_index()
    res.repaired = sorted(b.hex() for b in repaired)
    return res


def _rebuild_manifest(repo: Repository, snap: Snapshot, replica: Repository, twin: Snapshot | None,
                      ours: BlobCache, theirs: BlobCache,
                      repaired: dict[bytes, tuple[bytes, BlobType, str | None]]) -> str | None:
    """Rebuild ``snap``'s lost TREE blobs from ``twin``'s manifest into ``repaired`` (with any
    data blob missing here too); None on success, else why not."""
    if twin is None:
        return "the replica has no copy of this snapshot"
    found: dict[bytes, tuple[bytes, BlobType, str | None]] = {}
    writer = ManifestWriter()
    try:
        for node in iter_manifest(twin.tree, replica.load_blob):
            if node.type == "file":
                ids = []
                for i, theirs_id in enumerate(node.blobs):
                    data = theirs.load_blob(theirs_id)
                    bid = repo.key.blob_id(data)
                    ids.append(bid)
                    if bid not in repaired and bid not in found and not _readable(ours, bid):
                        hint = node.tensors[i] if node.tensors and i < len(node.tensors) else None
                        found[bid] = (data, BlobType.DATA, hint[2] if hint else None)
                node.blobs = ids
            writer.add(node)
    except WeightvaultError as exc:
        writer.close()
        return f"the replica's copy cannot be read either: {exc.message}"
    trees: list[tuple[bytes, bytes]] = []

    def keep(data: bytes) -> bytes:  # not stored yet: only if the rebuild is the lost manifest
        trees.append((repo.key.blob_id(data), data))
        return trees[-1][0]

    writer.finish(keep)
    if [bid for bid, _ in trees] != list(snap.tree):
        return "the manifest rebuilt from the replica's copy is not the one this snapshot names"
    repaired.update(found)
    repaired.update({bid: (data, BlobType.TREE, None) for bid, data in trees if not _readable(ours, bid)})
    return None


def _unreadable_headers(repo: Repository) -> set[str]:
    """Indexed packs whose header no longer reads: their blobs still do (every one was checked),
    so they are salvaged into new packs like the blobs of a damaged pack."""
    sizes = dict(repo.backend.list(FileType.PACK))
    out = set()
    for pack_id in sorted({e.pack_id for e in repo.index.entries()} & set(sizes)):
        try:
            read_pack_header(repo.backend, repo.key, pack_id, sizes[pack_id])
        except ColdDataError:
            continue  # offline, not damaged
        except WeightvaultError:
            out.add(pack_id)
    return out


def _superseded_missing(repo: Repository, repairing: set[bytes]) -> set[str]:
    """Packs the index names that are gone from storage while every blob of theirs is in another
    pack that is there (or is being repaired now): what a heal killed after writing its new
    packs and their index, before it rewrote the index without the lost pack, leaves. Dropping
    them from the index finishes that heal."""
    view = read_index_files(repo, strict=True)
    present = {name for name, _ in repo.backend.list(FileType.PACK)}
    elsewhere = {bid for pack, blobs in view.packs.items() if pack in present for bid in blobs} | repairing
    return {pack for pack, blobs in view.packs.items()
            if pack not in present and blobs and all(bid in elsewhere for bid in blobs)}


def _readable(cache: BlobCache, bid: bytes) -> bool:
    try:
        cache.load(bid)
    except WeightvaultError:
        return False
    return True


def _salvage(repo: Repository, packs: set[str], skip: set[bytes]) -> list[tuple[PackedBlob, bytes]]:
    """The blobs of damaged packs that still authenticate (their envelopes, unchanged), so the
    packs can go; blobs in ``skip`` are being rewritten anyway, unreadable others are garbage
    (every blob a snapshot needs was checked)."""
    out = []
    for pack_id in sorted(packs):
        try:
            data = repo.backend.load(FileType.PACK, pack_id)
        except WeightvaultError:
            continue  # lost: nothing to salvage
        for entry in repo.index.entries():
            b = entry.blob
            if entry.pack_id != pack_id or b.blob_id in skip:
                continue
            envelope = data[b.offset : b.offset + b.length]
            try:
                repo.key.open(envelope, blob_aad(b.type, b.codec, b.blob_id), f"blob {b.blob_id.hex()}")
            except WeightvaultError:
                continue
            out.append((b, envelope))
    return out


def _write(repo: Repository, blobs: dict[bytes, tuple[bytes, BlobType, str | None]],
           salvaged: list[tuple[PackedBlob, bytes]]) -> list[str]:
    """Store the repaired blobs standalone and the salvaged envelopes unchanged (bases kept) in
    new packs, then index them. Returns the new pack ids."""
    out = PackWriter(repo)
    for bid, (data, btype, dtype) in sorted(blobs.items()):
        out.add_plain(btype, bid, data, dtype)
    for b, envelope in salvaged:
        out.add_envelope(b, envelope)
    out.finish()
    return list(out.written)


def _drop_packs(repo: Repository, drop: set[str]) -> None:
    """Rewrite the index without the damaged packs, then delete them: the new index is durable
    before the files it replaces are removed, and those before the packs (exclusive lock held)."""
    rewrite_index(repo, exclude_packs=drop)
    for pack_id in sorted(drop):
        repo.backend.remove(FileType.PACK, pack_id)
