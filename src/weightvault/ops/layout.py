"""How a backed-up file is stored: how it was chunked, and its stored bytes by codec.

Derived from what the repository holds, without a format change: a file node carries tensor hints
(``Node.tensors``) exactly when a format-aware splitter cut it along tensors, and each blob's
codec and stored length are in the index. Shown by ``ls --long`` / ``ls --json`` and summed by
``stats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weightvault.codec.compress import CODEC_NAMES
from weightvault.repository.manifest import Node
from weightvault.repository.repo import Repository

__all__ = ["FileLayout", "chunking_of", "file_layout"]


@dataclass
class FileLayout:
    chunking: str  # "tensor-aware" (cut along tensors by a format splitter) or "cdc" (content-defined)
    chunks: int
    stored_bytes: int  # in packs, of this file's distinct blobs (delta bases not included)
    stored_by_codec: dict[str, int] = field(default_factory=dict)  # raw, zstd, byteplane, delta
    missing_blobs: int = 0  # not in the index (``check`` says why)


def chunking_of(node: Node) -> str:
    return "tensor-aware" if node.tensors and any(t is not None for t in node.tensors) else "cdc"


def file_layout(repo: Repository, node: Node) -> FileLayout:
    out = FileLayout(chunking_of(node), len(node.blobs), 0)
    for bid in dict.fromkeys(node.blobs):
        entry = repo.index.get(bid)
        if entry is None:
            out.missing_blobs += 1
            continue
        name = CODEC_NAMES.get(entry.blob.codec, f"codec-{entry.blob.codec}")
        out.stored_by_codec[name] = out.stored_by_codec.get(name, 0) + entry.blob.length
        out.stored_bytes += entry.blob.length
    return out
