"""Whether a checkpoint on local disk is complete, from what its format says (nothing unpickled).

A watcher (``weightvault.agent``) must back a checkpoint up only once its writer has finished;
each framework leaves a different sign that it has:

* **Hugging Face** (a directory with ``trainer_state.json``, or named ``checkpoint-N``):
  ``Trainer._save_checkpoint`` writes the model, optimizer, scheduler and RNG states first and
  ``trainer_state.json`` last, so it must be there and no file may be newer;
* **DCP** (a directory with ``.metadata`` or ``*.distcp``): ``finish`` writes ``.metadata`` after
  every shard; it must parse and every item it records must lie inside its shard;
* **sharded** (a ``*.index.json`` with a ``weight_map``): every shard named is there and whole;
* **Lightning** (``*.ckpt``) and any other single file of a known model format: the file parses
  as its format up to its end (a zip's central directory, a safetensors header's last offset), so
  a file cut off by a killed writer is never taken for complete.

``completeness(path)`` answers for a checkpoint directory or file: True (the format says done),
False (it says not yet, with the reason) or None (nothing in the format tells; the caller waits for
a quiet period with no writer). Files of a known model format inside a directory are checked the
same way in every case.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from weightvault.chunking.dcp_metadata import parse_dcp_metadata
from weightvault.ops.formats import HEAD_BYTES, detect, parse
from weightvault.ops.shard_index import MAX_INDEX, check_shards, is_shard_index, parse_shard_index

__all__ = ["Completeness", "completeness", "unit_kind"]

_DCP_METADATA = ".metadata"
_HF_STATE = "trainer_state.json"
_HF_NAME = re.compile(r"checkpoint-\d+")  # a Trainer's checkpoint directory, even before its state is written


@dataclass(frozen=True, slots=True)
class Completeness:
    """``kind``: "hf", "dcp", "sharded", "lightning", "model" (a file of a known format), "file"
    or "files" (a directory of no known kind); ``complete``: True, False or None (see the module
    docstring); ``reason`` says why."""

    kind: str
    complete: bool | None
    reason: str


def unit_kind(path: Path) -> str | None:
    """The kind of checkpoint ``path`` is, by its names alone (None: not a recognised kind)."""
    if path.is_dir():
        try:
            names = set(os.listdir(path))
        except OSError:
            return None
        if _HF_STATE in names or _HF_NAME.fullmatch(path.name):
            return "hf"
        if _DCP_METADATA in names or any(n.endswith(".distcp") for n in names):
            return "dcp"
        if any(n.endswith(".index.json") for n in names):
            return "sharded"
        return None
    return "lightning" if path.name.endswith(".ckpt") else None


def completeness(path: str | os.PathLike[str]) -> Completeness:
    """See the module docstring. Reads only headers, indexes and ``.metadata`` files."""
    p = Path(path)
    recognised = not p.is_dir() and _recognised(p)
    kind = unit_kind(p) or ("files" if p.is_dir() else "model" if recognised else "file")
    try:
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.is_symlink()) if p.is_dir() else [p]
    except OSError as exc:
        return Completeness(kind, False, f"cannot be listed: {exc.strerror or exc}")
    if not files:
        return Completeness(kind, False, "no files yet")
    verdict = _by_kind(kind, p, files)
    if verdict is not None and verdict.complete is False:
        return verdict
    for f in files:
        problem = _model_file_problem(f)
        if problem is not None:
            return Completeness(kind, False, f"{f.relative_to(p) if p.is_dir() else f.name}: {problem}")
    if verdict is None and recognised:
        return Completeness(kind, True, "the file parses as its format to its end")
    return verdict or Completeness(kind, None, "nothing in the format marks it complete")


def _recognised(f: Path) -> bool:
    try:
        with open(f, "rb") as fh:
            return detect(f.name, fh.read(HEAD_BYTES))[0] is not None
    except OSError:
        return False


def _by_kind(kind: str, root: Path, files: list[Path]) -> Completeness | None:
    if kind == "hf":
        state = root / _HF_STATE
        if not state.is_file():
            return Completeness(kind, False, f"no {_HF_STATE} yet: the Trainer writes it last")
        newest = max(files, key=lambda f: f.stat().st_mtime_ns)
        if newest != state and newest.stat().st_mtime_ns > state.stat().st_mtime_ns:
            return Completeness(kind, False, f"{newest.relative_to(root)} is newer than {_HF_STATE}: still being saved")
        sharded = _sharded(root, kind)
        return sharded or Completeness(kind, True, f"{_HF_STATE} written last")
    if kind == "dcp":
        return _dcp(root)
    if kind == "sharded":
        return _sharded(root, kind)
    return None


def _dcp(root: Path) -> Completeness:
    meta = root / _DCP_METADATA
    if not meta.is_file():
        return Completeness("dcp", False, "no .metadata yet: the coordinator has not finished")
    try:
        md = parse_dcp_metadata(meta.read_bytes())
    except (OSError, ValueError) as exc:
        return Completeness("dcp", False, f".metadata cannot be read: {exc}")
    for it in md.items:
        shard = root / it.path
        size = shard.stat().st_size if shard.is_file() else -1
        if size < it.start + it.length:
            return Completeness("dcp", False, f"{it.path} is {'missing' if size < 0 else f'{size} bytes'}: .metadata"
                                f" places {it.fqn!r} at {it.start}..{it.start + it.length}")
    return Completeness("dcp", True, f".metadata written, its {len(md.items)} items in place")


def _sharded(root: Path, kind: str) -> Completeness | None:
    for index in sorted(root.glob("*.index.json")):
        try:
            data = index.read_bytes()[:MAX_INDEX + 1]
        except OSError as exc:
            return Completeness(kind, False, f"{index.name} cannot be read: {exc.strerror or exc}")
        if not is_shard_index(index.name, data[:HEAD_BYTES]):
            continue
        try:
            weight_map = parse_shard_index(data)
        except ValueError as exc:
            return Completeness(kind, False, f"{index.name}: {exc}")
        problems = check_shards(weight_map, str(root), os.path.realpath(root))
        if problems:
            return Completeness(kind, False, f"{index.name}: {problems[0]}")
        return Completeness(kind, True, f"every shard {index.name} names is there and whole")
    return None


def _model_file_problem(f: Path) -> str | None:
    """Why a file of a recognised model format does not parse to its end (None: it does, or no
    format is recognised)."""
    fmt: str | None = None
    try:
        with open(f, "rb") as fh:
            head = fh.read(HEAD_BYTES)
            fmt, _warnings = detect(f.name, head)
            if fmt is None or fmt == "shard-index":
                return None
            fh.seek(0)
            parse(fmt, fh, os.fstat(fh.fileno()).st_size, read_data=False)
    except ValueError as exc:
        return f"not a whole {fmt} file yet ({exc})"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return None
