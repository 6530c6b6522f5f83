"""The repository config: a plaintext JSON document at ``config``.

It holds no secrets, only the format version, the repository id and tuning parameters. Tampering
with it can only hurt deduplication or performance, never confidentiality or integrity: every
data object is authenticated under the master key, which is bound to the repository id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

from weightvault.chunking.registry import ChunkerParams
from weightvault.errors import IntegrityError, UnsupportedFormatError
from weightvault.format import objects
from weightvault.format.layout import FORMAT_VERSION

__all__ = ["DEFAULT_PACK_SIZE", "RepoConfig"]

DEFAULT_PACK_SIZE = 32 * 1024 * 1024
FORMAT_NAME = "weightvault-repository"


@dataclass(frozen=True, slots=True)
class RepoConfig:
    repo_id: str
    version: int = FORMAT_VERSION
    created: str = ""
    chunk_min: int = 256 * 1024
    chunk_avg: int = 1024 * 1024
    chunk_max: int = 8 * 1024 * 1024
    pack_size: int = DEFAULT_PACK_SIZE
    compression_level: int = 3

    @classmethod
    def new(cls, **overrides: int) -> RepoConfig:
        return cls(repo_id=os.urandom(32).hex(), created=datetime.now(UTC).isoformat(), **overrides)

    def chunker(self, seed: int) -> ChunkerParams:
        return ChunkerParams(self.chunk_min, self.chunk_avg, self.chunk_max, seed)

    def to_bytes(self) -> bytes:
        return objects.dumps(
            {
                "format": FORMAT_NAME,
                "version": self.version,
                "id": self.repo_id,
                "created": self.created,
                "chunker": {"min": self.chunk_min, "avg": self.chunk_avg, "max": self.chunk_max},
                "pack_size": self.pack_size,
                "compression_level": self.compression_level,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes, location: str) -> RepoConfig:
        try:
            doc = objects.loads(raw)
            fmt, version = doc.get("format"), doc.get("version")
        except (ValueError, AttributeError) as exc:
            raise IntegrityError(f"{location}/config is not a weightvault config") from exc
        if fmt != FORMAT_NAME:
            raise UnsupportedFormatError(f"{location} is not a weightvault repository (format {fmt!r})")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise UnsupportedFormatError(
                f"{location} uses repository format version {version}; this weightvault reads "
                f"versions 1..{FORMAT_VERSION}",
                hint="upgrade weightvault to a release that supports this format",
            )
        try:
            ch = doc["chunker"]
            cfg = cls(
                repo_id=str(doc["id"]),
                version=version,
                created=str(doc.get("created", "")),
                chunk_min=int(ch["min"]),
                chunk_avg=int(ch["avg"]),
                chunk_max=int(ch["max"]),
                pack_size=int(doc["pack_size"]),
                compression_level=int(doc.get("compression_level", 3)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{location}/config is missing or has a malformed field: {exc}") from exc
        if not (64 <= cfg.chunk_min <= cfg.chunk_avg <= cfg.chunk_max <= 16 * 1024 * 1024):
            raise IntegrityError(f"{location}/config has invalid chunk sizes")
        if not (1024 <= cfg.pack_size <= 1024 * 1024 * 1024) or not (1 <= cfg.compression_level <= 22):
            raise IntegrityError(f"{location}/config has an invalid pack size or compression level")
        return cfg
