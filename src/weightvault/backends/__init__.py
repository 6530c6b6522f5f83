"""Storage backends: a small protocol and its implementations (local directory, memory)."""

from weightvault.backends.base import Backend, FileType

__all__ = ["Backend", "FileType"]
