"""The Repository: opens a backend with a password (or a KMS key) and offers blobs, index and
snapshots. Write ordering (docs/FORMAT.md): a blob is only referenced by an index once its pack is
durable; an index file is written only after all of its packs; a snapshot is saved only after
``flush()`` has made every pack and index it depends on durable. Readers go the other way.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from weightvault.backends.base import Backend, FileType, save_pack
from weightvault.chunking.registry import ChunkerParams
from weightvault.codec.compress import DELTA, RAW, DecisionMemo, compress_chunk, decompress, delta_base
from weightvault.codec.crypto import KdfParams, MasterKey
from weightvault.errors import (
    IntegrityError,
    ObjectNotFoundError,
    RepositoryExistsError,
    RepositoryLockedError,
    RepositoryNotFoundError,
    UnsupportedFormatError,
    WeightvaultError,
)
from weightvault.format.layout import CREATE_VERSION, KMS_KEY_VERSION, blob_aad
from weightvault.repository import keys as keyfiles
from weightvault.repository.blob_coding import MAX_CHAIN, DeltaBase, choose_coding
from weightvault.repository.config import RepoConfig
from weightvault.repository.index import (
    MasterIndex,
    decode_index_file,
    encode_index_file,
)
from weightvault.repository.locks import hold_lock
from weightvault.repository.packer import PackBuilder, read_pack_header
from weightvault.repository.plans import Plan, load_plans
from weightvault.repository.session import LockMode, Session
from weightvault.repository.snapshot_docs import SnapshotDocuments
from weightvault.types import BlobType, IndexEntry, PackedBlob

__all__ = ["MAX_CHAIN", "DeltaBase", "Repository"]

log = logging.getLogger(__name__)

INDEX_EVERY_PACKS = 16
INDEX_EVERY_SECONDS = 300.0

class Repository(SnapshotDocuments):
    """An unlocked repository. Blob saving is thread-safe; call ``flush()`` before saving a snapshot."""

    def __init__(self, backend: Backend, config: RepoConfig, key: MasterKey, key_name: str) -> None:
        self.backend = backend
        self.config = config
        self.key = key
        self.key_name = key_name
        self.index = MasterIndex()
        self._lock = threading.Lock()
        self._waiters: dict[bytes, threading.Event] = {}  # pending blobs a thread waits for (_wake)
        self._index_lock = threading.RLock()  # one index refresh at a time
        self._index_checked = 0.0  # when a lookup of an unknown blob last re-read index/
        self._pending: set[bytes] = set()
        self._decisions = DecisionMemo()  # delta codings of blobs stored by this process
        self._packers: dict[BlobType, PackBuilder] = {}
        self._unindexed: dict[str, list[PackedBlob]] = {}
        self._last_index_write = time.monotonic()
        self.indexed_files: set[str] = set()
        self.stats_new_blobs = 0
        self.stats_new_stored = 0
        self.io_threads = 0  # > 0: concurrent reads worth issuing (object storage latency), set by the opener
        self.plans: list[Plan] = []  # prune plans read when the lock was taken (format v4)
        self.packs_written: list[str] = []  # by this client, in order (copy verifies them)
        self._snapshot_docs: dict[str, dict[str, object]] = {}  # id -> document (immutable: named by hash)
        self.unreadable_snapshots: dict[str, str] = {}  # id -> why, as of the last listing
        self.snapshot_generation = 0  # bumped whenever this object saves or removes a snapshot
        self._sessions = 0  # open sessions (all threads), under _lock

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def init(cls, backend: Backend, password: bytes | None, *, kdf: KdfParams | None = None,
             kms: Any = None, **config: int) -> Repository:  # kms: a KeyService (Any: **dict[str, int] fits)
        """A new repository, unlocked; key files for ``password`` and/or ``kms`` (format v6)."""
        if any(True for _ in backend.list(FileType.CONFIG)):
            raise RepositoryExistsError(f"a repository already exists at {backend.location}")
        if kms is not None:  # a KMS key file needs format v6
            config = {**config, "version": max(KMS_KEY_VERSION, config.get("version", CREATE_VERSION))}
        cfg = RepoConfig.new(**config)
        backend.create()
        master = MasterKey.generate()
        name = keyfiles.create_initial_keys(backend, cfg.repo_id, master, password, kdf or KdfParams(), kms)
        backend.save(FileType.CONFIG, "config", cfg.to_bytes())  # last: its presence marks a complete init
        return cls(backend, cfg, master, name)

    @classmethod
    def open(cls, backend: Backend, password: bytes | None, *, load_index: bool = True) -> Repository:
        """Open with ``password``, or with None through the repository's KMS key files."""
        try:
            raw = backend.load(FileType.CONFIG, "config")
        except ObjectNotFoundError:
            raise RepositoryNotFoundError(f"no repository at {backend.location}",
                                          hint="create one with `weightvault init`") from None
        cfg = RepoConfig.from_bytes(raw, backend.location)
        master, name = keyfiles.unlock(backend, cfg.repo_id, password)
        repo = cls(backend, cfg, master, name)
        if load_index:
            repo.load_index()
        return repo

    @property
    def chunker(self) -> ChunkerParams:
        return self.config.chunker(self.key.chunker_seed)

    @contextlib.contextmanager
    def lock(self, exclusive: bool = False, maintenance: bool = False) -> Iterator[str]:
        """Hold a repository lock (yields its name). Once it is held, the prune plans are read
        (``apply_plans``): that ordering is what makes prune's two-phase deletion safe."""
        with hold_lock(self.backend, exclusive, maintenance) as name:
            self.apply_plans()
            yield name

    @contextlib.contextmanager
    def session(self, mode: LockMode = LockMode.SHARED) -> Iterator[Session]:
        """One unit of work (``weightvault.repository.session``): take the lock, read the plans,
        refresh the index, list the snapshots once."""
        with contextlib.ExitStack() as stack:
            name = ""
            if mode is LockMode.NONE:
                self.apply_plans()
            else:
                name = stack.enter_context(self.lock(*mode.flags))
            with self._index_lock:  # counted with its refresh: no discard can fall in between
                self._refresh_index()
                with self._lock:
                    self._sessions += 1
            try:
                yield Session(self, mode, name)
            finally:
                self._end_session()

    def _end_session(self) -> None:
        """Count a session out; after the last one, what a failed operation left in memory (blobs
        in open packs, packs written but not indexed) is dropped, and the index is read afresh
        next time. Such a pack is on storage unindexed: the next backup adopts it, or a prune
        deletes it meanwhile, so this object must never count on it. The count and the discard
        are one step under both locks: a session another thread opens meanwhile is either counted
        (nothing is discarded) or opens after the discard."""
        with self._index_lock, self._lock:
            self._sessions -= 1
            if self._sessions or (not self._unindexed and not any(p.blobs for p in self._packers.values())):
                return
            for p in self._packers.values():
                self._pending.difference_update(b.blob_id for b in p.blobs)
            self._wake()
            self._packers.clear()
            self._unindexed = {}
            self.index = MasterIndex(self.index.condemned)
            self.indexed_files = set()

    def apply_plans(self) -> None:
        """Read the prune plans (format v4) and mark their packs condemned in the index: readers
        prefer other copies, writers never reuse a blob only they hold. Reloads the index if the
        set changed. Must run after this client's lock is durable. Threads apply one at a time, so
        the newest read is the one that stays."""
        with self._index_lock:
            self.plans = load_plans(self.backend, self.key) if self.config.version >= 4 else []
            condemned = frozenset(p for plan in self.plans for p in plan.packs)
            if condemned != self.index.condemned:
                self.reload_index(condemned)

    def reload_index(self, condemned: frozenset[str] | None = None) -> None:
        """Forget the in-memory index and read it again (if it had been read), e.g. after prune
        rewrote it. ``condemned`` defaults to the packs condemned now."""
        with self._index_lock:
            loaded = bool(self.indexed_files)
            self._reset_index(condemned)
            if loaded:
                self._refresh_index()

    # -- index -----------------------------------------------------------------------------------
    def load_index(self) -> None:
        """Bring the in-memory index up to date with ``index/``: read the files not read yet. If a
        file read before is gone, another client superseded it (prune, heal and repair write the
        replacement first, then remove it, then maybe the packs it named): the whole index is read
        again, so a blob of a deleted pack is never reused nor looked up. A damaged file is skipped
        (and logged): its packs count as unindexed, so the next backup re-indexes them from their
        headers; ``check`` reports it. A file removed between listing and reading is handled the
        same way, by listing again. Threads refresh one at a time."""
        with self._index_lock:
            self._refresh_index()

    def _refresh_index(self) -> None:
        for _attempt in range(5):
            listed = [name for name, _ in self.backend.list(FileType.INDEX)]
            if self.indexed_files - set(listed):
                self._reset_index()
            vanished = False
            for name in listed:
                if name in self.indexed_files:
                    continue
                try:
                    packs = decode_index_file(self.key, name, self.backend.load(FileType.INDEX, name))
                except ObjectNotFoundError:
                    vanished = True
                    continue
                except (IntegrityError, UnsupportedFormatError) as exc:
                    log.warning("skipping unreadable index file %s: %s", name, exc.message)
                    continue
                for pack_id, blobs in packs.items():
                    self.index.add_pack(pack_id, blobs)
                self.indexed_files.add(name)
            if not vanished:
                return
        raise RepositoryLockedError(
            f"the index of {self.backend.location} kept changing while it was read (5 listings)",
            hint="another client is rewriting it (prune, heal, repair); try again when it is done")

    def _reset_index(self, condemned: frozenset[str] | None = None) -> None:
        """Drop what was read from index files; keep the packs this client wrote and has not
        indexed yet (they are durable and will be indexed by the next flush)."""
        with self._lock:
            self.index = MasterIndex(self.index.condemned if condemned is None else condemned)
            self.indexed_files = set()
            for pack_id, blobs in self._unindexed.items():
                self.index.add_pack(pack_id, blobs)

    def unindexed_packs(self) -> list[tuple[str, int]]:
        """Packs in data/ that no index file mentions (left by an interrupted or running backup),
        except packs a prune plan condemns (an interrupted prune left them to be deleted)."""
        return [
            (p, size) for p, size in self.backend.list(FileType.PACK)
            if not self.index.has_pack(p) and p not in self.index.condemned
        ]

    def recover_unindexed_packs(self) -> int:
        """Index packs that are durable but unindexed, so their blobs are reused. Returns blobs added."""
        added = 0
        found: dict[str, list[PackedBlob]] = {}
        for pack_id, size in self.unindexed_packs():
            try:
                blobs = read_pack_header(self.backend, self.key, pack_id, size)
            except (WeightvaultError, ValueError) as exc:
                log.warning("skipping unreadable unindexed pack %s: %s", pack_id, exc)
                continue
            found[pack_id] = blobs
            added += len(blobs)
        if found:
            self.index_packs(found)
        return added

    def write_index_file(self, packs: dict[str, list[PackedBlob]]) -> str:
        """Write one index file describing ``packs`` (all durable already); returns its name."""
        name, stored = encode_index_file(self.key, packs)
        with self._index_lock:  # no refresh between the write and recording it as read
            self.backend.save(FileType.INDEX, name, stored)
            self.indexed_files.add(name)
        self._last_index_write = time.monotonic()
        return name

    def index_packs(self, packs: dict[str, list[PackedBlob]]) -> str:
        """Write an index file for durable ``packs`` and add them to the in-memory index, with no
        index refresh of another thread in between. Returns the file's name."""
        with self._index_lock:
            name = self.write_index_file(packs)
            for pack_id, blobs in packs.items():
                self.index.add_pack(pack_id, blobs)
            return name

    # -- blobs -----------------------------------------------------------------------------------
    def has_blob(self, blob_id: bytes) -> bool:
        """Whether a new snapshot may reference the blob without storing it (it is indexed and
        not held only by packs a prune plan condemns)."""
        return self.index.usable(blob_id)

    def lookup(self, blob_id: bytes) -> IndexEntry:
        """The blob's entry; one not known yet may be in an index file written since ours was read."""
        entry = self.index.get(blob_id)
        if entry is None and time.monotonic() - self._index_checked > 1.0:  # at most once a second
            self.load_index()
            self._index_checked, entry = time.monotonic(), self.index.get(blob_id)
        if entry is None:
            raise IntegrityError(f"blob {blob_id.hex()} is not in the index (missing data)")
        return entry

    def delta_depth(self, blob_id: bytes) -> int | None:
        """Length of the delta chain below an indexed blob (0: not a delta); None if the blob or a
        base on its chain is not indexed, or the chain is longer than ``MAX_CHAIN``."""
        depth, cur = 0, blob_id
        while cur in self.index:
            if (nxt := self.index.base_of(cur)) is None:
                return depth
            depth, cur = depth + 1, nxt
            if depth > MAX_CHAIN:
                return None
        return None

    def load_blob(self, blob_id: bytes, load_base: Callable[[bytes], bytes] | None = None) -> bytes:
        """Read, authenticate, decompress and hash-check one blob. A delta blob's base is fetched
        with ``load_base`` (default: this method), e.g. through a restore's cache."""
        data = self.load_plain(blob_id, load_base)
        return data if isinstance(data, bytes) else bytes(data)

    def load_plain(self, blob_id: bytes, load_base: Callable[[bytes], bytes | bytearray] | None = None,
                   check_id: bool = True) -> bytes | bytearray:
        """``load_blob`` without the final copy of a chunk decoded in place (a ``bytearray``,
        which the caller must not change). ``check_id`` False skips the content-hash check, for a
        caller that proves the bytes another way (restore checks every file's SHA-256); the AEAD,
        which binds the blob to its id, type and codec, is always checked."""
        entry = self.lookup(blob_id)
        b = entry.blob
        if b.base is not None and self.delta_depth(blob_id) is None:
            raise IntegrityError(f"blob {blob_id.hex()} is a delta whose chain of bases is broken or longer than"
                                 f" {MAX_CHAIN} (base {b.base.hex()} or one below it is missing)")
        envelope = self.backend.load(FileType.PACK, entry.pack_id, b.offset, b.length)
        return self.decode_blob(entry.pack_id, b, envelope, load_base, check_id)

    def decode_blob(
        self,
        pack_id: str,
        b: PackedBlob,
        envelope: bytes | memoryview,
        load_base: Callable[[bytes], bytes | bytearray] | None = None,
        check_id: bool = True,
    ) -> bytes | bytearray:
        """Authenticate and decode one blob's stored envelope (see ``load_plain``)."""
        what = f"blob {b.blob_id.hex()} in pack {pack_id}"
        aad = blob_aad(b.type, b.codec, b.blob_id)
        # a coded blob is decrypted into a scratch buffer its decoder reads; a raw one is the result
        payload = self.key.open(envelope, aad, what) if b.codec == RAW else self.key.open_blob(envelope, aad, what)
        base = None
        if b.codec == DELTA:
            base_id = delta_base(payload)
            if base_id != b.base:
                shown = b.base.hex() if b.base else "none"
                raise IntegrityError(f"{what}: delta base {base_id.hex()} differs from the index's ({shown})")
            if self.delta_depth(b.blob_id) is None and b.blob_id in self.index:
                raise IntegrityError(f"{what}: its chain of delta bases is broken or too long")
            base = (load_base or self.load_blob)(base_id)
        data = decompress(b.codec, payload, b.raw_length, base)
        if check_id and self.key.blob_id(data) != b.blob_id:
            raise IntegrityError(f"{what}: content hash does not match its id")
        return data

    def save_blob(
        self,
        btype: BlobType,
        data: bytes,
        blob_id: bytes | None = None,
        dtype: str | None = None,
        delta: DeltaBase | None = None,
    ) -> tuple[bytes, bool]:
        """Store ``data`` unless a blob with its id exists. Returns (id, newly stored). Thread-safe.
        With ``delta`` (format v3 and later) the blob may be stored as a delta against that base
        (or a BF16 cast of it, v7), if that is smallest (``blob_coding.choose_coding``). A base is
        only used if it is already durable and indexed, or waits in the same pack as the blob (so
        no crash can leave a delta whose base was never written), and its chain is shorter than
        ``config.delta_max_depth``. The blob
        becomes durable only when its pack is written (when full, or by ``flush()``)."""
        bid = blob_id if blob_id is not None else self.key.blob_id(data)
        with self._lock:
            if self.index.usable(bid) or bid in self._pending:
                return bid, False
            self._pending.add(bid)
        try:
            codec, envelope, base_id = choose_coding(self, btype, bid, data, dtype, delta)
            full = None
            while True:
                with self._lock:
                    packer = self._packers.setdefault(btype, PackBuilder())
                    # the durability rule: the base is durable, or in the very pack this blob joins
                    if base_id is None or self.index.usable(base_id) or base_id in packer.by_id:
                        packer.add(bid, btype, codec, envelope, len(data), base_id)
                        self._wake()
                        self.stats_new_blobs += 1
                        self.stats_new_stored += len(envelope)
                        # sealed in the same critical section as the add: exactly one thread takes
                        # a full pack (two that filled it could otherwise both try to take it)
                        if packer.size >= self.config.pack_size:
                            full = self._packers.pop(btype)
                        break
                base_id = None  # the base's pack was sealed meanwhile and is not durable yet: rare
                codec, envelope = self.encode_blob(btype, bid, data, dtype, None)
        except BaseException:
            with self._lock:
                self._pending.discard(bid)
                self._wake()
            raise
        if full is not None:
            self._write_pack(full)
        return bid, True

    def encode_blob(
        self, btype: BlobType, bid: bytes, data: bytes, dtype: str | None, base: tuple[bytes, bytes] | None = None
    ) -> tuple[int, bytes | bytearray]:
        """(codec, sealed envelope) of ``data`` as this repository stores it: the smallest
        encoding its format allows (with ``base``: possibly a delta against it). Byteplane is a
        format-v2 object, a delta of integer differences (inner 3) a format-v5 one."""
        v = self.config.version
        prior = self._decisions.get(base[0]) if base is not None else None  # how the base was coded
        codec, payload, decision = compress_chunk(
            data, self.config.compression_level, dtype, v >= 2, base, v >= 5, prior
        )
        self._decisions.put(bid, decision)
        return codec, self.key.seal(payload, blob_aad(btype, codec, bid))

    def _write_pack(self, packer: PackBuilder) -> None:
        pack_id, data = packer.finish(self.key)
        try:
            save_pack(self.backend, pack_id, data, data_blobs=any(b.type is BlobType.DATA for b in packer.blobs))
        except BaseException:
            self._forget_pending([packer])  # not stored: a later save_blob must store them again
            raise
        with self._lock:
            self.packs_written.append(pack_id)
            self.index.add_pack(pack_id, packer.blobs)
            self._pending.difference_update(b.blob_id for b in packer.blobs)
            self._wake()
            self._unindexed[pack_id] = packer.blobs
        self._index_written_packs(force=False)

    def _wake(self) -> None:
        """Wake every thread waiting for a pending blob (caller holds ``_lock``): pending blobs
        changed; each waiter checks again under the lock (``blob_coding``)."""
        if self._waiters:
            for ev in self._waiters.values():
                ev.set()
            self._waiters.clear()

    def _due(self) -> bool:
        return len(self._unindexed) >= INDEX_EVERY_PACKS or (
            time.monotonic() - self._last_index_write > INDEX_EVERY_SECONDS)

    def _index_written_packs(self, force: bool) -> None:
        """Write an index file for the packs written but not indexed yet (when due, or ``force``).
        Taken out of ``_unindexed`` and written under the index lock: an index refresh by another
        thread in between would otherwise lose them from memory."""
        with self._lock:
            if not self._unindexed or not (force or self._due()):
                return
        with self._index_lock:
            with self._lock:
                todo, self._unindexed = self._unindexed, {}
            if todo:
                self._write_index_or_keep(todo)

    def _forget_pending(self, packers: list[PackBuilder]) -> None:
        with self._lock:
            for p in packers:
                self._pending.difference_update(b.blob_id for b in p.blobs)
            self._wake()

    def _write_index_or_keep(self, packs: dict[str, list[PackedBlob]]) -> None:
        """Write an index for ``packs``; if that fails they stay queued for the next flush."""
        try:
            self.write_index_file(packs)
        except BaseException:
            with self._lock:
                for pack_id, blobs in packs.items():
                    self._unindexed.setdefault(pack_id, blobs)
            raise

    def flush(self) -> None:
        """Write partial packs and an index for every pack written so far. Durable on return.

        If a write fails, nothing unwritten is assumed stored: its blobs can be saved again and
        unindexed packs stay queued, so a retry with the same Repository is complete."""
        with self._lock:
            packers = [p for p in self._packers.values() if p.blobs]
            self._packers.clear()
        for i, p in enumerate(packers):
            try:
                self._write_pack(p)
            except BaseException:
                self._forget_pending(packers[i + 1 :])
                raise
        self._index_written_packs(force=True)
