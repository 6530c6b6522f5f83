"""JSON documents stored in the repository (config, key files, index, snapshots, manifest entries).

Encrypted documents (index, snapshot) are ``codec (u8) || raw length (u64 LE) || payload`` inside
an AEAD envelope, the payload being the JSON compressed with that codec (or raw when compression
does not pay); see docs/FORMAT.md for the fields.
Paths are bytes (POSIX file names need not be UTF-8); in JSON they are ``"path"`` when the bytes
decode as UTF-8, otherwise ``"path_b64"``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

__all__ = ["b64d", "b64e", "dumps", "get_bytes_field", "loads", "put_bytes_field"]


def dumps(doc: Any) -> bytes:
    """Canonical compact JSON (sorted keys) as UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def loads(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"))


def b64e(raw: bytes | bytearray) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def put_bytes_field(doc: dict[str, Any], name: str, value: bytes) -> None:
    """Store ``value`` as ``doc[name]`` (UTF-8 text) or ``doc[name + '_b64']``."""
    try:
        doc[name] = value.decode("utf-8")
    except UnicodeDecodeError:
        doc[name + "_b64"] = b64e(value)


def get_bytes_field(doc: dict[str, Any], name: str) -> bytes | None:
    if name in doc:
        return str(doc[name]).encode("utf-8")
    if name + "_b64" in doc:
        return b64d(doc[name + "_b64"])
    return None
