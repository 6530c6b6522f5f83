"""Assembling pack files in memory and reading their headers back.

A pack is built in memory (bounded by the repository's pack size plus one blob) and written with a
single atomic ``Backend.save``; see ``weightvault.format.layout`` for the byte layout.
"""

from __future__ import annotations

import blake3

from weightvault.backends.base import Backend, FileType
from weightvault.codec import kernels
from weightvault.codec.crypto import MasterKey
from weightvault.errors import IntegrityError
from weightvault.format.layout import (
    KIND_PACK_HEADER,
    TRAILER_SIZE,
    decode_pack_header,
    encode_pack_header,
    encode_trailer,
    kind_aad,
    parse_trailer,
)
from weightvault.types import BlobType, PackedBlob

__all__ = ["PackBuilder", "read_pack_header"]


class PackBuilder:
    """Accumulates encrypted blobs; not thread-safe (callers hold the repository lock)."""

    def __init__(self) -> None:
        self._parts: list[bytes | bytearray] = []
        self._size = 0
        self.blobs: list[PackedBlob] = []
        self.by_id: dict[bytes, PackedBlob] = {}

    @property
    def size(self) -> int:
        return self._size

    def add(
        self,
        blob_id: bytes,
        btype: BlobType,
        codec: int,
        envelope: bytes | bytearray,
        raw_length: int,
        base: bytes | None = None,
    ) -> None:
        blob = PackedBlob(blob_id, btype, codec, self._size, len(envelope), raw_length, base)
        self.blobs.append(blob)
        self.by_id[blob_id] = blob
        self._parts.append(envelope)
        self._size += len(envelope)

    def finish(self, key: MasterKey) -> tuple[str, bytes]:
        """Return (pack id, pack bytes). The builder must not be used afterwards. The parts are
        joined without the GIL (``kernels.concat``): the other threads of a backup go on meanwhile."""
        header = key.seal(encode_pack_header(self.blobs), kind_aad(KIND_PACK_HEADER))
        self._parts += [header, encode_trailer(len(header))]
        data = kernels.concat(self._parts)
        self._parts = []
        return blake3.blake3(data).hexdigest(), data


def read_pack_header(backend: Backend, key: MasterKey, pack_id: str, size: int | None = None) -> list[PackedBlob]:
    """Read and authenticate a pack's header (two small range reads)."""
    if size is None:
        size = backend.stat(FileType.PACK, pack_id)
    hlen = parse_trailer(backend.load(FileType.PACK, pack_id, max(0, size - TRAILER_SIZE), TRAILER_SIZE), size)
    envelope = backend.load(FileType.PACK, pack_id, size - TRAILER_SIZE - hlen, hlen)
    blobs = decode_pack_header(key.open(envelope, kind_aad(KIND_PACK_HEADER), f"header of pack {pack_id}"))
    end = size - TRAILER_SIZE - hlen
    if blobs and blobs[-1].offset + blobs[-1].length != end:
        described = blobs[-1].offset + blobs[-1].length
        raise IntegrityError(f"pack {pack_id}: header describes {described} bytes of blobs, pack has {end}")
    return blobs
