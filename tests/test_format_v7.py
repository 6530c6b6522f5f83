"""Format version 7: a DELTA blob's inner codec 4, a BF16 chunk stored as its F32 original (twice
its length) rounded to nearest even, XOR a residual (docs/FORMAT.md section 5). Written only into
version-7 repositories; stored blobs are decoded here by the independent decoder of
tests/test_format_v3.py (written from the spec). Older repositories keep getting none and stay
readable; older readers refuse a version-7 repository at open."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from test_format_v3 import AAD_BLOB, CAST, decode, master_key, open_env, parse_packs
from weightvault.api import Repository
from weightvault.codec import kernels
from weightvault.codec.cast import cast_inner, uncast
from weightvault.codec.compress import DELTA, decompress
from weightvault.errors import IntegrityError, UnsupportedFormatError
from weightvault.format.layout import FORMAT_VERSION


def _safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """A safetensors file; ``dtype`` "BF16" stores the arrays' uint16 bit patterns."""
    header: dict[str, object] = {}
    raws, off = [], 0
    for name, a in tensors.items():
        raw = a.astype("<u2" if dtype == "BF16" else "<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        raws.append(raw)
        off += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    write(path, len(head).to_bytes(8, "little") + head + b"".join(raws))


def _rne(a: np.ndarray) -> np.ndarray:
    """BF16 bits of F32 ``a`` rounded to nearest even, computed independently (in float64 terms:
    the nearest BF16 value, ties to the even mantissa)."""
    bits = a.astype("<f4").view("<u4").astype(np.int64)
    low, high = bits & 0xFFFF, bits >> 16
    up = (low > 0x8000) | ((low == 0x8000) & (high & 1 == 1))
    out: np.ndarray = ((high + up) & 0xFFFF).astype("<u2")
    return out


def _model(rng: np.random.Generator, scale: float = 0.05) -> dict[str, np.ndarray]:
    return {"emb": (rng.standard_normal((2048, 768)) * scale).astype(np.float32),  # 6 MiB: two F32 parts
            "proj": (rng.standard_normal((384, 384)) * scale).astype(np.float32),
            "bias": (rng.standard_normal(384) * scale).astype(np.float32)}  # small: grouped, never cast


def _checkpoint(d: Path, model: dict[str, np.ndarray], export: dict[str, np.ndarray] | None = None) -> None:
    _safetensors(d / "model.safetensors", model, "F32")
    _safetensors(d / "model-bf16.safetensors", export or {k: _rne(v) for k, v in model.items()}, "BF16")


def _deltas(repo_path: Path) -> tuple[dict[bytes, int], dict[bytes, bytes]]:
    """(inner codec byte per delta blob, every blob's plaintext decoded by the spec's decoder)."""
    keys = master_key(repo_path)
    blobs = parse_packs(repo_path, keys[0])
    seen: dict[bytes, bytes] = {}
    for bid in blobs:
        decode(blobs, keys, bid, seen)
    inner = {bid: open_env(keys[0], s.envelope, AAD_BLOB + bytes((s.btype, s.codec)) + bid)[32]
             for bid, s in blobs.items() if s.codec == DELTA}
    return inner, seen


def test_the_rounding_is_round_to_nearest_even_and_the_cast_is_exact_for_any_input() -> None:
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0, 1.00390625,
                        1.01171875, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8], dtype=np.float32)
    a = np.concatenate([special, (rng.standard_normal(100_000) * 10.0 ** rng.integers(-30, 30, 100_000))
                        .astype(np.float32), rng.integers(0, 2 ** 32, 10_000, dtype=np.uint64)
                        .astype(np.uint32).view(np.float32)])
    finite = np.isfinite(a)
    rounded = bytearray(2 * len(a))
    kernels.bf16_xor(bytes(2 * len(a)), a.tobytes(), rounded)  # XOR with zeros: the rounding itself
    assert np.array_equal(np.frombuffer(rounded, dtype="<u2")[finite], _rne(a)[finite])
    for export in (_rne(a), (a.view("<u4") >> 16).astype("<u2"), rng.integers(0, 2 ** 16, len(a), dtype=np.uint16)):
        data = export.astype("<u2").tobytes()  # rounded, truncated, or unrelated: always exact
        inner = cast_inner(data, a.tobytes(), 3)
        assert inner is not None
        payload = b"\x07" * 32 + bytes((CAST,)) + inner
        assert decompress(DELTA, payload, len(data), a.tobytes()) == data
    assert len(cast_inner(_rne(a).tobytes(), a.tobytes(), 3) or b"") < len(a) // 50  # rounded: nearly free


def test_malformed_casts_are_integrity_errors() -> None:
    a = np.linspace(-1, 1, 4096, dtype=np.float32)
    data = _rne(a).tobytes()
    payload = b"\x01" * 32 + bytes((CAST,)) + (cast_inner(data, a.tobytes(), 3) or b"")
    with pytest.raises(IntegrityError, match="twice"):
        decompress(DELTA, payload, len(data), a[:2048].tobytes())  # a base of the blob's own length
    with pytest.raises(IntegrityError):
        decompress(DELTA, payload[:40], len(data), a.tobytes())  # a truncated residual
    with pytest.raises(IntegrityError):
        uncast(bytearray(data), a.tobytes() + b"\0", len(data), "x")
    assert cast_inner(data[:-1], a.tobytes(), 3) is None and cast_inner(data, a.tobytes()[:-4], 3) is None


def test_a_bf16_export_next_to_its_f32_model_costs_almost_nothing(
        repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    assert FORMAT_VERSION == 7 and json.loads((repo_path / "config").read_bytes())["version"] == 7
    rng = np.random.default_rng(1)
    run = tmp_path / "run"
    model = _model(rng)
    _checkpoint(run / "checkpoint-10", model)
    first = repo.backup([run])
    f32_size = (run / "checkpoint-10" / "model.safetensors").stat().st_size
    bf16_size = (run / "checkpoint-10" / "model-bf16.safetensors").stat().st_size
    assert first.snapshot.summary["stored_bytes_added"] < f32_size * 0.97 + bf16_size * 0.05
    inner, _ = _deltas(repo_path)
    casts = [bid for bid, c in inner.items() if c == CAST]
    assert len(casts) == 3  # emb's two parts (1 Mi elements, then the rest) and proj; bias is grouped
    # the next checkpoint: weights drift, the export follows; its casts ride on the new F32 parts
    model = {k: (v + rng.standard_normal(v.shape).astype(np.float32) * 1e-4).astype(np.float32)
             for k, v in model.items()}
    _checkpoint(run / "checkpoint-20", model)
    repo.backup([run])
    inner, _ = _deltas(repo_path)
    assert sum(c == CAST for c in inner.values()) == 2 * len(casts)
    assert repo.check(read_data=True).ok
    repo.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(run)


def test_parts_line_up_only_for_exports_and_anything_else_is_stored_as_before(
        repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    """An export made by truncation (not rounding) does not pay as a cast: it falls back to its
    earlier version as an ordinary delta, and everything restores exactly."""
    rng = np.random.default_rng(2)
    run = tmp_path / "run"
    model = _model(rng)
    _checkpoint(run / "checkpoint-10", model, {k: (v.view("<u4") >> 16).astype("<u2") for k, v in model.items()})
    repo.backup([run])
    inner, _ = _deltas(repo_path)
    assert CAST not in inner.values()
    repo.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(run)


def test_a_version_6_repository_gets_no_casts_and_a_version_6_reader_refuses_version_7(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "repo"
    Repository.init(path, PASSWORD, kdf=FAST_KDF)
    doc = json.loads((path / "config").read_bytes())
    (path / "config").write_text(json.dumps({**doc, "version": 6}))  # as a format-6 weightvault made it
    repo = Repository.open(path, PASSWORD)
    run = tmp_path / "run"
    _checkpoint(run / "checkpoint-10", _model(np.random.default_rng(3)))
    repo.backup([run])
    inner, _ = _deltas(path)
    assert CAST not in inner.values() and json.loads((path / "config").read_bytes())["version"] == 6
    repo.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(run)

    import weightvault.repository.config as config

    new = tmp_path / "new"
    Repository.init(new, PASSWORD, kdf=FAST_KDF)
    monkeypatch.setattr(config, "FORMAT_VERSION", 6)  # a weightvault that reads versions 1..6
    with pytest.raises(UnsupportedFormatError, match=r"1\.\.6"):
        Repository.open(new, PASSWORD)
    assert Repository.open(path, PASSWORD).id == repo.id  # the version-6 repository still opens


def test_prune_keeps_the_f32_base_of_a_kept_export_and_copy_keeps_it_exact(
        repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    """The export unchanged while the F32 model moves on: after the first snapshot is forgotten
    and pruned, the kept export's base (the old F32 parts, now referenced by nothing else) is
    still there. A copy into a second repository restores identically."""
    rng = np.random.default_rng(4)
    run = tmp_path / "run"
    ckpt = run / "checkpoint-10"
    model = _model(rng)
    _checkpoint(ckpt, model)
    first = repo.backup([run]).snapshot
    _safetensors(ckpt / "model.safetensors", _model(rng), "F32")  # the F32 file replaced, the export not
    repo.backup([run])
    repo.forget([first.id])
    repo.prune()
    assert repo.check(read_data=True).ok
    repo.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(run)
    other = Repository.init(tmp_path / "other", PASSWORD, kdf=FAST_KDF)
    repo.copy_to(other)
    assert other.check(read_data=True).ok
    other.restore("latest", tmp_path / "out2", verify=True)
    assert tree_digest(tmp_path / "out2" / "run") == tree_digest(run)
