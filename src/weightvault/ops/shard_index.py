"""Sharded Hugging Face checkpoints: ``model.safetensors.index.json`` and
``pytorch_model.bin.index.json`` as validation sees them.

``save_pretrained(max_shard_size=...)`` writes the weights as ``model-00001-of-0000N.safetensors``
(or ``.bin``) files plus an index, ``{"metadata": {"total_size": ...}, "weight_map": {tensor
name: shard file name}}``, which ``from_pretrained`` follows. An index that names a shard the
directory lacks, or a tensor that is not in the shard it names, fails to load although every
file on its own looks healthy: ``parse_shard_index`` reads the index (level 2: JSON with a
non-empty ``weight_map`` of names to relative file names), and ``check_shards`` checks it against
the shards beside it (each there, inside the validated tree, holding every tensor mapped to it:
safetensors headers and ``torch.save`` pickles read without executing anything). Level 3 compares
the map with the backed-up index's: each tensor's shard is its "dtype" ``in <file>``.
"""

from __future__ import annotations

import json
import os
import posixpath

from weightvault.chunking.safetensors import parse_safetensors
from weightvault.chunking.torchzip import torch_zip_structure

__all__ = ["MAX_INDEX", "check_shards", "is_shard_index", "parse_shard_index"]

MAX_INDEX = 64 * 1024 * 1024


def is_shard_index(name: str, head: bytes) -> bool:
    """An ``*.index.json`` whose first bytes mention a ``weight_map``."""
    return name.lower().endswith(".index.json") and b'"weight_map"' in head


def parse_shard_index(data: bytes) -> dict[str, str]:
    """tensor name -> shard file (relative to the index's directory); ValueError naming what is
    wrong: not JSON, no ``weight_map``, a value that is not a relative path inside the directory."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not wm or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise ValueError("no weight_map of tensor names to shard file names")
    for shard in set(wm.values()):
        parts = shard.replace("\\", "/").split("/")
        if not shard or shard.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in shard:
            raise ValueError(f"weight_map names {shard!r}, which is not a file inside the checkpoint directory")
    return dict(wm)


def check_shards(weight_map: dict[str, str], directory: str, inside: str) -> list[str]:
    """Problems of the shards an index in ``directory`` maps tensors to (see the module docstring)."""
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    problems: list[str] = []
    for shard, names in sorted(by_shard.items()):
        path = os.path.join(directory, *shard.split("/"))
        real = os.path.realpath(path)
        if not real.startswith(inside.rstrip(os.sep) + os.sep):
            problems.append(f"shard {shard!r} resolves outside the validated tree: not read")
            continue
        try:
            held = _tensor_names(path, shard)
        except FileNotFoundError:
            problems.append(f"shard {shard!r}, named for {len(names)} tensors (e.g. {names[0]!r}), is missing")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"shard {shard!r} cannot be read: {getattr(exc, 'strerror', None) or exc}")
            continue
        if held is None:
            continue  # a format whose names this does not read: presence is what is checked
        absent = [n for n in names if n not in held]
        if absent:
            problems.append(f"{len(absent)} tensors the index maps to {shard!r} are not in it, e.g. {absent[0]!r}")
    return problems


def _tensor_names(path: str, shard: str) -> set[str] | None:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        ext = posixpath.splitext(shard.lower())[1]
        if ext == ".safetensors":
            return {t.name for t in parse_safetensors(f, size, strict=True).tensors}
        if ext in (".bin", ".pt", ".pth"):
            return set(torch_zip_structure(f, size, strict=True).tensors)
    return None
