"""Splitters: turn a file's byte stream into chunks. A registry lets format-aware splitters
(safetensors, torch zip, GGUF, npy) claim files before the generic content-defined chunker."""

# default_registry() imports these lazily; importing them with the package means a process that
# drops privileges after its imports (tests/test_backup_behaviour.py) needs no stdlib reads later.
from weightvault.chunking import cdc, gguf, numpy_formats, safetensors, torchzip  # noqa: F401
from weightvault.chunking.registry import Chunk, Splitter, SplitterRegistry, default_registry

__all__ = ["Chunk", "Splitter", "SplitterRegistry", "default_registry"]
