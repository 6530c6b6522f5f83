"""The splitter registry: format-aware splitters in order, generic CDC for everything else.

``Chunk``, ``ChunkerParams``, ``DTYPE_SIZES`` and ``Splitter`` live in ``chunking.base`` (which
imports no splitter) and are re-exported here for existing importers.
"""

from __future__ import annotations

from weightvault.chunking.base import DTYPE_SIZES, Chunk, ChunkerParams, Splitter
from weightvault.chunking.cdc import CdcSplitter
from weightvault.chunking.gguf import GgufSplitter
from weightvault.chunking.numpy_formats import NpySplitter, NpzSplitter
from weightvault.chunking.safetensors import SafetensorsSplitter
from weightvault.chunking.torchzip import TorchZipSplitter

__all__ = ["DTYPE_SIZES", "Chunk", "ChunkerParams", "Splitter", "SplitterRegistry", "default_registry"]


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
    reg = SplitterRegistry(CdcSplitter())
    reg.register(SafetensorsSplitter())
    reg.register(NpySplitter())
    reg.register(NpzSplitter())
    reg.register(TorchZipSplitter())
    reg.register(GgufSplitter())
    return reg
