"""The one cache of decoded blobs that restore, check, verify, heal, copy and validate share.

A ``BlobCache`` belongs to one operation and is bounded by ``max_bytes``. It loads blobs through
the engine (authenticated, decompressed, hash-checked) and serves the delta bases of the blobs it
decodes from itself, so a chain shared by many blobs is decoded once while it is kept. Two ways
to keep:

* recency (the default): the most recently used blobs are kept; with ``wanted``, only those
  (e.g. the blobs known to be delta bases);
* use counts (``BlobCache.counting``): the operation says up front which blobs it will read; a
  blob is kept only while it still has uses left and is dropped at its last use: deduplicated
  data (layers frozen across checkpoints, identical files) and delta bases are then read and
  decoded once. A blob with several uses is loaded by one thread at a time; another thread that
  asks meanwhile waits and takes the kept copy.

Every blob is checked against its id once, where it is decoded (a kept copy is not hashed
again): that is what proves a restore's bytes.

Thread-safe.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from weightvault.backends.base import FileType
from weightvault.types import IndexEntry

if TYPE_CHECKING:
    from weightvault.repository.repo import Repository

__all__ = ["DEFAULT_CACHE_BYTES", "BlobCache"]

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


class BlobCache:
    """See the module docstring."""

    def __init__(self, repo: Repository, max_bytes: int = DEFAULT_CACHE_BYTES, wanted: set[bytes] | None = None,
                 uses: Counter[bytes] | None = None) -> None:
        self.repo = repo
        self.max_bytes = max_bytes
        self.wanted = wanted
        self._uses = uses
        self._kept: OrderedDict[bytes, bytes | bytearray] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._loading: dict[bytes, threading.Event] = {}

    @classmethod
    def counting(cls, repo: Repository, blob_ids: Iterable[bytes], max_bytes: int = DEFAULT_CACHE_BYTES) -> BlobCache:
        """A cache for an operation that will load ``blob_ids`` (one use per occurrence). Decoding
        a delta blob loads its base once through the cache, so each base gets one more use per
        distinct dependant, following the chains of bases in the index."""
        uses = Counter(blob_ids)
        todo, seen = list(uses), set(uses)
        while todo:
            base = repo.index.base_of(todo.pop())
            if base is not None:
                uses[base] += 1
                if base not in seen:
                    seen.add(base)
                    todo.append(base)
        return cls(repo, max_bytes, uses=uses)

    def lookup(self, blob_id: bytes) -> IndexEntry:
        return self.repo.lookup(blob_id)

    def shared(self, blob_id: bytes) -> bool:
        """Whether the blob goes through the cache: it is kept, or (use counts) used again."""
        with self._lock:
            return blob_id in self._kept or (self._uses is not None and self._uses[blob_id] > 1)

    def keep(self, blob_id: bytes, data: bytes | bytearray) -> None:
        """Remember a blob decoded elsewhere (if this cache would keep it)."""
        with self._lock:
            self._keep(blob_id, data)

    def _keep(self, blob_id: bytes, data: bytes | bytearray) -> None:
        if blob_id in self._kept or len(data) > self.max_bytes:
            return
        if (self.wanted is not None and blob_id not in self.wanted) or (
                self._uses is not None and self._uses[blob_id] <= 1):
            return
        self._kept[blob_id] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            self._size -= len(self._kept.popitem(last=False)[1])

    def _used(self, blob_id: bytes) -> None:
        if self._uses is None:
            return
        self._uses[blob_id] -= 1
        if self._uses[blob_id] <= 0 and blob_id in self._kept:
            self._size -= len(self._kept.pop(blob_id))

    def load(self, blob_id: bytes) -> bytes | bytearray:
        """The blob's plaintext (see the module docstring); a ``bytearray`` must not be changed."""
        mine: threading.Event | None = None
        while True:
            with self._lock:
                data = self._kept.get(blob_id)
                if data is not None:
                    self._kept.move_to_end(blob_id)
                    self._used(blob_id)
                    return data
                busy = self._loading.get(blob_id)
                if busy is None:
                    if self._uses is not None and self._uses[blob_id] > 1:
                        mine = self._loading[blob_id] = threading.Event()
                    break
            busy.wait()
            with self._lock:
                if blob_id not in self._kept:  # the other load failed, or its result was not kept
                    break
        try:
            data = self.repo.load_plain(blob_id, self.load)
            with self._lock:
                self._keep(blob_id, data)
                self._used(blob_id)
        finally:
            if mine is not None:
                with self._lock:
                    self._loading.pop(blob_id, None)
                mine.set()
        return data

    def load_blob(self, blob_id: bytes) -> bytes:
        """``load`` as immutable bytes (for readers of trees and manifests)."""
        data = self.load(blob_id)
        return data if isinstance(data, bytes) else bytes(data)

    def load_run(self, blob_ids: list[bytes]) -> list[bytes | bytearray]:
        """Plaintexts of blobs stored back to back in one pack, fetched with one range read (a
        single blob goes through ``load`` and the cache)."""
        if len(blob_ids) == 1:
            return [self.load(blob_ids[0])]
        entries = [self.repo.lookup(b) for b in blob_ids]
        lo = min(e.blob.offset for e in entries)
        hi = max(e.blob.offset + e.blob.length for e in entries)
        span = memoryview(self.repo.backend.load(FileType.PACK, entries[0].pack_id, lo, hi - lo))
        out: list[bytes | bytearray] = []
        for e in entries:
            start = e.blob.offset - lo
            out.append(self.repo.decode_blob(e.pack_id, e.blob, span[start : start + e.blob.length], self.load))
            with self._lock:
                self._used(e.blob.blob_id)
        return out
