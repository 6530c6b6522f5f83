"""The splitter registry: format-aware splitters in order, generic CDC for everything else.

``Chunk``, ``ChunkerParams``, ``DTYPE_SIZES`` and ``Splitter`` live in ``chunking.base`` (which
imports no splitter) and are re-exported here for existing importers.
"""

from __future__ import annotations

import os

from weightvault.chunking.base import DTYPE_SIZES, Chunk, ChunkerParams, Splitter, has_suffix
from weightvault.chunking.cdc import CdcSplitter
from weightvault.chunking.dcp import DcpSplitter
from weightvault.chunking.dcp_metadata import MAGIC as DCP_METADATA_MAGIC
from weightvault.chunking.gguf import GgufSplitter
from weightvault.chunking.numpy_formats import NpySplitter, NpzSplitter
from weightvault.chunking.safetensors import SafetensorsSplitter
from weightvault.chunking.torchzip import LEGACY_MAGIC, TorchZipSplitter

__all__ = ["DTYPE_SIZES", "HDF5_MAGIC", "MODEL_SUFFIXES", "Chunk", "ChunkerParams", "Splitter", "SplitterRegistry",
           "default_registry", "detect_format", "looks_like_model"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"  # at offset 0 (files h5py and Keras write; a user block would move it)
# names that say "model file" whatever the content (hub-cache blobs have no name: content decides)
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".gguf", ".npy", ".npz", ".h5", ".hdf5",
                  ".keras", ".distcp", ".weights")


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
    reg.register(DcpSplitter())  # before the torch zip splitter, which would take a .distcp file whole
    reg.register(TorchZipSplitter())
    reg.register(GgufSplitter())
    return reg


_BY_CONTENT: tuple[tuple[str, Splitter], ...] = (
    ("gguf", GgufSplitter()), ("npy", NpySplitter()), ("npz", NpzSplitter()), ("dcp", DcpSplitter()),
    ("torch-zip", TorchZipSplitter()), ("safetensors", SafetensorsSplitter()),
)
# a legacy (non-zip) torch.save file opens with a protocol-2 pickle of this magic number (a LONG1)
_LEGACY_TORCH = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")


def detect_format(head: bytes) -> str | None:
    """The model file format from content alone (up to the first 64 KiB; no name): "gguf",
    "npy", "npz", "torch-zip", "safetensors", "hdf5", or None. The splitters' own tests, asked
    without a file name, so a hub-cache blob or a renamed file is recognised as what it is; also
    "dcp" (a ``.distcp`` shard: several torch zips), "dcp-metadata" (a DCP ``.metadata`` pickle)
    and "torch-legacy" (a non-zip ``torch.save``)."""
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(_LEGACY_TORCH):
        return "torch-legacy"
    if head[:1] == b"\x80" and DCP_METADATA_MAGIC in head[:64]:
        return "dcp-metadata"
    for fmt, splitter in _BY_CONTENT:
        if splitter.accepts(b"", head):
            return fmt
    return None


def looks_like_model(name: str) -> bool:
    """Whether a file name says it holds model data (e.g. to warn when its content is not a
    format this tool understands)."""
    return has_suffix(os.fsencode(name), tuple(s.encode() for s in MODEL_SUFFIXES))
