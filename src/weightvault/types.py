"""Small frozen value types shared by every layer."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["BlobType", "IndexEntry", "PackedBlob"]


class BlobType(enum.IntEnum):
    """What a blob holds. Stored as one byte in pack headers and bound into each blob's AEAD."""

    DATA = 1  # file content chunk
    TREE = 2  # chunk of a snapshot manifest stream


@dataclass(frozen=True, slots=True)
class PackedBlob:
    """One blob as described by a pack header: where it lies inside its pack."""

    blob_id: bytes  # 32 bytes: keyed BLAKE3 of the plaintext
    type: BlobType
    codec: int
    offset: int  # byte offset of the stored (encrypted) blob inside the pack
    length: int  # stored length: nonce + ciphertext + tag
    raw_length: int  # plaintext length
    base: bytes | None = None  # codec 3 (delta) only: id of the blob this one is a delta against


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """Where a blob lives: pack id plus its PackedBlob description."""

    pack_id: str
    blob: PackedBlob
