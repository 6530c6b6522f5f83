"""NpySplitter and NpzSplitter: element-aligned chunks that tile real numpy files, dtype hints,
and CDC fallback on hostile headers and archives."""

from __future__ import annotations

import ast
import io
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_tiles
from weightvault.chunking.numpy_formats import MAX_NPY_HEADER, NpySplitter, NpzSplitter, npy_literal, parse_npy_header
from weightvault.chunking.registry import Chunk, ChunkerParams, default_registry
from weightvault.chunking.tensor_plan import OPAQUE_CHUNK, TENSOR_CHUNK

PARAMS = ChunkerParams()
MiB = 1024 * 1024

# numpy dtype -> the hint its data chunks must carry (None: no hint, still element-aligned chunks)
DTYPES: dict[str, str | None] = {
    "<f2": "F16", "<f4": "F32", "<f8": "F64",
    "|i1": "I8", "<i2": "I16", "<i4": "I32", "<i8": "I64",
    "|u1": "U8", "<u2": "U16", "<u4": "U32", "<u8": "U64", "|b1": "BOOL",
    "<c8": None, "<c16": None, ">f4": None, ">i8": None, "|S3": None, "<U3": None, "<M8[ns]": None,
    "struct": None,
}
STRUCT = np.dtype([("a", "<f4"), ("b", "|u1", (3,))])


def make_array(rng: np.random.Generator, descr: str, shape: tuple[int, ...]) -> np.ndarray:
    dt = STRUCT if descr == "struct" else np.dtype(descr)
    raw = rng.integers(0, 256, int(np.prod(shape, dtype=np.int64)) * dt.itemsize, dtype=np.uint8)
    if dt.kind == "b":
        raw &= 1
    return np.frombuffer(raw.tobytes(), dtype=dt).reshape(shape)



def npy_data_offset(data: bytes) -> int:
    """Where the array data starts, by numpy's own header reader."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    fmt = np.lib.format
    (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    return f.tell()


def assert_npy_chunks(chunks: list[Chunk], start: int, data_start: int, end: int, itemsize: int,
                      hint: str | None, name: str | None) -> None:
    """Within ``[start, end)`` of the file: a header chunk, then data chunks of whole elements."""
    inside = [c for c in chunks if start <= c.offset < end]
    assert inside[0].offset == start and inside[0].offset + len(inside[0].data) == data_start
    assert inside[0].dtype is None and inside[0].tensor == (f"{name}/__header__" if name else "__header__")
    step = TENSOR_CHUNK - TENSOR_CHUNK % itemsize
    for c in inside[1:]:
        assert c.dtype == hint and c.tensor == name
        assert len(c.data) % itemsize == 0 and len(c.data) <= step and c.offset - data_start == c.part * step
    assert sum(len(c.data) for c in inside) == end - start


shapes = st.lists(st.integers(0, 30), min_size=0, max_size=3).map(tuple)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(DTYPES)), shapes, st.booleans(), st.integers(0, 2**32 - 1), st.integers(0, 11))
def test_npy_tiles_and_aligns(descr: str, shape: tuple[int, ...], fortran: bool, seed: int, big: int) -> None:
    rng = np.random.default_rng(seed)
    if big == 0:  # now and then an array of several parts
        shape = (TENSOR_CHUNK // 8 + int(rng.integers(1, 100)),)
    arr = make_array(rng, descr, shape)
    if fortran and arr.ndim > 1:
        arr = np.asfortranarray(arr)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.npy"
        np.save(path, arr)
        data = path.read_bytes()
        reg = default_registry()
        splitter = reg.select(b"a.npy", data[:65536])
        assert splitter.name == "npy" and reg.select(b"blob", data[:65536]).name == "npy"
        with open(path, "rb", buffering=0) as f:
            chunks = list(splitter.split(f, PARAMS))
    assert_tiles(chunks, data)
    assert_npy_chunks(chunks, 0, npy_data_offset(data), len(data), arr.dtype.itemsize, DTYPES[descr], None)
    if big == 0:
        assert len(chunks) >= 2 + (arr.nbytes > TENSOR_CHUNK - TENSOR_CHUNK % arr.dtype.itemsize)


def test_npy_odd_itemsize_parts_are_whole_elements() -> None:
    arr = np.frombuffer(bytes(range(256)) * (3 * 40000), dtype="|S3")  # 30 MiB-ish of 3-byte items
    buf = io.BytesIO()
    np.save(buf, arr)
    chunks = list(NpySplitter().split(io.BytesIO(buf.getvalue()), PARAMS))
    assert_tiles(chunks, buf.getvalue())
    parts = chunks[1:]
    assert len(parts) >= 7 and all(len(c.data) == TENSOR_CHUNK - TENSOR_CHUNK % 3 for c in parts[:-1])
    assert [c.part for c in parts] == list(range(len(parts)))


def test_npy_versions_2_and_3() -> None:
    arr = np.arange(100, dtype="<i4")
    for version in ((2, 0), (3, 0)):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, version=version)
        data = buf.getvalue()
        chunks = list(NpySplitter().split(io.BytesIO(data), PARAMS))
        assert_tiles(chunks, data)
        assert [c.dtype for c in chunks] == [None, "I32"] and len(chunks[1].data) == 400


def test_object_arrays_fall_back() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None, "x"], dtype=object), allow_pickle=True)
    data = buf.getvalue()
    chunks = list(NpySplitter().split(io.BytesIO(data), PARAMS))
    assert_tiles(chunks, data)
    assert all(c.dtype is None and c.tensor is None for c in chunks)


# -- .npz ------------------------------------------------------------------------------------------


def member_ranges(data: bytes) -> dict[str, tuple[int, int, int]]:
    """name -> (local header offset, data start, data end), from the zip structures."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            n, m = struct.unpack_from("<HH", data, info.header_offset + 26)
            start = info.header_offset + 30 + n + m
            out[info.filename] = (info.header_offset, start, start + info.compress_size)
    return out


def savez(file: Path | io.BytesIO, arrs: dict[str, np.ndarray], compressed: bool) -> None:
    """np.savez / np.savez_compressed with member names from ``arrs``."""
    save = np.savez_compressed if compressed else np.savez
    save(file, **arrs)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle


arrays = st.lists(st.tuples(st.sampled_from(sorted(DTYPES)), shapes), min_size=0, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays, st.booleans(), st.integers(0, 2**32 - 1))
def test_npz_tiles_and_aligns(specs: list[tuple[str, tuple[int, ...]]], compressed: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrs = {f"a{i}": make_array(rng, descr, shape) for i, (descr, shape) in enumerate(specs)}
    if seed % 5 == 0:
        arrs["big"] = make_array(rng, "<f4", (TENSOR_CHUNK // 4 + 1000,))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.npz"
        savez(path, arrs, compressed)
        data = path.read_bytes()
        splitter = default_registry().select(b"a.npz", data[:65536])
        assert splitter.name == "npz"
        assert default_registry().select(b"x", data[:65536]).name == ("npz" if arrs else "cdc")
        with open(path, "rb", buffering=0) as f:
            chunks = list(splitter.split(f, PARAMS))
    assert_tiles(chunks, data)
    ranges = member_ranges(data)
    bounds = {c.offset for c in chunks}
    for member, (local, start, end) in ranges.items():
        assert local in bounds and start in bounds and (end in bounds or end == len(data))
        if not compressed:
            arr = arrs[member[:-4]]
            assert_npy_chunks(chunks, start, start + npy_data_offset(data[start:end]), end,
                              arr.dtype.itemsize, DTYPES[descr_of(arr)], member[:-4])
    if compressed:
        assert all(c.dtype is None and c.tensor is None for c in chunks)
        local_headers = {r[0] for r in ranges.values()}
        assert all(len(c.data) <= OPAQUE_CHUNK or c.offset in local_headers for c in chunks)


def descr_of(arr: np.ndarray) -> str:
    descr = np.lib.format.dtype_to_descr(arr.dtype)
    return descr if isinstance(descr, str) else "struct"


def test_npz_members_dedupe_across_archives() -> None:
    """An array's chunks are the same in different archives, wherever its member lies."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((1500, 1000)).astype(np.float32)
    bufs = []
    for extra in ({}, {"aaa": np.arange(5000)}):
        buf = io.BytesIO()
        savez(buf, {**extra, "w": w}, False)
        bufs.append(buf.getvalue())
    sets = [{c.data for c in NpzSplitter().split(io.BytesIO(b), PARAMS) if c.tensor == "w"} for b in bufs]
    assert len(sets[0]) == 2 and sets[0] == sets[1]


# -- hostile input ---------------------------------------------------------------------------------


def _npy(header: bytes, body: bytes = b"\0" * 4096, version: int = 1, hlen: int | None = None) -> bytes:
    n = len(header) if hlen is None else hlen
    pre = struct.pack("<H", n) if version == 1 else struct.pack("<I", n)
    return b"\x93NUMPY" + bytes([version, 0]) + pre + header + body


HOSTILE_NPY: list[bytes] = [
    _npy(b"__import__('pathlib').Path('PWNED').touch()"),
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (10**20,), }"),
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 2), }"),
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (-4,), }"),
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2000,), }"),  # 8000 bytes claimed, 4096 there
    _npy(b"{'descr': '<f4', 'fortran_order': 0, 'shape': (4,), }"),
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': [4], }"),
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4.0,), }"),
    _npy(b"{'descr': 'f4', 'fortran_order': False, 'shape': (4,), }"),
    _npy(b"{'descr': [('a', '<f4', (10**30,))], 'fortran_order': False, 'shape': (1,), }"),
    _npy(b"{'descr': [], 'fortran_order': False, 'shape': (1,), }"),
    _npy(b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"),
    _npy(b"(" * 50000),
    _npy(b"{'descr': " + b"[" * 40 + b"]" * 40 + b", 'fortran_order': False, 'shape': (1,), }"),  # nested too deep
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 'unterminated}"),
    _npy(b"{'descr': '<f\\q4', 'fortran_order': False, 'shape': (4,), }"),  # an escape Python warns about
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,) 'x': 1}"),
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", version=2, hlen=MAX_NPY_HEADER + 1),
    _npy(b"[1, 2, 3]"),
    _npy(b"\xff\xfe\x00"),
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", hlen=65535),
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", version=2, hlen=2**32 - 1),
    _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", version=9),
    b"\x93NUMPY\x01",
    b"\x93NUMPY",
]


@pytest.mark.parametrize("data", HOSTILE_NPY, ids=range(len(HOSTILE_NPY)))
def test_hostile_npy_falls_back(data: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    chunks = list(NpySplitter().split(io.BytesIO(data), PARAMS))
    assert_tiles(chunks, data)
    assert all(c.dtype is None and c.tensor is None for c in chunks)
    assert not (tmp_path / "PWNED").exists()


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_fuzzed_npy_never_crashes(data: st.DataObject) -> None:
    buf = io.BytesIO()
    np.save(buf, np.arange(300, dtype=data.draw(st.sampled_from(["<f4", "<i8", "|u1"]))).reshape(3, 100))
    blob = bytearray(buf.getvalue())
    for _ in range(data.draw(st.integers(1, 6))):
        blob[data.draw(st.integers(0, 127))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del blob[data.draw(st.integers(0, len(blob))):]
    chunks = list(NpySplitter().split(io.BytesIO(bytes(blob)), PARAMS))
    assert_tiles(chunks, bytes(blob))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fuzzed_npz_never_crashes(data: st.DataObject) -> None:
    buf = io.BytesIO()
    arrs = {"a": np.arange(200, dtype="<f4"), "b": np.ones((3, 7), dtype="<f2"), "c": np.array(3)}
    savez(buf, arrs, data.draw(st.booleans()))
    blob = bytearray(buf.getvalue())
    ranges = member_ranges(bytes(blob))
    hot = [p for r in ranges.values() for p in range(r[0], r[0] + 30)] + list(range(len(blob) - 200, len(blob)))
    kind = data.draw(st.sampled_from(["flip", "flip", "truncate", "prepend", "splice"]))
    if kind == "flip":  # local headers, the central directory and the end record
        for _ in range(data.draw(st.integers(1, 6))):
            blob[data.draw(st.sampled_from(hot))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        del blob[data.draw(st.integers(0, len(blob))):]
    elif kind == "prepend":
        blob[:0] = data.draw(st.binary(min_size=1, max_size=100))
    else:
        at = data.draw(st.sampled_from(hot))
        blob[at:at + data.draw(st.integers(0, 8))] = data.draw(st.binary(max_size=8))
    chunks = list(NpzSplitter().split(io.BytesIO(bytes(blob)), PARAMS))
    assert_tiles(chunks, bytes(blob))


def test_npz_lying_sizes_fall_back() -> None:
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(20000, dtype="<f4"), b=np.arange(20000, dtype="<f4"))
    blob = bytearray(buf.getvalue())
    eocd = blob.rfind(b"PK\x05\x06")
    cd = struct.unpack_from("<I", blob, eocd + 16)[0]
    # the first central-directory entry claims a compressed size running into the next member
    struct.pack_into("<I", blob, cd + 20, 90000)
    chunks = list(NpzSplitter().split(io.BytesIO(bytes(blob)), PARAMS))
    assert_tiles(chunks, bytes(blob))
    assert all(c.dtype is None for c in chunks)


# -- the header parser: numpy's literals, large structured headers, hostile text --------------------


def _header_text(arr: np.ndarray) -> tuple[bytes, str, int]:
    """What np.save writes (the version numpy picks), the header's text and where the data starts."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # "Stored array in format 2.0/3.0 ..."
        warnings.simplefilter("ignore", UserWarning)
        np.save(buf, arr)
    data = buf.getvalue()
    fixed = 10 if data[6] == 1 else 12
    (n,) = struct.unpack_from("<H" if data[6] == 1 else "<I", data, 8)
    return data, data[fixed:fixed + n].decode("utf-8" if data[6] == 3 else "latin1"), fixed + n


def _fields(n: int) -> np.dtype:
    return np.dtype([(f"field_{i:04d}", "<f4" if i % 3 else "<i8", (2,) if i % 5 == 0 else ()) for i in range(n)])


LITERAL_DTYPES = [
    np.dtype("<f4"), np.dtype(">i8"), np.dtype("<M8[ns]"), np.dtype("|S5"), np.dtype("<U3"), np.dtype("|V7"),
    np.dtype([("a", "u1"), ("b", "<f8")], align=True),
    np.dtype([("a", [("x", "<f4"), ("y", "<i2", (3, 2))]), ("b", "|S5")]),
    np.dtype({"names": ["a", "b"], "formats": ["<f4", "<i4"], "titles": ["A title", "B"]}),
    np.dtype({"names": ["a", "b"], "formats": ["<f4", "<i4"], "offsets": [0, 8], "itemsize": 16}),
    np.dtype([("it's", "<f4"), ('dq"', "<i4"), ("back\\slash", "<i2"), ("ünï", "<f8")]),
    np.dtype([("日本", "<f4"), ("tab\t", "<i4")]),  # not latin-1: numpy writes version 3 (utf-8)
    _fields(600),
]


@pytest.mark.parametrize("dt", LITERAL_DTYPES, ids=range(len(LITERAL_DTYPES)))
def test_npy_literal_reads_what_numpy_writes_as_literal_eval_does(dt: np.dtype) -> None:
    data, text, _ = _header_text(np.zeros((2, 3), dtype=dt))
    assert npy_literal(text) == ast.literal_eval(text)
    for strict in (False, True):
        h = parse_npy_header(io.BytesIO(data), len(data), strict=strict)
        assert (h.shape, h.itemsize, h.data_length) == ((2, 3), dt.itemsize, 6 * dt.itemsize)


@pytest.mark.parametrize(("fields", "version"), [(600, 1), (4000, 2)])
def test_large_structured_headers_parse_in_both_modes_and_split_by_tensor(fields: int, version: int) -> None:
    dt = _fields(fields)
    arr = np.zeros(40, dtype=dt)
    arr["field_0001"] = np.arange(40)
    data, text, offset = _header_text(arr)
    assert data[6] == version and len(text) > (10_000 if version == 1 else 65_535)  # beyond np.load's default
    loaded = np.load(io.BytesIO(data), max_header_size=len(text) + 1)
    assert loaded.dtype == dt and (loaded == arr).all()
    for strict in (False, True):
        h = parse_npy_header(io.BytesIO(data), len(data), strict=strict)
        assert (h.shape, h.itemsize, h.data_offset) == ((40,), dt.itemsize, offset)
    assert default_registry().select(b"table.npy", data[:65536]).name == "npy"
    chunks = list(NpySplitter().split(io.BytesIO(data), PARAMS))
    assert_tiles(chunks, data)
    assert_npy_chunks(chunks, 0, offset, len(data), dt.itemsize, None, None)


def test_python_2_headers_parse() -> None:
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (3L, 2L), }"  # numpy on Python 2 wrote longs
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(48)
    with pytest.warns(UserWarning, match="created on Python 2"):
        assert np.load(io.BytesIO(data)).shape == (3, 2)
    for strict in (False, True):
        assert parse_npy_header(io.BytesIO(data), len(data), strict=strict).shape == (3, 2)
    assert npy_literal("{u'descr': u'<f8'}") == {"descr": "<f8"}


@pytest.mark.parametrize("text", [
    "{", "{'a': 1", "[1,,2]", "(,)", "{'a' 1}", "1 2", "'abc", "{[1]: 2}", "x", "1.5", "{'a': 1}}", "((1,)",
    "True1", "[" * 33 + "]" * 33, "b'bytes'", "'\\q'", "'\\x4'", "{'a': 10**20}", "__import__('os')",
    "{'a': 1}\x00", "'\\N{NO SUCH NAME}'",
])
def test_npy_literal_refuses_what_is_not_a_numpy_literal(text: str) -> None:
    with pytest.raises(ValueError):
        npy_literal(text)


def test_npy_literal_shapes_and_nesting_match_python() -> None:
    for text in ["()", "(1)", "(1,)", "(1, 2,)", "[]", "{}", "{'a': (1, 2,), }", "-5", "[(('t', 'n'), '<f4', (2,))]",
                 "'\\x41\\u00e9\\n\\\\'", '"it\'s"', "[" * 32 + "]" * 32, "{'k': None, 'b': True}"]:
        assert npy_literal(text) == ast.literal_eval(text), text
