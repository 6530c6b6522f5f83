"""Splitters: turn a file's byte stream into chunks. A registry lets format-aware splitters
(safetensors, torch zip, GGUF, npy) claim files before the generic content-defined chunker."""

from weightvault.chunking.registry import Chunk, Splitter, SplitterRegistry, default_registry

__all__ = ["Chunk", "Splitter", "SplitterRegistry", "default_registry"]
