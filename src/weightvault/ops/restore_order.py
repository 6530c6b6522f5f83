"""The order in which a restore writes files, chosen so delta bases are still in the blob cache.

Directories come first (in plan order), then files grouped by checkpoint series, each series in
step order (``delta_bases.series_key``): a file's delta bases are then the chunks of the file
restored just before it, instead of a whole checkpoint's worth of bases of every file kept at
once (and chains decoded again once the cache overflows). A BF16 export whose chunks are casts of
an F32 file beside it (format version 7) is written right after that file, so the F32 chunks it
is made from are the ones just decoded, not decoded a second time when the F32 series comes.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TypeVar

from weightvault.ops.delta_bases import series_key
from weightvault.repository.manifest import Node

__all__ = ["in_chain_order"]

T = TypeVar("T")


def _main_dtype(n: Node) -> tuple[str, str] | None:
    """(first tensor name, dtype) of the dtype most of a tensor file's chunks have, if F32 or BF16."""
    if not n.tensors:
        return None
    counts = Counter(t[2] for t in n.tensors if t is not None and t[2] is not None)
    if not counts:
        return None
    dtype = counts.most_common(1)[0][0]
    if dtype not in ("F32", "BF16"):
        return None
    first = next(t[0] for t in n.tensors if t is not None and t[2] == dtype)
    return first, dtype


def in_chain_order(plan: list[tuple[Node, T]]) -> list[tuple[Node, T]]:
    """``plan`` (nodes and their places) in the order described in the module docstring."""
    files = [i for i in plan if i[0].type == "file"]
    originals: dict[tuple[bytes, str], bytes] = {}  # (directory, first tensor) -> the F32 file
    for n, _ in files:
        main = _main_dtype(n)
        if main is not None and main[1] == "F32":
            originals.setdefault((os.path.dirname(n.path), main[0]), n.path)

    def series(path: bytes) -> tuple[bytes, tuple[int, ...], bytes]:
        sk = series_key(path)
        return (sk[0], sk[1], path) if sk is not None else (path, (), path)

    def key(item: tuple[Node, T]) -> tuple[tuple[bytes, tuple[int, ...], bytes], int, bytes]:
        n = item[0]
        main = _main_dtype(n) if originals else None
        if main is not None and main[1] == "BF16":
            partner = originals.get((os.path.dirname(n.path), main[0]))
            if partner is not None:
                return series(partner), 1, n.path
        return series(n.path), 0, n.path

    return [i for i in plan if i[0].type == "dir"] + sorted(files, key=key)
