"""The repository config: a plaintext JSON document at ``config``.

It holds no secrets, only the format version, the repository id and tuning parameters. Tampering
with it cannot break confidentiality or integrity (every data object is authenticated under the
master key, which is bound to the repository id), but it can deny service: a changed id makes
every password look wrong, a raised version gets the repository refused, and out-of-range sizes
are refused at open time.

``version`` is the format version the repository was created with (``CREATE_VERSION`` for a new
repository). It gates what writers may store: codec 2
(byteplane) only when ``version >= 2``, codec 3 (delta) only when ``version >= 3``, prune plans
and the ledger only when ``version >= 4``, a delta of integer differences (inner 3) only when
``version >= 5``, a KMS key file only when ``version >= 6``, a BF16 cast of an F32 base (inner 4)
only when ``version >= 7``, so an older repository stays readable
by the weightvault that created it. Only adding a KMS key raises it (``Repository.add_kms_key``), and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

from weightvault.chunking.cdc import validate_params
from weightvault.chunking.registry import ChunkerParams
from weightvault.errors import IntegrityError, UnsupportedFormatError, UsageError
from weightvault.format import objects
from weightvault.format.layout import CREATE_VERSION, FORMAT_VERSION

__all__ = ["DEFAULT_DELTA_MAX_DEPTH", "DEFAULT_PACK_SIZE", "DELTA_MAX_DEPTH_LIMIT", "RepoConfig"]

DEFAULT_PACK_SIZE = 32 * 1024 * 1024
DEFAULT_DELTA_MAX_DEPTH = 8
DELTA_MAX_DEPTH_LIMIT = 32
FORMAT_NAME = "weightvault-repository"


@dataclass(frozen=True, slots=True)
class RepoConfig:
    repo_id: str
    version: int = CREATE_VERSION
    created: str = ""
    chunk_min: int = 256 * 1024
    chunk_avg: int = 1024 * 1024
    chunk_max: int = 8 * 1024 * 1024
    pack_size: int = DEFAULT_PACK_SIZE
    compression_level: int = 3
    delta_max_depth: int = DEFAULT_DELTA_MAX_DEPTH  # v3: longest delta chain a writer creates; 0: no deltas
    append_only: bool = False  # v4: forget, prune, repair and key removal are refused

    @classmethod
    def new(cls, **overrides: int) -> RepoConfig:
        """A fresh config; UsageError if an override is out of range."""
        cfg = cls(repo_id=os.urandom(32).hex(), created=datetime.now(UTC).isoformat(), **overrides)  # type: ignore[arg-type]
        problem = cfg.problem()
        if problem:
            raise UsageError(f"invalid repository parameters: {problem}")
        return cfg

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
                **({"delta_max_depth": self.delta_max_depth} if self.version >= 3 else {}),
                **({"append_only": True} if self.append_only and self.version >= 4 else {}),
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
        if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
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
                delta_max_depth=int(doc.get("delta_max_depth", DEFAULT_DELTA_MAX_DEPTH)) if version >= 3 else 0,
                append_only=doc.get("append_only", False) is True if version >= 4 else False,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{location}/config is missing or has a malformed field: {exc}") from exc
        problem = cfg.problem()
        if problem:
            raise IntegrityError(f"{location}/config is invalid: {problem}")
        return cfg

    def problem(self) -> str | None:
        """None if every parameter is usable, else what is wrong."""
        reason = validate_params(self.chunker(0))
        if reason:
            return f"chunk sizes {self.chunk_min}/{self.chunk_avg}/{self.chunk_max}: {reason}"
        if not (1024 <= self.pack_size <= 1024 * 1024 * 1024):
            return f"pack size {self.pack_size} outside 1 KiB .. 1 GiB"
        if not (1 <= self.compression_level <= 22):
            return f"compression level {self.compression_level} outside 1..22"
        if not (0 <= self.delta_max_depth <= DELTA_MAX_DEPTH_LIMIT):
            return f"delta chain depth {self.delta_max_depth} outside 0..{DELTA_MAX_DEPTH_LIMIT}"
        return None
