"""Checkpoint deltas (codec 3, format v3): codec round trips, base selection, chains across many
snapshots, the durability rule, damaged chains and the v2 compatibility rule."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.codec.compress import BYTEPLANE, DELTA, RAW, ZSTD, compress_best, decompress, delta_base
from weightvault.codec.floatplanes import FLOAT_ELEMENT_SIZES
from weightvault.errors import IntegrityError, WeightvaultError
from weightvault.format.layout import decode_pack_header, encode_pack_header
from weightvault.ops.delta_bases import series_key
from weightvault.repository.index import decode_index_file, encode_index_file
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.repo import DeltaBase
from weightvault.repository.repo import Repository as Engine
from weightvault.types import BlobType, PackedBlob

DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": None, "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "<u1"}


# -- helpers -------------------------------------------------------------------------------------
def _tensor_bytes(dtype: str, values: np.ndarray) -> bytes:
    if dtype == "BF16":
        words = values.astype("<f4").view("<u4")
        return (words >> 16).astype("<u2").tobytes()
    return values.astype(DTYPES[dtype]).tobytes()


def safetensors_bytes(tensors: dict[str, tuple[str, np.ndarray]]) -> bytes:
    meta: dict[str, object] = {}
    blobs: list[bytes] = []
    pos = 0
    for name, (dtype, values) in tensors.items():
        raw = _tensor_bytes(dtype, values)
        meta[name] = {"dtype": dtype, "shape": list(values.shape), "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    head = json.dumps(meta).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


class Model:
    """A tiny 'model' whose weights drift a little every training step, like fine-tuning."""

    def __init__(self, seed: int = 1, layers: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.w = {"embed.weight": ("F32", self.rng.normal(0, 0.05, (512, 512)).astype(np.float32))}
        for i in range(layers):
            self.w[f"layer.{i}.weight"] = ("F32", self.rng.normal(0, 0.05, (384, 384)).astype(np.float32))
            self.w[f"layer.{i}.bias"] = ("F32", self.rng.normal(0, 0.01, 384).astype(np.float32))
        self.w["head.weight"] = ("BF16", self.rng.normal(0, 0.05, (256, 512)).astype(np.float32))

    def step(self, lr: float = 1e-4) -> None:
        for name, (dtype, v) in self.w.items():
            v += (lr * self.rng.standard_normal(v.shape)).astype(np.float32)
            self.w[name] = (dtype, v)

    def save(self, path: Path) -> bytes:
        return write(path, safetensors_bytes(self.w)).read_bytes()


def back_up_versions(repo: Repository, src: Path, n: int, model: Model | None = None) -> bytes:
    """Train ``model`` (default: a fresh one) a step before each of ``n`` backups of ``src``, with
    the model rewritten in place at ``src/model.safetensors``; returns the last version's bytes."""
    model = model or Model()
    data = b""
    for _ in range(n):
        model.step()
        data = model.save(src / "model.safetensors")
        repo.backup([src])
    return data


def engine(path: Path) -> Engine:
    return Engine.open(LocalBackend(path), PASSWORD.encode())


def make_repo(path: Path, **config: int) -> Repository:
    Engine.init(LocalBackend(path), PASSWORD.encode(), kdf=FAST_KDF, **config)
    return Repository.open(path, PASSWORD)


def delta_blobs(path: Path) -> dict[bytes, bytes]:
    """delta blob id -> base id, as the index says."""
    eng = engine(path)
    return {e.blob.blob_id: e.blob.base for e in eng.index.entries() if e.blob.codec == DELTA and e.blob.base}


def max_depth(path: Path) -> int:
    eng = engine(path)
    return max((eng.delta_depth(e.blob.blob_id) or 0) for e in eng.index.entries())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the codec -----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(sorted(DTYPES)),
    n=st.integers(1, 5000),
    extra=st.integers(0, 7),
    changed=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_delta_round_trips_every_dtype_and_odd_size(dtype: str, n: int, extra: int, changed: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = _tensor_bytes(dtype, rng.normal(0, 0.05, n)) + rng.bytes(extra)
    arr = bytearray(base)
    for i in rng.choice(len(arr), size=int(len(arr) * changed), replace=False) if arr else []:
        arr[i] ^= int(rng.integers(1, 256))
    data = bytes(arr)
    base_id = hashlib.sha256(base).digest()
    codec, payload = compress_best(data, 3, dtype, allow_byteplane=True, base=(base_id, base))
    assert decompress(codec, payload, len(data), base if codec == DELTA else None) == data
    assert len(payload) <= max(len(zstandard.ZstdCompressor(level=3).compress(data)), len(data))
    if codec == DELTA:
        assert delta_base(payload) == base_id


def test_delta_is_chosen_for_a_slightly_changed_tensor_and_not_for_an_unrelated_one() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.05, 256 * 1024).astype(np.float32)
    base = w.tobytes()
    near = (w + (1e-5 * rng.standard_normal(w.shape)).astype(np.float32)).tobytes()
    far = rng.normal(0, 0.05, w.size).astype(np.float32).tobytes()
    bid = b"\x01" * 32
    codec, payload = compress_best(near, 3, "F32", allow_byteplane=True, base=(bid, base))
    standalone = compress_best(near, 3, "F32", allow_byteplane=True)[1]
    assert codec == DELTA and len(payload) < 0.9 * len(standalone)
    assert compress_best(far, 3, "F32", allow_byteplane=True, base=(bid, base))[0] in (BYTEPLANE, ZSTD, RAW)
    # an identical-length base of different length is ignored (no delta possible)
    assert compress_best(near, 3, "F32", allow_byteplane=True, base=(bid, base[:-4]))[0] != DELTA


def test_a_large_chunk_is_coded_once_the_way_its_sample_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large chunk whose sample says the delta pays is XOR-coded in full and never standalone;
    one whose sample says it does not is coded standalone only (its XOR is never coded in full);
    and when the full delta disappoints the sample's prediction, the standalone coding is
    computed too and the smaller kept."""
    from weightvault.codec import floatplanes

    full: list[str] = []
    real_encode = floatplanes.encode

    def counted(d: bytes | memoryview, k: int, level: int = 3, rotate: bool = True,
                base: bytes | memoryview | None = None, mode: int = 0) -> bytes:
        if len(d) > 1024 * 1024:
            full.append("delta" if not rotate else "alone")
        return real_encode(d, k, level, rotate, base, mode)

    monkeypatch.setattr(floatplanes, "encode", counted)
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.05, 1024 * 1024).astype(np.float32)  # 4 MiB
    base, bid = w.tobytes(), b"\x01" * 32
    near = w.copy()
    near[::97] += np.float32(1e-4)  # a few elements change a little
    codec, payload = compress_best(near.tobytes(), 3, "F32", allow_byteplane=True, base=(bid, base))
    assert codec == DELTA and full == ["delta"]
    assert decompress(codec, payload, len(base), base) == near.tobytes()
    full.clear()
    far = rng.normal(0, 0.05, w.size).astype(np.float32).tobytes()
    assert compress_best(far, 3, "F32", allow_byteplane=True, base=(bid, base))[0] == BYTEPLANE
    assert full == ["alone"]
    full.clear()
    # only the middle (where the sample is) matches the base; elsewhere the base is noise
    lo, hi = w.size // 2 - 64 * 1024, w.size // 2 + 64 * 1024
    noisy = np.frombuffer(rng.bytes(len(base)), dtype=np.float32).copy()
    noisy[lo:hi] = w[lo:hi]
    codec, payload = compress_best(base, 3, "F32", allow_byteplane=True, base=(bid, noisy.tobytes()))
    assert full == ["delta", "alone"]
    assert codec == BYTEPLANE and payload == real_encode(base, 4, 3)


def test_delta_decode_rejects_bad_inputs() -> None:
    base = np.arange(1024, dtype=np.float32).tobytes()
    data = (np.arange(1024, dtype=np.float32) + 0.001).tobytes()
    codec, payload = compress_best(data, 3, "F32", allow_byteplane=True, base=(b"\x02" * 32, base))
    assert codec == DELTA
    with pytest.raises(IntegrityError, match="needs the plaintext of its base"):
        decompress(DELTA, payload, len(data))
    with pytest.raises(IntegrityError, match="has 4092 bytes"):
        decompress(DELTA, payload, len(data), base[:-4])
    with pytest.raises(IntegrityError, match="inner codec 7; expected 1, 2, 3 or 4"):
        decompress(DELTA, payload[:32] + b"\x07" + payload[33:], len(data), base)
    with pytest.raises(IntegrityError, match="shorter than its header"):
        delta_base(b"\x00" * 20)


# -- format structures ---------------------------------------------------------------------------
def test_pack_header_and_index_rows_carry_the_base() -> None:
    a = PackedBlob(b"\x0a" * 32, BlobType.DATA, BYTEPLANE, 0, 100, 400)
    d = PackedBlob(b"\x0d" * 32, BlobType.DATA, DELTA, 100, 50, 400, base=b"\x0a" * 32)
    raw = encode_pack_header([a, d])
    assert len(raw) == 44 + 76
    assert struct.unpack_from("<H", raw, 44 + 2)[0] == 1  # FLAG_BASE on the delta entry only
    assert decode_pack_header(raw) == [a, d]
    with pytest.raises(IntegrityError, match="inside a base"):
        decode_pack_header(raw[:-5])
    with pytest.raises(IntegrityError, match="inside an entry"):
        decode_pack_header(raw[:50])


def test_index_file_round_trips_bases(repo: Repository, repo_path: Path) -> None:
    key = engine(repo_path).key
    a = PackedBlob(b"\x0a" * 32, BlobType.DATA, BYTEPLANE, 0, 100, 400)
    d = PackedBlob(b"\x0d" * 32, BlobType.DATA, DELTA, 100, 50, 400, base=b"\x0a" * 32)
    name, stored = encode_index_file(key, {"p" * 64: [a, d]})
    assert decode_index_file(key, name, stored) == {"p" * 64: [a, d]}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"run/checkpoint-500/model.safetensors", (b"run/checkpoint-#/model.safetensors", (500,))),
        (b"run/step-00040/model-00001-of-00002.safetensors",
         (b"run/step-#/model-00001-of-00002.safetensors", (40,))),
        (b"run/epoch3-step1000/opt.pt", (b"run/epoch#-step#/opt.pt", (3, 1000))),
        (b"run/model_step40.pt", (b"run/model_step#.pt", (40,))),
        (b"run/model.safetensors", None),
    ],
)
def test_series_key(path: bytes, expected: object) -> None:
    assert series_key(path) == expected


# -- backups ---------------------------------------------------------------------------------------
def test_chain_across_20_snapshots_restores_exactly(tmp_path: Path) -> None:
    """A model file rewritten in place 20 times: each backup deltas against the parent snapshot's
    version, chains stay within delta_max_depth, and every snapshot restores bit-identical."""
    repo_path = tmp_path / "repo"
    repo = make_repo(repo_path)
    model = Model()
    src = tmp_path / "run"
    digests = []
    for step in range(20):
        model.step()
        model.save(src / "model.safetensors")
        write(src / "trainer_state.json", json.dumps({"step": step}).encode())
        snap = repo.backup([src], tags=[f"step={step}"]).snapshot
        digests.append((snap.id, sha(src / "model.safetensors")))
    deltas = delta_blobs(repo_path)
    assert len(deltas) >= 19 * 3  # every later version of every big tensor is a delta
    depth = max_depth(repo_path)
    assert 2 <= depth <= 8  # chains are bounded by the default delta_max_depth
    for snap_id, digest in digests:
        out = tmp_path / "out" / snap_id
        repo.restore(snap_id, out, verify=True)
        assert sha(out / "run" / "model.safetensors") == digest
    assert repo.check(read_data=True).ok
    # deltas really save space: standalone, these random-normal weights store at ~0.83 of raw
    stored = sum(p.stat().st_size for p in (repo_path / "data").rglob("*") if p.is_file())
    assert stored < 20 * 0.7 * (src / "model.safetensors").stat().st_size


def test_delta_max_depth_bounds_chains_and_zero_disables(tmp_path: Path) -> None:
    for depth_limit in (0, 3):
        repo_path = tmp_path / f"repo{depth_limit}"
        repo = make_repo(repo_path, delta_max_depth=depth_limit)
        model = Model()
        for _ in range(8):
            model.step()
            model.save(tmp_path / "run" / "model.safetensors")
            repo.backup([tmp_path / "run"])
        if depth_limit == 0:
            assert delta_blobs(repo_path) == {}
        else:
            assert max_depth(repo_path) == depth_limit
        repo.restore("latest", tmp_path / "out" / str(depth_limit))
        assert sha(tmp_path / "out" / str(depth_limit) / "run" / "model.safetensors") == sha(
            tmp_path / "run" / "model.safetensors"
        )


def test_at_the_depth_limit_a_checkpoint_deltas_against_an_older_one_within_it(tmp_path: Path) -> None:
    """Checkpoints 1-3 make chains of depth 2 (the limit); checkpoint 4 is coded against
    checkpoint 2 (depth 1) rather than stored alone, so its chains stay within the limit and the
    run keeps its deltas (``delta_bases.SKIP_BACK``)."""
    repo_path = tmp_path / "repo"
    repo = make_repo(repo_path, delta_max_depth=2, pack_size=64 * 1024)
    model = Model(layers=10)
    src = tmp_path / "run"
    for step in (1, 2, 3, 4):
        model.step()
        model.save(src / f"checkpoint-{step}" / "model.safetensors")
        repo.backup([src])
    eng = engine(repo_path)
    snap = repo.snapshots()[-1]
    nodes = {n.path.split(b"/")[1]: n for n in iter_manifest(snap.tree, eng.load_blob) if n.type == "file"}
    deltas = delta_blobs(repo_path)
    tensor_blobs = [b for b, t in zip(nodes[b"checkpoint-4"].blobs, nodes[b"checkpoint-4"].tensors or [], strict=True)
                    if t is not None and t[2] is not None]
    on_two = [b for b in tensor_blobs if deltas.get(b) in set(nodes[b"checkpoint-2"].blobs)]
    assert len(on_two) >= len(tensor_blobs) // 2  # the rest: parts whose checkpoint 3 was not at the limit
    assert all((eng.delta_depth(b) or 0) <= 2 for b in tensor_blobs)
    assert max_depth(repo_path) == 2
    repo.restore("latest", tmp_path / "out", verify=True)
    assert sha(tmp_path / "out" / "run" / "checkpoint-4" / "model.safetensors") == sha(
        src / "checkpoint-4" / "model.safetensors")


def test_checkpoints_of_one_run_delta_against_the_numerically_previous_one(tmp_path: Path) -> None:
    """Within a snapshot a checkpoint uses the newest earlier one read before it; across snapshots
    checkpoint-2000 follows checkpoint-1500 (by number: as strings, "500" would sort last)."""
    repo_path = tmp_path / "repo"
    # small packs and more chunks per file than the backup keeps in flight: the chunks of an
    # earlier checkpoint are durable (a condition for using them as bases) when the next is read
    repo = make_repo(repo_path, pack_size=64 * 1024)
    model = Model(layers=10)
    src = tmp_path / "run"
    for step in (500, 1000, 1500):
        model.step()
        model.save(src / f"checkpoint-{step}" / "model.safetensors")
    repo.backup([src])
    model.step()
    model.save(src / "checkpoint-2000" / "model.safetensors")
    snap = repo.backup([src]).snapshot
    eng = engine(repo_path)
    nodes = {n.path: n for n in iter_manifest(snap.tree, eng.load_blob) if n.type == "file"}
    blobs_of = {p.split(b"/")[1]: set(n.blobs) for p, n in nodes.items()}
    assert all(n.tensors is not None for n in nodes.values())
    deltas = delta_blobs(repo_path)
    # walk order is 1000, 1500, 2000, 500 (names sort as bytes): 1000 and 500 have no earlier
    # checkpoint read before them in the first backup
    assert not (blobs_of[b"checkpoint-1000"] | blobs_of[b"checkpoint-500"]) & set(deltas)
    for later, earlier in ((b"checkpoint-1500", b"checkpoint-1000"), (b"checkpoint-2000", b"checkpoint-1500")):
        bases = {deltas[b] for b in blobs_of[later] if b in deltas}
        assert bases and bases <= blobs_of[earlier], later
    repo.restore("latest", tmp_path / "out", verify=True)
    for step in (500, 1000, 1500, 2000):
        rel = Path("run") / f"checkpoint-{step}" / "model.safetensors"
        assert sha(tmp_path / "out" / rel) == sha(tmp_path / rel)


def test_new_checkpoint_deltas_against_the_parent_snapshots_checkpoint(tmp_path: Path) -> None:
    """Incremental: back up after each checkpoint; the new one uses the parent's previous one, and
    the base is read from the repository when the old checkpoint is gone from disk."""
    repo_path = tmp_path / "repo"
    repo = make_repo(repo_path)
    model = Model()
    src = tmp_path / "run"
    model.step()
    model.save(src / "step-00010" / "model.safetensors")
    repo.backup([src])
    model.step()
    expected = model.save(src / "step-00020" / "model.safetensors")
    shutil.rmtree(src / "step-00010")  # rotated away: the base must come from the repository
    repo.backup([src])
    assert len(delta_blobs(repo_path)) >= 3
    repo.restore("latest", tmp_path / "out")
    assert (tmp_path / "out" / "run" / "step-00020" / "model.safetensors").read_bytes() == expected


def test_a_base_is_used_only_when_durable_or_in_the_same_pack(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    make_repo(repo_path)
    eng = engine(repo_path)
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.05, 64 * 1024).astype(np.float32)
    versions = [(w + np.float32(i * 1e-6)).tobytes() for i in range(4)]
    loads: list[int] = []

    def loader(i: int) -> DeltaBase:
        def load() -> bytes:
            loads.append(i)
            return versions[i]

        return DeltaBase(eng.key.blob_id(versions[i]), load)

    # 1. the base waits in the open pack: the dependant joins the same pack, so both become durable together
    eng.save_blob(BlobType.DATA, versions[0], dtype="F32")
    v1, _ = eng.save_blob(BlobType.DATA, versions[1], dtype="F32", delta=loader(0))
    eng.flush()
    e0, e1 = eng.index.get(eng.key.blob_id(versions[0])), eng.index.get(v1)
    assert e0 is not None and e1 is not None and e1.blob.codec == DELTA and e1.pack_id == e0.pack_id
    # 2. the base's pack is sealed but not written yet (another thread writing it): not used
    eng.save_blob(BlobType.DATA, versions[2], dtype="F32")
    sealed = eng._packers.pop(BlobType.DATA)
    loads.clear()
    v3, _ = eng.save_blob(BlobType.DATA, versions[3], dtype="F32", delta=loader(2))
    assert loads == []
    eng._write_pack(sealed)
    eng.flush()
    e3 = eng.index.get(v3)
    assert e3 is not None and e3.blob.codec != DELTA
    # 3. an unknown base is never used
    other = rng.normal(0, 0.05, 64 * 1024).astype(np.float32).tobytes()
    ghost = DeltaBase(b"\x07" * 32, lambda: other)
    vid, _ = eng.save_blob(BlobType.DATA, (w + np.float32(9e-6)).tobytes(), dtype="F32", delta=ghost)
    eng.flush()
    entry = eng.index.get(vid)
    assert entry is not None and entry.blob.codec != DELTA
    fresh = engine(repo_path)
    for data in versions:
        assert fresh.load_blob(fresh.key.blob_id(data)) == data


def test_missing_base_is_reported_by_restore_and_check(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    repo = make_repo(repo_path, pack_size=64 * 1024)
    back_up_versions(repo, tmp_path / "run", 2)
    deltas = delta_blobs(repo_path)
    eng = engine(repo_path)
    victim = next(iter(deltas.values()))
    pack = eng.index.get(victim).pack_id  # type: ignore[union-attr]
    (repo_path / "data" / pack[:2] / pack).unlink()
    with pytest.raises(WeightvaultError, match=victim.hex()[:16] + "|" + pack):
        repo.restore("latest", tmp_path / "out")
    result = repo.check()
    assert not result.ok
    dependants = [d for d, b in deltas.items() if b == victim]
    assert any(d.hex() in " ".join(result.errors) for d in dependants)


def test_repair_index_recovers_bases_from_pack_headers(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    repo = make_repo(repo_path)
    expected = back_up_versions(repo, tmp_path / "run", 3)
    before = delta_blobs(repo_path)
    assert before
    for p in (repo_path / "index").iterdir():
        p.unlink()
    repo.repair_index()
    assert delta_blobs(repo_path) == before
    repo.restore("latest", tmp_path / "out")
    assert (tmp_path / "out" / "run" / "model.safetensors").read_bytes() == expected


def test_payload_base_must_match_the_index(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    repo = make_repo(repo_path)
    back_up_versions(repo, tmp_path / "run", 2)
    eng = engine(repo_path)
    delta_id, _base = next(iter(delta_blobs(repo_path).items()))
    entry = eng.index.get(delta_id)
    assert entry is not None
    lying = PackedBlob(delta_id, BlobType.DATA, DELTA, entry.blob.offset, entry.blob.length, entry.blob.raw_length,
                       base=b"\x00" * 32)
    envelope = eng.backend.load(FileType.PACK, entry.pack_id, entry.blob.offset, entry.blob.length)
    with pytest.raises(IntegrityError, match="differs from the index"):
        eng.decode_blob(entry.pack_id, lying, envelope)
    assert eng.decode_blob(entry.pack_id, entry.blob, envelope)


def test_version_2_repositories_never_get_deltas(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)
    doc = json.loads((repo_path / "config").read_bytes())
    doc["version"] = 2
    del doc["delta_max_depth"]
    (repo_path / "config").write_text(json.dumps(doc))
    repo = Repository.open(repo_path, PASSWORD)
    expected = back_up_versions(repo, tmp_path / "run", 3)
    codecs = {e.blob.codec for e in engine(repo_path).index.entries()}
    assert DELTA not in codecs and BYTEPLANE in codecs
    assert engine(repo_path).config.delta_max_depth == 0
    assert "delta_max_depth" not in json.loads((repo_path / "config").read_bytes())
    repo.restore("latest", tmp_path / "out")
    assert (tmp_path / "out" / "run" / "model.safetensors").read_bytes() == expected


@pytest.mark.parametrize("value", [-1, 33, "8"])
def test_bad_delta_depth_in_config_is_refused(tmp_path: Path, value: object) -> None:
    repo_path = tmp_path / "repo"
    Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)
    doc = json.loads((repo_path / "config").read_bytes())
    doc["delta_max_depth"] = value
    (repo_path / "config").write_text(json.dumps(doc))
    if value == "8":  # a numeric string is read as its integer, like the other fields
        assert Repository.open(repo_path, PASSWORD)
        return
    with pytest.raises(IntegrityError, match="delta chain depth"):
        Repository.open(repo_path, PASSWORD)


def test_all_float_dtypes_are_known_to_the_codec() -> None:
    assert set(FLOAT_ELEMENT_SIZES) <= set(DTYPES)


def test_stats_count_the_bases_a_snapshot_needs(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    repo = make_repo(repo_path)
    back_up_versions(repo, tmp_path / "run", 2)
    latest = repo.stats("latest")
    assert latest.delta_blobs >= 3
    assert latest.base_bytes > 0  # the first version's chunks: needed, not referenced by the snapshot
    whole = repo.stats(None)
    assert whole.delta_blobs == latest.delta_blobs and whole.base_bytes == 0
    assert latest.stored_bytes <= whole.stored_bytes


def test_corrupt_base_fails_its_dependants_in_check_read_data(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    repo = make_repo(repo_path, pack_size=64 * 1024)
    model = Model()
    src = tmp_path / "run"
    for _ in range(2):
        model.step()
        model.save(src / "model.safetensors")
        repo.backup([src])
    assert repo.check(read_data=True).ok
    eng = engine(repo_path)
    deltas = delta_blobs(repo_path)
    victim = next(iter(deltas.values()))
    entry = eng.index.get(victim)
    assert entry is not None
    pack = repo_path / "data" / entry.pack_id[:2] / entry.pack_id
    raw = bytearray(pack.read_bytes())
    raw[entry.blob.offset + 20] ^= 0x01
    pack.chmod(0o600)
    pack.write_bytes(bytes(raw))
    result = repo.check(read_data=True)
    assert not result.ok
    dependants = {d.hex() for d, b in deltas.items() if b == victim}
    assert victim.hex() in result.bad_blobs and dependants <= set(result.bad_blobs)
