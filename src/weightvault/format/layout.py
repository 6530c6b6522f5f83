"""Binary layouts: the AEAD envelope, associated data, pack headers and trailers.

Envelope (every encrypted object: blob, pack header, index, snapshot, wrapped key)::

    nonce (12 bytes, random) || ChaCha20-Poly1305 ciphertext || tag (16 bytes)

Associated data binds each ciphertext to what it claims to be::

    b"wv1" || kind (u8) || context

    kind BLOB:        context = blob type (u8) || codec (u8) || blob id (32)
    kind PACK_HEADER: context = empty
    kind INDEX, SNAPSHOT: context = empty
    kind KEY:         context = repository id (its 64 hex characters, ASCII)

Pack file::

    blob_0 || blob_1 || ... || blob_{n-1} || header_envelope || header_len (u32 LE) || b"WVP1"

Pack header plaintext: n entries of 44 bytes, in file order (offsets are the running sum of lengths)::

    type (u8) | codec (u8) | flags (u16 LE, 0) | stored length (u32 LE) | raw length (u32 LE) | blob id (32)

The pack id is the hex BLAKE3 (unkeyed) of the whole pack file, so corruption is detectable without keys.
"""

from __future__ import annotations

import struct

from weightvault.errors import IntegrityError, UnsupportedFormatError
from weightvault.types import BlobType, PackedBlob

__all__ = [
    "AAD_PREFIX",
    "ENTRY_SIZE",
    "FORMAT_VERSION",
    "KIND_BLOB",
    "KIND_INDEX",
    "KIND_KEY",
    "KIND_PACK_HEADER",
    "KIND_SNAPSHOT",
    "NONCE_SIZE",
    "OVERHEAD",
    "PACK_MAGIC",
    "TAG_SIZE",
    "TRAILER_SIZE",
    "blob_aad",
    "decode_pack_header",
    "encode_pack_header",
    "encode_trailer",
    "kind_aad",
    "parse_trailer",
]

FORMAT_VERSION = 2  # v2: blob codec 2 (byteplane); v1 repositories stay readable and writable
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
AAD_PREFIX = b"wv1"

KIND_BLOB = 1
KIND_PACK_HEADER = 2
KIND_INDEX = 3
KIND_SNAPSHOT = 4
KIND_KEY = 5

PACK_MAGIC = b"WVP1"
_ENTRY = struct.Struct("<BBHII32s")
ENTRY_SIZE = _ENTRY.size  # 44
_TRAILER = struct.Struct("<I4s")
TRAILER_SIZE = _TRAILER.size  # 8


def kind_aad(kind: int, context: bytes = b"") -> bytes:
    """Associated data for an envelope of ``kind``."""
    return AAD_PREFIX + bytes((kind,)) + context


def blob_aad(blob_type: BlobType, codec: int, blob_id: bytes) -> bytes:
    """Associated data binding a stored blob to its type, codec and id (detects swapped blobs)."""
    return kind_aad(KIND_BLOB, bytes((int(blob_type), codec)) + blob_id)


def encode_pack_header(blobs: list[PackedBlob]) -> bytes:
    """Serialise header entries in file order. Offsets are implied by the order and lengths."""
    out = bytearray()
    for b in blobs:
        out += _ENTRY.pack(int(b.type), b.codec, 0, b.length, b.raw_length, b.blob_id)
    return bytes(out)


def decode_pack_header(raw: bytes) -> list[PackedBlob]:
    """Parse header entries; raises IntegrityError when the layout is malformed."""
    if len(raw) % ENTRY_SIZE:
        raise IntegrityError(f"pack header length {len(raw)} is not a multiple of {ENTRY_SIZE}")
    blobs: list[PackedBlob] = []
    offset = 0
    for i in range(0, len(raw), ENTRY_SIZE):
        t, codec, flags, length, raw_len, blob_id = _ENTRY.unpack_from(raw, i)
        try:
            btype = BlobType(t)
        except ValueError as exc:
            raise UnsupportedFormatError(f"pack header names unknown blob type {t}") from exc
        if flags != 0:
            raise UnsupportedFormatError(f"pack header entry has unknown flags {flags:#x}")
        blobs.append(PackedBlob(blob_id, btype, codec, offset, length, raw_len))
        offset += length
    return blobs


def encode_trailer(header_envelope_len: int) -> bytes:
    return _TRAILER.pack(header_envelope_len, PACK_MAGIC)


def parse_trailer(trailer: bytes, pack_size: int) -> int:
    """Return the header envelope length; checks the magic and that the header fits in the pack."""
    if len(trailer) != TRAILER_SIZE:
        raise IntegrityError("pack is too short to hold a trailer")
    hlen, magic = _TRAILER.unpack(trailer)
    if magic != PACK_MAGIC:
        raise IntegrityError(f"pack trailer magic is {magic!r}, expected {PACK_MAGIC!r}")
    if hlen < OVERHEAD or hlen + TRAILER_SIZE > pack_size:
        raise IntegrityError(f"pack header length {hlen} does not fit a pack of {pack_size} bytes")
    return int(hlen)
