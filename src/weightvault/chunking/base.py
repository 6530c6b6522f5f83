"""What every splitter shares: the ``Chunk`` it yields, the repository's ``ChunkerParams``, the
``Splitter`` protocol and the dtype vocabulary of chunk hints. Imports no splitter, so splitters
and the registry both build on it without an import cycle.

A ``Splitter`` decides from a file's name and first bytes whether it handles the file, then yields
``Chunk``s that exactly tile the stream, in order. The engine only relies on that tiling contract,
so a new splitter changes where chunk boundaries fall, never what is restored.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

__all__ = ["DTYPE_SIZES", "Chunk", "ChunkerParams", "SeekableReader", "Splitter", "has_suffix"]

# Element sizes in bytes of the dtype names used in Chunk.dtype (safetensors' vocabulary).
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a file. ``data`` must stay valid after the next chunk is produced.

    Format-aware splitters may describe what the bytes are: ``dtype`` is the element type of a
    tensor's raw little-endian data using safetensors' names ("F32", "BF16", "F16", "F64", "I8",
    ...; see ``DTYPE_SIZES``), and ``tensor`` names the tensor (with ``part``, the index of this
    sub-chunk within it). These are hints for codecs and deltas only: they never change the bytes
    stored or restored, and a wrong hint may only cost compression.
    """

    offset: int
    data: bytes
    dtype: str | None = None
    tensor: str | None = None
    part: int = 0


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


class SeekableReader(io.RawIOBase):
    """A read-only, seekable stream of ``_size`` bytes over some other storage: subclasses set
    ``_size`` and implement ``readinto`` at ``_pos``. A seek before the start goes to 0 if
    ``clamp_negative`` (as ``zipfile`` expects of a window into a larger file), else is a
    ValueError."""

    clamp_negative = False
    _pos: int = 0
    _size: int = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        bases = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}
        if whence not in bases:
            raise ValueError(f"invalid whence {whence}")
        target = bases[whence] + offset
        if target < 0 and not self.clamp_negative:
            raise ValueError(f"negative seek position {target}")
        self._pos = max(0, target)
        return self._pos


def has_suffix(name: bytes, suffixes: bytes | tuple[bytes, ...]) -> bool:
    """Whether the last component of ``name`` ends with one of ``suffixes`` (case-insensitive) as
    an extension, the way ``os.path.splitext`` sees one: something must precede it other than
    dots, so a dotfile named ``.safetensors`` has no extension and is not taken for a model file."""
    base = name.rsplit(b"/", 1)[-1].lower()
    for suffix in (suffixes,) if isinstance(suffixes, bytes) else suffixes:
        if base.endswith(suffix) and base[:-len(suffix)].strip(b"."):
            return True
    return False
