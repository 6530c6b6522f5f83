"""TorchZipSplitter: real torch.save fixtures (tests/fixtures), synthetic torch-layout archives
large enough to need sub-chunks, the non-executing data.pkl scan, hostile archives, and backups
through the public API."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import pickle
import random
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import assert_tiles, tree_digest
from weightvault.api import Repository
from weightvault.chunking.dcp import DcpSplitter, dcp_archives, plan_dcp
from weightvault.chunking.pickle_scan import scan_storage_dtypes
from weightvault.chunking.registry import Chunk, ChunkerParams, default_registry
from weightvault.chunking.torchzip import GROUP, SMALL, TorchZipSplitter, piece_size, torch_zip_structure

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED: dict[str, dict[str, str]] = json.loads((FIXTURES / "torch_fixtures.json").read_text())
SMALL_PARAMS = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536)  # 64 KiB sub-chunks
DEFAULT = ChunkerParams()
MiB = 1024 * 1024


def split(data: bytes, params: ChunkerParams = SMALL_PARAMS) -> list[Chunk]:
    return list(TorchZipSplitter().split(io.BytesIO(data), params))



def storage_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    """key -> [start, end) of each data/<key> entry's bytes, read independently of the splitter."""
    out: dict[str, tuple[int, int]] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if len(parts) == 3 and parts[1] == "data":
                nlen, elen = struct.unpack_from("<HH", data, info.header_offset + 26)
                start = info.header_offset + 30 + nlen + elen
                assert data[start:start + info.file_size] == zf.read(info)
                out[parts[2]] = (start, start + info.file_size)
    return out


def check_storages(chunks: list[Chunk], data: bytes, expected: dict[str, str], params: ChunkerParams) -> None:
    """Storages carry their dtype; big ones are cut at fixed aligned steps; small ones are never cut."""
    piece = piece_size(params)
    for key, (s, e) in storage_ranges(data).items():
        inside = [c for c in chunks if c.offset < e and c.offset + len(c.data) > s]
        assert inside and all(c.dtype == expected[key] for c in inside), (key, [c.dtype for c in inside])
        half = 2 if expected[key] == "BF16" else 1  # BF16: as many elements per piece as F32, as small
        if (e - s) * half >= SMALL:
            assert [(c.offset, c.tensor, c.part) for c in inside] == [
                (off, key, i) for i, off in enumerate(range(s, e, piece // half))]
            assert inside[-1].offset + len(inside[-1].data) == e
        else:
            assert len(inside) == 1 and inside[0].offset % 64 == 0
            assert len(inside[0].data) <= GROUP + 64 * 1024
    stored = {(c.offset, len(c.data)) for c in chunks if c.dtype is not None}
    assert all(o % 64 == 0 for o, _ in stored), "every hinted chunk starts on torch's 64-byte alignment"


ZIP_FIXTURES = sorted(EXPECTED)


@pytest.mark.parametrize("name", ZIP_FIXTURES)
def test_real_fixture_tiles_with_dtype_hints(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    chunks = split(data)
    assert_tiles(chunks, data)
    check_storages(chunks, data, EXPECTED[name], SMALL_PARAMS)
    assert any(c.dtype is None for c in chunks)  # headers, data.pkl, central directory


def test_registry_selects_torch_zip_for_checkpoints_only() -> None:
    reg = default_registry()
    for name in ZIP_FIXTURES:
        head = (FIXTURES / name).read_bytes()[:65536]
        assert reg.select(name.encode(), head).name == "torch-zip"
        assert reg.select(b"pytorch_model.bin", head).name == "torch-zip"
        assert reg.select(b"no-extension", head).name == "torch-zip"  # first entry is <archive>/data.pkl
    legacy = (FIXTURES / "legacy_format.pt").read_bytes()
    assert reg.select(b"legacy_format.pt", legacy).name == "cdc"
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert reg.select(b"archive.zip", plain.getvalue()).name == "cdc"
    assert reg.select(b"archive.pt", plain.getvalue()).name == "torch-zip"  # any zip named like a checkpoint


def test_small_files_are_one_chunk_with_default_params() -> None:
    data = (FIXTURES / "f32_state.pt").read_bytes()
    assert len(data) < DEFAULT.min_size
    assert [(c.offset, len(c.data)) for c in split(data, DEFAULT)] == [(0, len(data))]


def test_legacy_format_falls_back_to_cdc() -> None:
    data = (FIXTURES / "legacy_format.pt").read_bytes() * 200  # not a zip, above min_size
    chunks = split(data)
    assert_tiles(chunks, data)
    assert all(c.dtype is None for c in chunks)


def test_fixture_pickles_scan_without_unpickling() -> None:
    for name, expected in EXPECTED.items():
        with zipfile.ZipFile(FIXTURES / name) as zf:
            (pkl,) = [n for n in zf.namelist() if n.endswith("/data.pkl")]
            assert scan_storage_dtypes(zf.read(pkl)) == expected


def test_scan_never_executes(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}".encode()
    payload = b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."
    assert pickletools_ok(payload)
    assert scan_storage_dtypes(payload) == {}
    assert scan_storage_dtypes(pickle.dumps(("storage", "x", "0"), protocol=4)) == {}
    assert not marker.exists()
    for src in ("torchzip.py", "pickle_scan.py", "gguf.py"):
        text = (Path(__file__).parents[1] / "src/weightvault/chunking" / src).read_text()
        assert "pickle.load" not in text and "torch.load" not in text and "import torch" not in text


def pickletools_ok(payload: bytes) -> bool:
    """The payload is a well-formed pickle (so the scan really walked it)."""
    import pickletools

    return [op.name for op, _, _ in pickletools.genops(payload)][-1] == "STOP"


# -- synthetic torch-layout archives --------------------------------------------------------------

STORAGE_TYPES = {"F32": "FloatStorage", "BF16": "BFloat16Storage", "F16": "HalfStorage", "I64": "LongStorage",
                 "F64": "DoubleStorage", "I32": "IntStorage", "U8": "ByteStorage", "BOOL": "BoolStorage"}
TORCH_DTYPE_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "U16": "uint16"}
ELEM = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8, "F64": 8, "I32": 4, "U8": 1, "BOOL": 1, "U16": 2}


@contextmanager
def torch_names() -> Iterator[types.ModuleType]:
    """Plain stand-in classes registered under torch's names so that ``pickle`` writes the same
    GLOBAL references torch.save does (the archive is only written here, never loaded)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    storage = types.ModuleType("torch.storage")
    for name in [*STORAGE_TYPES.values(), "UntypedStorage"]:
        cls = type(name, (), {"__module__": "torch" if name != "UntypedStorage" else "torch.storage"})
        setattr(torch if name != "UntypedStorage" else storage, name, cls)

    class Dtype:
        __module__ = "torch"

        def __init__(self, name: str) -> None:
            self.name = name

        def __reduce__(self) -> str:
            return self.name

    for name in TORCH_DTYPE_NAMES.values():
        setattr(torch, name, Dtype(name))
    for fname in ("_rebuild_tensor_v2", "_rebuild_tensor_v3"):
        def rebuild(*args: object) -> None:
            raise AssertionError("never called")
        rebuild.__module__, rebuild.__qualname__, rebuild.__name__ = "torch._utils", fname, fname
        setattr(utils, fname, rebuild)
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils", "torch.storage")}
    sys.modules.update({"torch": torch, "torch._utils": utils, "torch.storage": storage})
    try:
        yield torch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Storage:
    def __init__(self, key: str, dtype: str, nbytes: int, untyped: bool) -> None:
        self.key, self.dtype, self.nbytes, self.untyped = key, dtype, nbytes, untyped


class _Tensor:
    def __init__(self, storage: _Storage, torch: types.ModuleType) -> None:
        self.storage, self.torch = storage, torch

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        n = self.storage.nbytes // ELEM[self.storage.dtype]
        utils = sys.modules["torch._utils"]
        if self.storage.untyped:
            dt = getattr(self.torch, TORCH_DTYPE_NAMES[self.storage.dtype])
            return (utils._rebuild_tensor_v3, (self.storage, 0, (n,), (1,), False, OrderedDict(), dt))
        return (utils._rebuild_tensor_v2, (self.storage, 0, (n,), (1,), False, OrderedDict()))


def write_torch_zip(tensors: dict[str, tuple[str, bytes]], *, protocol: int = 2,
                    untyped: frozenset[str] = frozenset(), archive: str = "model") -> bytes:
    """A zip laid out like torch.save's: data.pkl first, then 64-byte aligned STORED storages."""
    out = io.BytesIO()
    with torch_names() as torch:
        storages = {name: _Storage(str(i), dt, len(raw), name in untyped) for i, (name, (dt, raw)) in
                    enumerate(tensors.items())}

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj: object) -> object:
                if isinstance(obj, _Storage):
                    stype = (sys.modules["torch.storage"].UntypedStorage if obj.untyped
                             else getattr(torch, STORAGE_TYPES[obj.dtype]))
                    numel = obj.nbytes if obj.untyped else obj.nbytes // ELEM[obj.dtype]
                    return ("storage", stype, obj.key, "cpu", numel)
                return None

        buf = io.BytesIO()
        Pickler(buf, protocol=protocol).dump({n: _Tensor(s, torch) for n, s in storages.items()})
    entries = [("data.pkl", buf.getvalue()), (".format_version", b"1"), ("byteorder", b"little")]
    entries += [(f"data/{s.key}", tensors[n][1]) for n, s in storages.items()]
    entries += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, raw in entries:
            info = zipfile.ZipInfo(f"{archive}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            base = out.tell() + 30 + len(info.filename) + 4
            info.extra = struct.pack("<HH", 0x4246, -base % 64) + b"Z" * (-base % 64)
            zf.writestr(info, raw)
    return out.getvalue()


def big_tensors(seed: int = 1) -> dict[str, tuple[str, bytes]]:
    rnd = random.Random(seed)
    t: dict[str, tuple[str, bytes]] = {
        "emb": ("F32", rnd.randbytes(9 * MiB + 4 * 1000)),
        "proj": ("BF16", rnd.randbytes(5 * MiB + 2 * 77)),
        "count": ("I64", rnd.randbytes(8 * 3)),
    }
    for i in range(6):
        t[f"norm{i}"] = ("F16", rnd.randbytes(2 * (100_000 + i)))  # small: grouped
    t["mask"] = ("BOOL", rnd.randbytes(300 * 1024))
    t["lm_head"] = ("F64", rnd.randbytes(8 * 70_000))
    return t


def expected_keys(tensors: dict[str, tuple[str, bytes]]) -> dict[str, str]:
    return {str(i): dt for i, (dt, _) in enumerate(tensors.values())}


@pytest.mark.parametrize("protocol", [2, 4])
def test_synthetic_archive_default_params(protocol: int) -> None:
    tensors = big_tensors()
    data = write_torch_zip(tensors, protocol=protocol)
    chunks = split(data, DEFAULT)
    assert_tiles(chunks, data)
    check_storages(chunks, data, expected_keys(tensors), DEFAULT)
    emb = [c for c in chunks if c.tensor == "0"]
    assert [len(c.data) for c in emb] == [4 * MiB, 4 * MiB, 1 * MiB + 4000]
    groups = [c for c in chunks if c.dtype == "F16"]
    assert 1 < len(groups) < 6 and all(len(c.data) <= GROUP for c in groups)


def test_untyped_storages_take_the_rebuild_dtype() -> None:
    rnd = random.Random(2)
    tensors = {"a": ("F16", rnd.randbytes(400_000)), "b": ("U16", rnd.randbytes(64)), "c": ("F32", b"\0" * 4000)}
    data = write_torch_zip(tensors, untyped=frozenset({"a", "b"}), protocol=4, archive="ckpt")
    chunks = split(data)
    assert_tiles(chunks, data)
    check_storages(chunks, data, expected_keys(tensors), SMALL_PARAMS)


# -- hostile input --------------------------------------------------------------------------------

def _mutations(data: bytes, rnd: random.Random) -> Iterator[bytes]:
    eocd = data.rfind(b"PK\x05\x06")
    cd = struct.unpack_from("<I", data, eocd + 16)[0]
    for _ in range(60):
        b = bytearray(data)
        region = rnd.choice([(0, 200), (cd, len(data)), (0, len(data))])
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(*region)] = rnd.randrange(256)
        yield bytes(b)
    for _ in range(30):
        yield data[:rnd.randrange(len(data))]
    # lying central directory: sizes and offsets of individual entries
    pos = cd
    while data[pos:pos + 4] == b"PK\x01\x02":
        nlen, elen, clen = struct.unpack_from("<HHH", data, pos + 28)
        for field, value in ((20, 0xFFFFFFF0), (20, 1 << 30), (24, 1 << 30), (42, 0), (42, len(data) + 5),
                             (42, rnd.randrange(len(data)))):
            b = bytearray(data)
            struct.pack_into("<I", b, pos + field, value)
            yield bytes(b)
        pos += 46 + nlen + elen + clen
    for value in (0, len(data), cd + 7, 0xFFFFFFFF):  # central directory offset in the end record
        b = bytearray(data)
        struct.pack_into("<I", b, eocd + 16, value)
        yield bytes(b)
    b = bytearray(data)
    struct.pack_into("<H", b, eocd + 10, 0xFFFF)  # huge entry count
    yield bytes(b)


def test_hostile_archives_never_raise_and_still_tile() -> None:
    rnd = random.Random(7)
    sources = [(FIXTURES / "mixed_dtypes.pt").read_bytes(), (FIXTURES / "checkpoint_adamw.pt").read_bytes(),
               write_torch_zip({"x": ("F32", rnd.randbytes(600_000)), "y": ("I64", rnd.randbytes(800))})]
    n = 0
    for data in sources:
        for bad in _mutations(data, rnd):
            assert_tiles(split(bad), bad)
            n += 1
    assert n > 300


def test_hostile_pickles_give_no_hints() -> None:
    data = (FIXTURES / "checkpoint_adamw.pt").read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        pkl = zf.read("checkpoint_adamw/data.pkl")
    rnd = random.Random(3)
    for _ in range(300):
        b = bytearray(pkl)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        out = scan_storage_dtypes(bytes(b))
        assert set(out.values()) <= {"F32", "I64", "F64", "F16", "BF16", "I32", "I16", "I8", "U8", "BOOL"}
    assert scan_storage_dtypes(pkl[:-1]) == {}  # no STOP
    assert scan_storage_dtypes(b"") == {}


# -- through the repository -----------------------------------------------------------------------

def test_backup_restore_fixtures_byte_identical(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for p in FIXTURES.glob("*.pt"):
        (src / p.name).write_bytes(p.read_bytes())
    (src / "synthetic.ckpt").write_bytes(write_torch_zip(big_tensors(4)))
    res = repo.backup([src])
    assert not res.errors
    repo.restore(res.snapshot.id, tmp_path / "out")
    assert tree_digest(tmp_path / "out" / "src") == tree_digest(src)


def test_changed_storage_leaves_others_deduplicated(repo: Repository, tmp_path: Path) -> None:
    tensors = big_tensors()
    path = tmp_path / "ckpt" / "model.pt"
    path.parent.mkdir()
    path.write_bytes(write_torch_zip(tensors))
    first = repo.backup([path.parent]).snapshot.summary["stored_bytes_added"]
    dt, raw = tensors["proj"]
    tensors["proj"] = (dt, random.Random(99).randbytes(len(raw)))  # same size, new content
    path.write_bytes(write_torch_zip(tensors))
    res = repo.backup([path.parent])
    added = res.snapshot.summary["stored_bytes_added"]
    assert first > 15 * MiB
    assert len(raw) <= added < len(raw) + 256 * 1024, (added, len(raw))
    repo.restore(res.snapshot.id, tmp_path / "out")
    assert (tmp_path / "out" / "ckpt" / "model.pt").read_bytes() == path.read_bytes()


# -- DCP .distcp files: concatenated torch.save archives ------------------------------------------

DCP_ITEMS: dict[str, list[Any]] = json.loads((FIXTURES / "dcp_fixture.json").read_text())


def dcp_expected(items: dict[str, list[Any]]) -> list[tuple[int, int, str | None, list[int] | None]]:
    """(start, end, dtype, shape) of each archive, from DCP's own metadata, in file order."""
    return sorted((off, off + n, dt, shape) for off, n, dt, shape in items.values())


def check_dcp(data: bytes, items: dict[str, list[Any]], params: ChunkerParams = SMALL_PARAMS) -> None:
    """Archives found where DCP's metadata puts them; each archive's storage chunks carry its
    dtype, named "<archive index>/<key>"; the structure of each archive is its one tensor."""
    expected = dcp_expected(items)
    assert dcp_archives(io.BytesIO(data), len(data)) == [(s, e) for s, e, _, _ in expected]
    assert expected[0][0] == 0 and expected[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(expected))  # DCP leaves no gaps
    chunks = list(DcpSplitter().split(io.BytesIO(data), params))
    assert_tiles(chunks, data)
    piece = piece_size(params)
    for i, (s, e, dt, shape) in enumerate(expected):
        inside = [c for c in chunks if c.dtype is not None and s <= c.offset < e]
        if dt is None:  # a pickled object: no storages
            assert inside == []
            continue
        assert inside and {c.dtype for c in inside} == {dt} and {c.tensor for c in inside} <= {f"{i}/0", None}
        (key_range,) = [r for k, r in storage_ranges(data[s:e]).items() if k == "0"]
        n = key_range[1] - key_range[0]
        if n >= SMALL:
            assert [(c.offset, c.part) for c in inside] == [
                (off, j) for j, off in enumerate(range(s + key_range[0], s + key_range[1], piece))]
        structure = torch_zip_structure(io.BytesIO(data[s:e]), e - s, strict=True)
        assert structure.tensors == {"": (dt, tuple(shape or ()))} and structure.warnings == []


def test_dcp_fixture_archives_and_hints() -> None:
    data = (FIXTURES / "dcp_shard.distcp").read_bytes()
    check_dcp(data, DCP_ITEMS)


def test_dcp_splitter_accepts_concatenated_archives_only() -> None:
    data = (FIXTURES / "dcp_shard.distcp").read_bytes()
    s = DcpSplitter()
    assert s.accepts(b"__0_0.distcp", data[:65536]) and s.accepts(b"shard.bin", data[:65536])  # by content
    assert s.accepts(b"__1_0.DISTCP", data[:4] + b"\0" * 100)  # by name
    for name in ZIP_FIXTURES:
        assert not s.accepts(name.encode(), (FIXTURES / name).read_bytes()[:65536])
    assert not s.accepts(b"x.distcp", b"\x80\x02")


def test_dcp_single_archive_falls_back_to_cdc() -> None:
    data = (FIXTURES / "mixed_dtypes.pt").read_bytes()
    assert dcp_archives(io.BytesIO(data), len(data)) == [(0, len(data))]
    with pytest.raises(ValueError, match="several"):
        plan_dcp(io.BytesIO(data), SMALL_PARAMS)
    chunks = list(DcpSplitter().split(io.BytesIO(data), SMALL_PARAMS))
    assert_tiles(chunks, data)
    assert all(c.dtype is None for c in chunks)


def test_dcp_bytes_outside_archives() -> None:
    data = (FIXTURES / "dcp_shard.distcp").read_bytes()
    expected = [(s, e) for s, e, _, _ in dcp_expected(DCP_ITEMS)]
    cut = expected[20][0]
    junk = b"PK\x05\x06 not an end record " * 40
    for bad, want in (
        (junk + data, [(s + len(junk), e + len(junk)) for s, e in expected]),
        (data + junk, expected),
        (data[:cut] + junk + data[cut:], [*expected[:20], *[(s + len(junk), e + len(junk)) for s, e in expected[20:]]]),
    ):
        assert dcp_archives(io.BytesIO(bad), len(bad)) == want
        chunks = list(DcpSplitter().split(io.BytesIO(bad), SMALL_PARAMS))
        assert_tiles(chunks, bad)
        assert any(c.dtype == "F32" for c in chunks)


def test_dcp_hostile_files_tile() -> None:
    data = (FIXTURES / "dcp_shard.distcp").read_bytes()
    rnd = random.Random(13)
    n = 0

    def lying_end_records() -> Iterator[bytes]:
        for _, e, _, _ in dcp_expected(DCP_ITEMS):
            eocd, rec64 = e - 22, e - 22 - 20 - 56
            for pos, fmt, value in ((eocd + 12, "<I", 0), (eocd + 16, "<I", 7), (eocd + 20, "<H", 30),
                                    (rec64 + 40, "<Q", 1 << 40), (rec64 + 48, "<Q", rnd.randrange(e)),
                                    (eocd - 12, "<Q", 3)):
                b = bytearray(data)
                struct.pack_into(fmt, b, pos, value)
                yield bytes(b)
            b = bytearray(data)
            b[e - rnd.randrange(1, 200)] ^= 0xFF
            yield bytes(b)

    for bad in itertools.chain(_mutations(data, rnd), lying_end_records()):
        found = dcp_archives(io.BytesIO(bad), len(bad))
        assert all(0 <= s < e <= len(bad) for s, e in found)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(found))
        assert_tiles(list(DcpSplitter().split(io.BytesIO(bad), SMALL_PARAMS)), bad)
        n += 1
    assert n > 350


def test_dcp_real_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("make_torch_fixtures", FIXTURES / "make_torch_fixtures.py")
    assert spec is not None and spec.loader is not None
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    state = {"w": torch.randn(300, 256).to(torch.bfloat16), "h": torch.randn(70_000).half(),
             "ids": torch.arange(40_000), "t": torch.randn(64, 48).t(), "opt": {"lr": 0.1, "step": 3},
             **mk.dcp_state()}
    mk.write_dcp(tmp_path, state)
    items = mk.dcp_items(tmp_path)
    (shard,) = {f for f, *_ in items.values()}
    check_dcp((tmp_path / shard).read_bytes(), {k: v[1:] for k, v in items.items()})
    check_dcp((tmp_path / shard).read_bytes(), {k: v[1:] for k, v in items.items()}, DEFAULT)
