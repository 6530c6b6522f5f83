"""Model validation of a restored (or live) directory against a snapshot, by level.

1. **Integrity**: every file's size and SHA-256 match the manifest.
2. **Format**: model files parse and pass bounds checks: safetensors (header length, JSON, known
   dtypes, offsets inside the data section, sizes equal to shape x element size, the data section
   covered exactly, without overlaps), ``.npy`` (header, no pickled objects, enough data), ``.npz``
   and PyTorch zip archives (every member's CRC; ``data.pkl`` present in a torch archive), GGUF
   (header, tensor infos, data inside the file).
3. **Structure**: tensor names, shapes and dtypes of the file equal those of the file as it was
   backed up (read back from the repository); missing, extra and changed tensors are listed. No
   torch is needed; no code from the backup is ever executed (nothing is unpickled).
4. **Function**: a user-supplied check (``module:function`` from the user's environment) runs on
   the restored directory in its own process: e.g. a forward pass on a fixed input compared with a
   recorded output within a tolerance, an eval metric, determinism over N runs (``run_check``).

Each file gets the levels requested; a file that fails a level is not checked at higher ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from weightvault.chunking.gguf import gguf_tensors
from weightvault.chunking.registry import DTYPE_SIZES
from weightvault.errors import WeightvaultError
from weightvault.repository.manifest import Node, iter_manifest
from weightvault.repository.repo import PlaintextCache, Repository
from weightvault.repository.snapshots import Snapshot

__all__ = ["LEVELS", "FileValidation", "ValidationReport", "model_format", "structure", "validate_tree"]

LEVELS = {1: "integrity", 2: "format", 3: "structure", 4: "function"}
CHECK_TIMEOUT = 1800.0  # seconds a level-4 check may run
_RUNNER = """
import importlib, sys
from pathlib import Path
module, _, name = sys.argv[1].partition(":")
fn = getattr(importlib.import_module(module), name)
result = fn(Path(sys.argv[2]))
problems = [result] if isinstance(result, str) else list(result or []) if not isinstance(result, bool) else (
    [] if result else ["the check returned False"])
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
"""
Structure = dict[str, tuple[str, tuple[int, ...]]]  # tensor name -> (dtype, shape)
_HASH_READ = 4 * 1024 * 1024


@dataclass
class FileValidation:
    path: str
    format: str | None
    passed: int  # highest level passed (0: none)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ValidationReport:
    snapshot: str
    level: int
    files: list[FileValidation] = field(default_factory=list)
    check: str | None = None  # level 4: the entry point that ran
    check_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files) and not self.check_problems

    @property
    def failed(self) -> list[FileValidation]:
        return [f for f in self.files if not f.ok]


def model_format(name: str, head: bytes) -> str | None:
    """The model file format, from the name and the first bytes; None for other files."""
    lower = name.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(".npy"):
        return "npy"
    if lower.endswith(".npz"):
        return "npz"
    if lower.endswith(".gguf") or head[:4] == b"GGUF":
        return "gguf"
    if lower.endswith((".pt", ".pth", ".bin", ".ckpt")) and head[:4] == b"PK\x03\x04":
        return "torch-zip"
    return None


# -- level 2 and 3: parse a file -------------------------------------------------------------------
def structure(fmt: str, f: BinaryIO, size: int) -> Structure:
    """Parse ``f`` (``size`` bytes) as ``fmt`` with bounds checks; ValueError naming the problem.
    Returns the tensors' dtypes and shapes (empty when the format has none we can read without
    unpickling: torch zip)."""
    parser: dict[str, Callable[[BinaryIO, int], Structure]] = {
        "safetensors": _safetensors, "npy": _npy_file, "npz": _npz, "gguf": _gguf, "torch-zip": _torch_zip,
    }
    return parser[fmt](f, size)


def _safetensors(f: BinaryIO, size: int) -> Structure:
    head = f.read(8)
    if len(head) < 8:
        raise ValueError("file is shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8 or n > 100_000_000:
        raise ValueError(f"header length {n} runs past the end of the file ({size} bytes)")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    data_len = size - 8 - n
    out: Structure = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise ValueError(f"tensor {name!r}: bad shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ValueError(f"tensor {name!r}: bad data_offsets")
        b, e = offsets
        if not 0 <= b <= e <= data_len:
            raise ValueError(f"tensor {name!r}: bytes {b}..{e} lie outside the data section ({data_len} bytes)")
        want = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[str(dtype)]
        if e - b != want:
            raise ValueError(f"tensor {name!r}: {e - b} bytes for shape {shape} of {dtype} ({want} expected)")
        spans.append((b, e, name))
        out[name] = (str(dtype), tuple(shape))
    pos = 0
    for b, e, name in sorted(spans):
        if b != pos:
            raise ValueError(f"tensor {name!r} starts at {b}: " + ("overlaps" if b < pos else "a gap precedes it"))
        pos = e
    if pos != data_len:
        raise ValueError(f"the data section has {data_len} bytes, the tensors cover {pos} (truncated or padded)")
    return out


def _npy(f: BinaryIO, size: int, name: str = "") -> Structure:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, EOFError, SyntaxError) as exc:
        raise ValueError(f"{name or 'array'}: bad .npy header: {exc}") from None
    if dtype.hasobject:
        raise ValueError(f"{name or 'array'}: holds Python objects (pickled data), refused")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = size - f.tell()
    if have < need:
        raise ValueError(f"{name or 'array'}: {have} data bytes for shape {shape} of {dtype.str} ({need} needed)")
    return {name: (dtype.str, tuple(int(d) for d in shape))}


def _npy_file(f: BinaryIO, size: int) -> Structure:
    return _npy(f, size)


def _zip(f: BinaryIO) -> zipfile.ZipFile:
    try:
        z = zipfile.ZipFile(f)
        bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"not a complete zip archive: {exc}") from None
    if bad is not None:
        raise ValueError(f"zip member {bad!r} fails its CRC check")
    return z


def _npz(f: BinaryIO, size: int) -> Structure:
    z = _zip(f)
    out: Structure = {}
    for info in z.infolist():
        if info.filename.endswith(".npy"):
            data = z.read(info)
            out.update(_npy(io.BytesIO(data), len(data), info.filename[:-4]))
    return out


def _torch_zip(f: BinaryIO, size: int) -> Structure:
    z = _zip(f)
    if not any(n.endswith("data.pkl") for n in z.namelist()):
        raise ValueError("a PyTorch archive without data.pkl")
    return {}  # tensor shapes live in the pickle, which is never executed here


def _gguf(f: BinaryIO, size: int) -> Structure:
    return {name: (f"ggml-{gtype}", (numel,)) for name, gtype, numel in gguf_tensors(f, size)}


# -- the tree --------------------------------------------------------------------------------------
def _live(root: Path, snap: Snapshot, rel: bytes) -> Path:
    parts = rel.split(b"/")
    if len(snap.paths) == 1:
        parts = parts[1:]
    return Path(os.fsdecode(os.path.join(os.fsencode(root), *parts))) if parts else root


def _sha256(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_READ):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _original(cache: PlaintextCache, node: Node, work: Path) -> Path:
    """The file as backed up, rebuilt from the repository into ``work`` (blobs hash-checked)."""
    fd, name = tempfile.mkstemp(dir=work)
    with os.fdopen(fd, "wb") as out:
        for b in node.blobs:
            out.write(cache.load(b))
    return Path(name)


def run_check(entry: str, root: Path, timeout: float = CHECK_TIMEOUT) -> list[str]:
    """Level 4: run the user's check ``module:function`` on ``root`` in a separate Python process
    (its own memory; a crash or a hang is a failure, not ours). The function gets the restored
    directory and returns nothing, True, or problems (a string or a list); it may load the
    weights with ``torch.load(..., weights_only=True)`` and compare a forward pass with recorded
    outputs. It is imported from the user's environment, never from the restored tree: the
    process runs outside it with ``PYTHONSAFEPATH`` set, and an entry point whose module lies
    inside the tree is refused."""
    module, sep, name = entry.partition(":")
    if not sep or not module or not name.isidentifier():
        raise ValueError(f"check {entry!r} is not of the form module:function")
    env = dict(os.environ, PYTHONSAFEPATH="1")
    with tempfile.TemporaryDirectory(prefix="wv-check-") as cwd:
        where = subprocess.run(
            [sys.executable, "-c", "import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]);"
             " print(s.origin if s and s.origin else '')", module],
            capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
        origin = where.stdout.strip()
        if not origin:
            return [f"check module {module!r} cannot be found: {where.stderr.strip()[-300:]}"]
        if Path(origin).resolve().is_relative_to(root.resolve()):
            return [f"check module {module!r} lies inside the restored tree: refused (backup code is never run)"]
        try:
            proc = subprocess.run([sys.executable, "-c", _RUNNER, entry, str(root)], capture_output=True, text=True,
                                  cwd=cwd, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [f"check {entry} did not finish within {timeout:.0f} s"]
    if proc.returncode == 0:
        return []
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-20:] or [f"check {entry} failed (exit {proc.returncode})"]


def validate_tree(repo: Repository, snap: Snapshot, root: Path, level: int,
                  check: str | None = None, *, hashed: bool = False) -> ValidationReport:
    """Validate the files of ``root`` (standing for the snapshot's source path) at ``level``;
    level 4 runs ``check`` (``run_check``) once levels 1-3 passed.

    ``hashed``: the caller has just checked every file of ``root`` against this snapshot's
    manifest, size and SHA-256 (a restore with ``verify=True``, as a drill makes), so level 1
    compares sizes only instead of hashing every file again. Leave it False for a tree that
    anything else may have written since.
    """
    report = ValidationReport(snap.id, level, check=check if level >= 4 else None)
    cache = PlaintextCache(repo, 64 * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix=".wv-validate-", dir=root if root.is_dir() else None) as tmp:
        for node in iter_manifest(snap.tree, repo.load_blob):
            if node.type != "file":
                continue
            shown = node.path.decode("utf-8", "replace")
            live = _live(root, snap, node.path)
            try:
                with open(live, "rb") as f:
                    head = f.read(16)
            except OSError as exc:
                report.files.append(FileValidation(shown, None, 0, [f"cannot be read: {exc.strerror or exc}"]))
                continue
            fmt = model_format(live.name, head)
            fv = FileValidation(shown, fmt, 0)
            report.files.append(fv)
            if hashed:  # the caller compared the SHA-256 already: only a size change since then is seen
                digest, size = node.sha256, live.stat().st_size
            else:
                digest, size = _sha256(live)
            if size != node.size or digest != node.sha256:
                fv.problems.append(f"level 1: size {size} / SHA-256 differ from the snapshot's ({node.size} bytes)")
                if level == 1 or fmt is None:
                    continue
            else:
                fv.passed = 1
            if level < 2 or fmt is None:
                continue
            try:
                with open(live, "rb") as f:
                    found = structure(fmt, f, size)
            except ValueError as exc:
                fv.problems.append(f"level 2: {fmt}: {exc}")
                continue
            if fv.ok:
                fv.passed = 2
            if level < 3:
                continue
            try:
                original = _original(cache, node, Path(tmp))
                with open(original, "rb") as f:
                    expected = structure(fmt, f, node.size)
                original.unlink()
            except (ValueError, WeightvaultError) as exc:
                fv.problems.append(f"level 3: the backed-up file cannot be read as {fmt}: {exc}")
                continue
            diffs = _compare(expected, found)
            fv.problems += [f"level 3: {d}" for d in diffs]
            if fv.ok:
                fv.passed = 3
    if level >= 4 and check is not None:
        if report.ok:
            report.check_problems = [f"level 4: {p}" for p in run_check(check, root)]
        else:
            report.check_problems = ["level 4: not run, lower levels failed"]
    return report


def _compare(expected: Structure, found: Structure) -> list[str]:
    out = [f"tensor {n!r} is missing" for n in sorted(set(expected) - set(found))]
    out += [f"tensor {n!r} is not in the backed-up file" for n in sorted(set(found) - set(expected))]
    for n in sorted(set(expected) & set(found)):
        (d1, s1), (d2, s2) = expected[n], found[n]
        if (d1, s1) != (d2, s2):
            out.append(f"tensor {n!r} is {d2} {list(s2)}, was {d1} {list(s1)}")
    return out
