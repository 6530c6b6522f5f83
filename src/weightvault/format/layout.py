"""Binary layouts: the AEAD envelope, associated data, pack headers and trailers.

Envelope (every encrypted object: blob, pack header, index, snapshot, wrapped key)::

    nonce (12 bytes, random) || ChaCha20-Poly1305 ciphertext || tag (16 bytes)

Associated data binds each ciphertext to what it claims to be::

    b"wv1" || kind (u8) || context

    kind BLOB:        context = blob type (u8) || codec (u8) || blob id (32)
    kind PACK_HEADER: context = empty
    kind INDEX, SNAPSHOT, PLAN, LEDGER: context = empty
    kind KEY:         context = repository id (its 64 hex characters, ASCII)

Pack file::

    blob_0 || blob_1 || ... || blob_{n-1} || header_envelope || header_len (u32 LE) || b"WVP1"

Pack header plaintext: n entries, in file order (offsets are the running sum of lengths)::

    type (u8) | codec (u8) | flags (u16 LE) | stored length (u32 LE) | raw length (u32 LE) | blob id (32)
    [ base blob id (32) ]   present only when flags bit 0 (FLAG_BASE) is set (format v3, codec 3)

An entry is 44 bytes, or 76 with a base. Other flag bits are refused.

The pack id is the hex BLAKE3 (unkeyed) of the whole pack file, so corruption is detectable without keys.
"""

from __future__ import annotations

import struct

from weightvault.errors import IntegrityError, UnsupportedFormatError
from weightvault.types import BlobType, PackedBlob

__all__ = [
    "AAD_PREFIX",
    "CREATE_VERSION",
    "ENTRY_SIZE",
    "FLAG_BASE",
    "FORMAT_VERSION",
    "KIND_BLOB",
    "KIND_INDEX",
    "KIND_KEY",
    "KIND_LEDGER",
    "KIND_PACK_HEADER",
    "KIND_PLAN",
    "KIND_SNAPSHOT",
    "KMS_KEY_VERSION",
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

# v2: codec 2 (byteplane); v3: codec 3 (delta), FLAG_BASE; v4: prune plans, maintenance locks;
# v5: DELTA inner codec 3; v6: KMS key files; v7: DELTA inner codec 4 (BF16 cast of an F32 base).
# Older versions stay readable and writable.
FORMAT_VERSION = 7
#: The version ``init`` writes: every object this weightvault may store is allowed in it.
CREATE_VERSION = 7
KMS_KEY_VERSION = 6
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
AAD_PREFIX = b"wv1"

KIND_BLOB = 1
KIND_PACK_HEADER = 2
KIND_INDEX = 3
KIND_SNAPSHOT = 4
KIND_KEY = 5
KIND_PLAN = 6  # format v4: a prune plan (plans/)
KIND_LEDGER = 7  # format v4: a ledger record (ledger/)

PACK_MAGIC = b"WVP1"
_ENTRY = struct.Struct("<BBHII32s")
ENTRY_SIZE = _ENTRY.size  # 44
FLAG_BASE = 1  # the entry is followed by the 32-byte id of the blob's delta base
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
        out += _ENTRY.pack(int(b.type), b.codec, FLAG_BASE if b.base else 0, b.length, b.raw_length, b.blob_id)
        if b.base:
            out += b.base
    return bytes(out)


def decode_pack_header(raw: bytes) -> list[PackedBlob]:
    """Parse header entries; raises IntegrityError when the layout is malformed."""
    blobs: list[PackedBlob] = []
    offset = 0
    i = 0
    while i < len(raw):
        if len(raw) - i < ENTRY_SIZE:
            raise IntegrityError(f"pack header ends inside an entry ({len(raw) - i} of {ENTRY_SIZE} bytes)")
        t, codec, flags, length, raw_len, blob_id = _ENTRY.unpack_from(raw, i)
        i += ENTRY_SIZE
        try:
            btype = BlobType(t)
        except ValueError as exc:
            raise UnsupportedFormatError(f"pack header names unknown blob type {t}") from exc
        if flags & ~FLAG_BASE:
            raise UnsupportedFormatError(f"pack header entry has unknown flags {flags:#x}")
        base = None
        if flags & FLAG_BASE:
            if len(raw) - i < 32:
                raise IntegrityError("pack header ends inside a base blob id")
            base = bytes(raw[i : i + 32])
            i += 32
        blobs.append(PackedBlob(blob_id, btype, codec, offset, length, raw_len, base))
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
