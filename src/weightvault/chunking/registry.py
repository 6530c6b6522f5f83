"""The splitter registry.

A ``Splitter`` decides from a file's name and first bytes whether it handles the file, then yields
``Chunk``s that exactly tile the stream, in order. The engine only relies on that tiling contract,
so a new splitter changes where chunk boundaries fall, never what is restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

__all__ = ["Chunk", "ChunkerParams", "Splitter", "SplitterRegistry", "default_registry"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a file. ``data`` must stay valid after the next chunk is produced."""

    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """Repository-wide chunking parameters (stored in the repository config)."""

    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 8 * 1024 * 1024
    seed: int = 0


class Splitter(Protocol):
    name: str

    def accepts(self, name: bytes, head: bytes) -> bool:
        """True if this splitter wants the file; ``head`` holds up to its first 64 KiB."""
        ...

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        """Yield chunks that tile the stream from offset 0 to EOF, in order, none empty."""
        ...


class SplitterRegistry:
    """Ordered splitters; the last registered fallback handles everything else."""

    def __init__(self, fallback: Splitter) -> None:
        self._splitters: list[Splitter] = []
        self._fallback = fallback

    def register(self, splitter: Splitter) -> None:
        self._splitters.append(splitter)

    def select(self, name: bytes, head: bytes) -> Splitter:
        for s in self._splitters:
            if s.accepts(name, head):
                return s
        return self._fallback


def default_registry() -> SplitterRegistry:
    from weightvault.chunking.cdc import CdcSplitter

    return SplitterRegistry(CdcSplitter())
