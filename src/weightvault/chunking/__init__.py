"""Splitters: turn a file's byte stream into chunks. A registry lets format-aware splitters
(safetensors, torch zip, GGUF, npy) claim files before the generic content-defined chunker.

Importing the package imports every splitter (through the registry), so a process that drops
privileges after its imports (tests/test_backup_behaviour.py) needs no stdlib reads later."""

from weightvault.chunking.base import Chunk, Splitter
from weightvault.chunking.registry import SplitterRegistry, default_registry

__all__ = ["Chunk", "Splitter", "SplitterRegistry", "default_registry"]
