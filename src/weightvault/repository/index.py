"""The in-memory master index and index files.

An index file is a sealed document (kind INDEX, framing in ``seal_document``) named by the BLAKE3
of its stored bytes::

    {"version": 1, "packs": [{"id": pack_hex, "blobs": [[blob_hex, type, codec, offset, length, raw_length], ...]}]}

A delta blob (codec 3, format v3) has a seventh element, the hex id of its base blob.

Index files only ever add information; several may describe the same pack. The index can always be
rebuilt from pack headers alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import blake3

from weightvault.codec.compress import ZSTD, compress_best, decompress
from weightvault.codec.crypto import MasterKey
from weightvault.errors import IntegrityError, UnsupportedFormatError
from weightvault.format import objects
from weightvault.format.layout import KIND_INDEX, kind_aad
from weightvault.types import BlobType, IndexEntry, PackedBlob

__all__ = ["MasterIndex", "decode_index_file", "encode_index_file", "open_document", "seal_document"]

_Row = tuple[int, int, int, int, int, int]  # pack number, type, codec, offset, length, raw_length


class MasterIndex:
    """blob id -> location. Thread-safe. Memory: one tuple per blob plus pack ids once each.

    Packs named in a prune plan are *condemned* (``condemned``, format v4): readers still find a
    blob that only they hold (``get``, ``in``), but a copy in any other pack is preferred, and
    writers must not reuse such a blob (``usable`` is False), so that prune may delete them."""

    def __init__(self, condemned: Iterable[str] = ()) -> None:
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        self._blobs: dict[bytes, _Row] = {}
        self._shadow: dict[bytes, _Row] = {}  # blobs held only by condemned packs
        self._bases: dict[bytes, bytes] = {}  # delta blob id -> base blob id
        self._condemned = frozenset(condemned)
        self._lock = threading.Lock()

    @property
    def condemned(self) -> frozenset[str]:
        return self._condemned

    def __len__(self) -> int:
        return len(self._blobs) + len(self._shadow)

    def __contains__(self, blob_id: object) -> bool:
        """Whether the blob can be read (condemned packs included)."""
        return blob_id in self._blobs or blob_id in self._shadow

    def usable(self, blob_id: bytes) -> bool:
        """Whether a writer may reference the blob: it is held by a pack no prune plan condemns."""
        return blob_id in self._blobs

    def add_pack(self, pack_id: str, blobs: Iterable[PackedBlob]) -> None:
        with self._lock:
            no = self._pack_no.get(pack_id)
            if no is None:
                no = self._pack_no[pack_id] = len(self._packs)
                self._packs.append(pack_id)
            target = self._shadow if pack_id in self._condemned else self._blobs
            for b in blobs:
                if b.blob_id in self._blobs or b.blob_id in target:
                    continue
                self._shadow.pop(b.blob_id, None)
                target[b.blob_id] = (no, int(b.type), b.codec, b.offset, b.length, b.raw_length)
                if b.base is not None:
                    self._bases[b.blob_id] = b.base
                else:
                    self._bases.pop(b.blob_id, None)

    def get(self, blob_id: bytes, usable_only: bool = False) -> IndexEntry | None:
        row = self._blobs.get(blob_id)
        if row is None and not usable_only:
            row = self._shadow.get(blob_id)
        if row is None:
            return None
        no, t, codec, off, length, raw = row
        return IndexEntry(
            self._packs[no], PackedBlob(blob_id, BlobType(t), codec, off, length, raw, self._bases.get(blob_id))
        )

    def base_of(self, blob_id: bytes) -> bytes | None:
        """The base of an indexed delta blob; None for any other blob."""
        return self._bases.get(blob_id)

    def has_pack(self, pack_id: str) -> bool:
        return pack_id in self._pack_no

    def pack_ids(self) -> list[str]:
        return list(self._packs)

    def entries(self) -> Iterator[IndexEntry]:
        for blob_id in [*self._blobs, *self._shadow]:
            e = self.get(blob_id)
            if e is not None:
                yield e


def encode_index_file(key: MasterKey, packs: dict[str, list[PackedBlob]]) -> tuple[str, bytes]:
    """Return (name, stored bytes) for an index file describing ``packs``."""
    doc = {
        "version": 1,
        "packs": [
            {
                "id": pid,
                "blobs": [_row(b) for b in blobs],
            }
            for pid, blobs in sorted(packs.items())
        ],
    }
    return seal_document(key, doc, KIND_INDEX)


def _row(b: PackedBlob) -> list[object]:
    row: list[object] = [b.blob_id.hex(), int(b.type), b.codec, b.offset, b.length, b.raw_length]
    if b.base is not None:
        row.append(b.base.hex())
    return row


def open_document(key: MasterKey, stored: bytes, kind: int, what: str) -> bytes:
    """Decrypt and decompress a stored document: codec (u8) || raw length (u64 LE) || payload."""
    plain = key.open(stored, kind_aad(kind), what)
    if len(plain) < 9:
        raise IntegrityError(f"{what}: document is truncated")
    codec, raw_len = plain[0], int.from_bytes(plain[1:9], "little")
    if codec not in (0, ZSTD):
        raise UnsupportedFormatError(f"{what}: unknown document codec {codec}")
    out = decompress(codec, plain[9:], raw_len)
    return out if isinstance(out, bytes) else bytes(out)


def seal_document(key: MasterKey, doc: object, kind: int) -> tuple[str, bytes]:
    """Serialise, compress and encrypt a JSON document; returns (name, stored bytes)."""
    raw = objects.dumps(doc)
    codec, payload = compress_best(raw)
    stored = bytes(key.seal(bytes((codec,)) + len(raw).to_bytes(8, "little") + payload, kind_aad(kind)))
    return blake3.blake3(stored).hexdigest(), stored


def decode_index_file(key: MasterKey, name: str, stored: bytes) -> dict[str, list[PackedBlob]]:
    what = f"index/{name}"
    doc = objects.loads(open_document(key, stored, KIND_INDEX, what))
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise UnsupportedFormatError(f"{what} has an unknown version")
    out: dict[str, list[PackedBlob]] = {}
    known = {int(t) for t in BlobType}
    try:
        for p in doc["packs"]:
            for row in p["blobs"]:
                if row[1] not in known:
                    raise UnsupportedFormatError(f"{what} names unknown blob type {row[1]}; upgrade weightvault")
        for p in doc["packs"]:
            out[str(p["id"])] = [_parse_row(row) for row in p["blobs"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{what} is malformed: {exc}") from exc
    return out


def _parse_row(row: list[object]) -> PackedBlob:
    if len(row) not in (6, 7):
        raise ValueError(f"index row has {len(row)} fields")
    h, t, c, o, ln, r = row[:6]
    base = bytes.fromhex(str(row[6])) if len(row) == 7 else None
    if base is not None and len(base) != 32:
        raise ValueError("base id is not 32 bytes")
    return PackedBlob(
        bytes.fromhex(str(h)), BlobType(int(t)), int(c), int(o), int(ln), int(r), base  # type: ignore[call-overload]
    )
