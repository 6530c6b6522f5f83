"""Model validation of a restored (or live) directory against a snapshot, by level.

1. **Integrity**: every file's size and SHA-256 match the manifest.
2. **Format**: model files parse and pass bounds checks, with the splitters' parsers in their
   strict mode (``weightvault.chunking``): safetensors (header length, JSON, known dtypes, offsets
   inside the data section, sizes equal to shape x element size, the data section covered
   exactly, without overlaps), ``.npy`` (header, no pickled objects, data exactly as long as the
   shape needs), ``.npz`` and PyTorch zip archives (member ranges, every member's CRC, each array
   header; ``<archive>/data.pkl`` present in a torch archive, every storage a tensor views present
   and long enough), GGUF (header, tensor infos, aligned offsets, data inside the file), DCP
   (each shard's archives; the ``.metadata``'s items against the shards beside it), HDF5 (h5py),
   a sharded checkpoint's ``*.index.json`` (every shard there, holding the tensors mapped to it).
   docs/FORMATS.md has the full list per format.
3. **Structure**: tensor names, shapes and dtypes of the file equal those of the file as it was
   backed up; missing, extra and changed tensors are listed. The backed-up file is read through
   its manifest node's blobs (``StoredFile``), loading only the blobs that hold the bytes the
   parser asks for (a safetensors header: its first chunk), never the whole file. No torch is
   needed; no code from the backup is ever executed (nothing is unpickled).
4. **Function**: a user-supplied check (``module:function`` from the user's environment) runs on
   the restored directory in its own process: e.g. a forward pass on a fixed input compared with a
   recorded output within a tolerance, an eval metric, determinism over N runs (``run_check``).

Each file gets the levels requested; a file that fails a level is not checked at higher ones.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from weightvault.chunking.base import SeekableReader
from weightvault.errors import IntegrityError, WeightvaultError
from weightvault.ops.formats import HEAD_BYTES, Structure, check_items, detect, parse, structure
from weightvault.ops.shard_index import check_shards
from weightvault.repository.blobcache import BlobCache
from weightvault.repository.manifest import Node, iter_manifest
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "LEVELS", "FileValidation", "StoredFile", "ValidationReport", "detect", "locate_check", "parse", "run_check",
    "structure", "validate_tree",
]

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
_HASH_READ = 4 * 1024 * 1024


@dataclass
class FileValidation:
    path: str
    format: str | None  # what its content is (``ops.formats.detect``), None for other files
    passed: int  # highest level passed (0: none)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # never fail validation (e.g. an unknown dtype)

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
    root: str = ""  # the directory validated as the source path (see ``resolve_root``)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files) and not self.check_problems

    @property
    def failed(self) -> list[FileValidation]:
        return [f for f in self.files if not f.ok]


class StoredFile(SeekableReader):
    """A backed-up file read through its manifest node's blobs: seekable and read-only, each read
    loading with ``load`` (a blob cache's, authenticated and hash-checked) only the blobs it
    touches; the last blob read is kept. Blob sizes come from ``repo``'s index, so nothing is
    loaded before the first read. IntegrityError if those sizes do not add up to the node's size
    or a blob is missing."""

    def __init__(self, repo: Repository, node: Node, load: Callable[[bytes], bytes]) -> None:
        super().__init__()
        self._load = load
        self._blobs = node.blobs
        sizes = [repo.lookup(b).blob.raw_length for b in node.blobs]
        self._starts = list(itertools.accumulate(sizes, initial=0))  # blob i covers starts[i]..starts[i+1]
        self._size = self._starts[-1]
        if self._size != node.size:
            shown = node.path.decode("utf-8", "replace")
            raise IntegrityError(f"{shown}: its blobs hold {self._size} bytes, the manifest says {node.size}")
        self._pos = 0
        self._last: tuple[int, bytes] = (-1, b"")

    def readinto(self, buffer: WriteableBuffer) -> int:
        out = memoryview(buffer).cast("B")
        n = 0
        while n < len(out) and self._pos < self._size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            data = self._blob(i)
            at = self._pos - self._starts[i]
            k = min(len(out) - n, len(data) - at)
            out[n:n + k] = data[at:at + k]
            n += k
            self._pos += k
        return n

    def _blob(self, i: int) -> bytes:
        if self._last[0] != i:
            data = self._load(self._blobs[i])
            if len(data) != self._starts[i + 1] - self._starts[i]:
                raise IntegrityError(f"blob {self._blobs[i].hex()} holds {len(data)} bytes, the index says"
                                     f" {self._starts[i + 1] - self._starts[i]}")
            self._last = (i, data)
        return self._last[1]


# -- the tree --------------------------------------------------------------------------------------
def _live(root: Path, snap: Snapshot, rel: bytes) -> Path:
    parts = rel.split(b"/")
    if len(snap.paths) == 1:
        parts = parts[1:]
    return Path(os.fsdecode(os.path.join(os.fsencode(root), *parts))) if parts else root


def resolve_root(root: Path, snap: Snapshot, files: list[Node]) -> Path:
    """The directory standing for the snapshot's source path: ``root`` itself (a live copy, or a
    restore with --swap), or ``root/<source name>`` when ``root`` is the target a restore wrote
    into. Of the two, the one where more of the snapshot's files exist (ties: ``root``)."""
    if len(snap.paths) != 1:
        return root  # several sources restore as <target>/<name>/...: root is the target
    inner = root / os.path.basename(snap.paths[0])
    if not inner.exists():
        return root
    here = sum(1 for n in files if _live(root, snap, n.path).is_file())
    there = sum(1 for n in files if _live(inner, snap, n.path).is_file())
    return inner if there > here else root


def _sha256(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_READ):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _check_env(root: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONSAFEPATH="1")
    here = os.getcwd()
    if not Path(here).resolve().is_relative_to(root.resolve()):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    return env


def locate_check(entry: str, root: Path, env: dict[str, str] | None = None, cwd: str | None = None) -> str | None:
    """Why the check ``module:function`` cannot run on ``root`` (not found, or inside the tree), or
    None. Cheap: a drill asks this before its restore, so a typo fails in a second, not after it."""
    module, sep, name = entry.partition(":")
    if not sep or not module or not name.isidentifier():
        raise ValueError(f"check {entry!r} is not of the form module:function")
    env = env if env is not None else _check_env(root)
    where = subprocess.run(
        [sys.executable, "-c", "import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]);"
         " print(s.origin if s and s.origin else '')", module],
        capture_output=True, text=True, cwd=cwd or tempfile.gettempdir(), env=env, timeout=60)
    origin = where.stdout.strip()
    if not origin:
        looked = env.get("PYTHONPATH") or "(none)"
        return (f"check module {module!r} cannot be found: looked in {looked} and the packages installed for"
                f" {sys.executable}; run from the directory holding {module.split('.')[0]}.py, or set"
                f" PYTHONPATH to it {where.stderr.strip()[-200:]}".rstrip())
    if Path(origin).resolve().is_relative_to(root.resolve()):
        return f"check module {module!r} lies inside the restored tree: refused (backup code is never run)"
    return None


def run_check(entry: str, root: Path, timeout: float = CHECK_TIMEOUT) -> list[str]:
    """Level 4: run the user's check ``module:function`` on ``root`` in a separate Python process
    (its own memory; a crash or a hang is a failure, not ours). The function gets the restored
    directory and returns nothing, True, or problems (a string or a list); it may load the
    weights with ``torch.load(..., weights_only=True)`` and compare a forward pass with recorded
    outputs. It is imported from the user's environment (the current directory, ``$PYTHONPATH``,
    the installed packages), never from the restored tree: the process runs outside it with
    ``PYTHONSAFEPATH`` set, the current directory is searched only if it is not inside the tree,
    and an entry point whose module lies inside the tree is refused."""
    env = _check_env(root)
    with tempfile.TemporaryDirectory(prefix="wv-check-") as cwd:
        problem = locate_check(entry, root, env, cwd)
        if problem is not None:
            return [problem]
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
    files = [n for n in iter_manifest(snap.tree, repo.load_blob) if n.type == "file"]
    root = resolve_root(root, snap, files)
    report = ValidationReport(snap.id, level, check=check if level >= 4 else None, root=str(root))
    cache = BlobCache(repo, 64 * 1024 * 1024)
    inside = os.path.realpath(root)
    for node in files:
        report.files.append(_validate_file(repo, snap, node, root, inside, level, hashed, cache))
    if level >= 4 and check is not None:
        if report.ok:
            report.check_problems = [f"level 4: {p}" for p in run_check(check, root)]
        else:
            report.check_problems = ["level 4: not run, lower levels failed"]
    return report


def _validate_file(repo: Repository, snap: Snapshot, node: Node, root: Path, inside: str, level: int,
                   hashed: bool, cache: BlobCache) -> FileValidation:
    """Levels 1..3 of one file (see the module docstring)."""
    shown = node.path.decode("utf-8", "replace")
    live = _live(root, snap, node.path)
    real = os.path.realpath(live)
    if real != inside and not real.startswith(inside.rstrip(os.sep) + os.sep):
        return FileValidation(shown, None, 0, [f"resolves outside {root} (through a symlink): not read"])
    try:
        with open(live, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        return FileValidation(shown, None, 0, [f"cannot be read: {exc.strerror or exc}"])
    fmt, warnings = detect(live.name, head)
    fv = FileValidation(shown, fmt, 0, warnings=warnings)
    if hashed:  # the caller compared the SHA-256 already: only a size change since then is seen
        digest, size = node.sha256, live.stat().st_size
    else:
        digest, size = _sha256(live)
    if size != node.size or digest != node.sha256:
        fv.problems.append(f"level 1: size {size} / SHA-256 differ from the snapshot's ({node.size} bytes)")
        if level == 1 or fmt is None:
            return fv
    else:
        fv.passed = 1
    if level < 2 or fmt is None:
        return fv
    try:
        with open(live, "rb") as f:
            found = parse(fmt, f, size)
    except ValueError as exc:
        fv.problems.append(f"level 2: {fmt}: {exc}")
        return fv
    fv.warnings += found.warnings
    if not found.checked:
        return fv
    if found.items:  # a DCP .metadata: its items must be where it says, in the shards beside it
        fv.problems += [f"level 2: dcp-metadata: {p}" for p in check_items(found.items, str(live.parent), inside)]
    if found.weight_map:  # a shard index: every shard there, holding the tensors mapped to it
        fv.problems += [f"level 2: shard-index: {p}" for p in check_shards(found.weight_map, str(live.parent), inside)]
    if fv.ok:
        fv.passed = 2
    if level < 3:
        return fv
    try:
        with StoredFile(repo, node, cache.load_blob) as stored:
            expected = parse(fmt, cast(BinaryIO, stored), node.size, read_data=False)
    except (ValueError, WeightvaultError) as exc:
        fv.problems.append(f"level 3: the backed-up file cannot be read as {fmt}: {exc}")
        return fv
    fv.problems += [f"level 3: {d}" for d in _compare(expected.tensors, found.tensors)]
    if fv.ok:
        fv.passed = 3
    return fv


def _compare(expected: Structure, found: Structure) -> list[str]:
    out = [f"tensor {n!r} is missing" for n in sorted(set(expected) - set(found))]
    out += [f"tensor {n!r} is not in the backed-up file" for n in sorted(set(found) - set(expected))]
    for n in sorted(set(expected) & set(found)):
        (d1, s1), (d2, s2) = expected[n], found[n]
        if (d1, s1) != (d2, s2):
            out.append(f"tensor {n!r} is {d2} {list(s2)}, was {d1} {list(s1)}")
    return out
