"""How a backed-up file is stored: how it was chunked, and its stored bytes by codec.

Derived from what the repository holds, without a format change: a file node carries tensor hints
(``Node.tensors``) exactly when a format-aware splitter cut it along tensors, and each blob's
codec and stored length are in the index. Shown by ``ls --long`` / ``ls --json`` and summed by
``stats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weightvault.chunking.base import has_suffix
from weightvault.chunking.registry import detect_format
from weightvault.chunking.tensor_plan import CdcFallback
from weightvault.codec.compress import CODEC_NAMES
from weightvault.repository.manifest import Node
from weightvault.repository.repo import Repository

__all__ = ["FileLayout", "chunking_of", "fallback_reason", "file_layout"]


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


def fallback_reason(name: bytes, head: bytes, chunks: object) -> str | None:
    """Why a file that looks like a model (by name or content) was stored with generic CDC, or
    None if it does not look like one (the backup's warning)."""
    fmt = detect_format(head)
    if fmt == "dcp-metadata":  # a small pickle of names and offsets: no tensor data to split
        return None
    if isinstance(chunks, CdcFallback):
        return f"{fmt or 'its'} parser refused it ({chunks.reason})"
    if fmt is not None or has_suffix(name, _MODEL_ONLY):
        return f"no tensor-aware splitter for {fmt or 'its content'}"
    return None


# names used for model data only (``.bin`` and ``.weights`` hold other data too: content decides there)
_MODEL_ONLY = (b".safetensors", b".pt", b".pth", b".ckpt", b".gguf", b".npy", b".npz", b".h5", b".hdf5", b".keras",
               b".distcp")
