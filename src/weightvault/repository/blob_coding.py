"""How ``Repository.save_blob`` codes a new blob: which offered base it may use, and the coding.

A base is usable if it is indexed or waits in the open pack of the blob's type (the durability
rule is checked again when the blob joins a pack), its delta chain is shorter than
``config.delta_max_depth`` (a cast's base: at most that long), and it has the blob's length (a
delta, format version 3), or, for a BF16 chunk in a version-7 repository, exactly twice it (a cast of its F32 original,
``codec/cast.py``). A cast is kept only if it costs at most ``CAST_KEEP`` of the raw length;
otherwise the offered ``fallback`` (the chunk's earlier version) is tried as an ordinary delta.
A BF16 chunk whose base another thread is still storing waits for it (at most ``PENDING_WAIT``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weightvault.codec.cast import CAST_KEEP, INNER_CAST, cast_inner
from weightvault.codec.compress import DELTA
from weightvault.format.layout import blob_aad
from weightvault.types import BlobType, PackedBlob

if TYPE_CHECKING:
    from weightvault.repository.repo import Repository

__all__ = ["CAST_VERSION", "DeltaBase", "choose_coding", "located"]

MAX_CHAIN = 64  # readers refuse longer delta chains (writers stop at config.delta_max_depth)
CAST_VERSION = 7  # the first format version with DELTA inner codec 4 (a BF16 cast of its F32 base)
PENDING_WAIT = 30.0  # seconds a BF16 chunk waits for a base another thread is storing (then: no cast)


@dataclass(frozen=True, slots=True)
class DeltaBase:
    """A candidate delta base: its id and a function returning its plaintext (None if unavailable),
    called only if the blob is new and the base usable (durable, its chain below the limit).
    ``fallback``: a second candidate, tried if this one is unusable or does not pay (a BF16
    chunk's F32 original first, then its earlier version)."""

    blob_id: bytes
    load: Callable[[], bytes | None]
    fallback: DeltaBase | None = None


def located(repo: Repository, btype: BlobType, blob_id: bytes) -> PackedBlob | None:
    """An indexed blob, or one in the open pack of ``btype``; caller holds ``repo._lock``."""
    entry = repo.index.get(blob_id, usable_only=True)
    if entry is not None:
        return entry.blob
    packer = repo._packers.get(btype)
    return packer.by_id.get(blob_id) if packer is not None else None


def _usable(repo: Repository, btype: BlobType, bid: bytes, data: bytes, delta: DeltaBase,
            dtype: str | None) -> tuple[bytes, bytes] | None:
    """The base (id, plaintext) of ``delta`` if it is usable for ``data`` (module docstring)."""
    cfg = repo.config
    if delta.blob_id == bid or cfg.version < 3 or cfg.delta_max_depth == 0:
        return None
    cast = cfg.version >= CAST_VERSION and dtype == "BF16"
    lengths = (len(data), 2 * len(data)) if cast else (len(data),)
    deadline = time.monotonic() + PENDING_WAIT
    while True:
        with repo._lock:
            first = located(repo, btype, delta.blob_id)
            # a BF16 export is read right after its F32 original, whose last parts may still be
            # coded by another worker (never the other way round, so this wait closes no cycle)
            if not (cast and first is None and delta.blob_id in repo._pending and time.monotonic() < deadline):
                depth, cur = 0, first
                while cur is not None and cur.base is not None and depth <= MAX_CHAIN:
                    depth, cur = depth + 1, located(repo, btype, cur.base)
                break
            woken = repo._waiters.setdefault(delta.blob_id, threading.Event())
        woken.wait(max(0.0, deadline - time.monotonic()))
    if first is None or cur is None or first.raw_length not in lengths:
        return None
    # a cast may end a chain one link past delta_max_depth: nothing is ever coded against a cast
    # but the export's next version, and that is held to the limit like every delta
    if depth >= cfg.delta_max_depth + (first.raw_length != len(data)):
        return None
    plain = delta.load()
    if plain is None or len(plain) != first.raw_length:
        return None
    return delta.blob_id, plain


def choose_coding(repo: Repository, btype: BlobType, bid: bytes, data: bytes, dtype: str | None,
                  delta: DeltaBase | None) -> tuple[int, bytes | bytearray, bytes | None]:
    """(codec, sealed envelope, base id or None) for a new blob, trying ``delta`` then its
    ``fallback``; without a usable base, the blob's best standalone coding."""
    cand = delta
    while cand is not None:
        base = _usable(repo, btype, bid, data, cand, dtype)
        cand = cand.fallback
        if base is None:
            continue
        if len(base[1]) != len(data):  # a cast of the F32 original
            inner = cast_inner(data, base[1], repo.config.compression_level)
            if inner is not None and len(inner) + 33 <= CAST_KEEP * len(data):
                payload = b"".join((base[0], bytes((INNER_CAST,)), inner))
                return DELTA, repo.key.seal(payload, blob_aad(btype, DELTA, bid)), base[0]
            continue
        codec, envelope = repo.encode_blob(btype, bid, data, dtype, base)
        return codec, envelope, base[0] if codec == DELTA else None
    codec, envelope = repo.encode_blob(btype, bid, data, dtype, None)
    return codec, envelope, None
