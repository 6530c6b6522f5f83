"""GgufSplitter on GGUF v2/v3 files written here with struct (plain and Q8_0 tensors, alignment
variations), hostile headers, and a backup/restore through the public API."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest

from conftest import assert_tiles, tree_digest
from weightvault.api import Repository
from weightvault.chunking.gguf import GGML_TYPES, GgufSplitter, gguf_header
from weightvault.chunking.registry import Chunk, ChunkerParams, default_registry
from weightvault.chunking.torchzip import piece_size

SMALL_PARAMS = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536)  # 64 KiB sub-chunks
DEFAULT = ChunkerParams()
MiB = 1024 * 1024
F32, F16, Q8_0, I32, BF16 = 0, 1, 8, 26, 30
ELEM = {F32: 4, F16: 2, I32: 4, BF16: 2}
HINT = {F32: "F32", F16: "F16", I32: "I32", BF16: "BF16", Q8_0: None}


def gstr(s: bytes, o: str = "<") -> bytes:
    return struct.pack(o + "Q", len(s)) + s


def kv_string(key: bytes, value: bytes, o: str = "<") -> bytes:
    return gstr(key, o) + struct.pack(o + "I", 8) + gstr(value, o)


def kv_u32(key: bytes, value: int, o: str = "<") -> bytes:
    return gstr(key, o) + struct.pack(o + "II", 4, value)


def metadata(rnd: random.Random, n_tokens: int = 300, o: str = "<") -> list[bytes]:
    """Metadata of every value type, in byte order ``o`` ("<" or ">")."""
    tokens = b"".join(gstr(f"tok{i}".encode() * rnd.randint(1, 3), o) for i in range(n_tokens))
    scores = struct.pack(f"{o}{n_tokens}f", *(rnd.random() for _ in range(n_tokens)))
    nested = struct.pack(o + "IQ", 9, 2) + struct.pack(o + "IQ", 5, 3) + struct.pack(o + "3i", 1, 1, 1)
    nested += struct.pack(o + "IQ", 8, 1) + gstr(b"x", o)  # array of 2 arrays: [i32 x3], [string x1]
    return [
        kv_string(b"general.architecture", b"llama", o),
        gstr(b"tokenizer.ggml.tokens", o) + struct.pack(o + "IIQ", 9, 8, n_tokens) + tokens,
        gstr(b"tokenizer.ggml.scores", o) + struct.pack(o + "IIQ", 9, 6, n_tokens) + scores,
        gstr(b"llama.context_length", o) + struct.pack(o + "IQ", 10, 4096),
        gstr(b"general.flag", o) + struct.pack(o + "IB", 7, 1),
        gstr(b"general.nested", o) + struct.pack(o + "I", 9) + nested,
        gstr(b"general.rope", o) + struct.pack(o + "Id", 12, 10000.0),
    ]


def tensor_bytes(gtype: int, dims: tuple[int, ...], rnd: random.Random) -> bytes:
    n = 1
    for d in dims:
        n *= d
    if gtype in ELEM:
        return rnd.randbytes(n * ELEM[gtype])
    _, block, type_size = GGML_TYPES.get(gtype, ("?", 1, 1))  # an unknown type: a byte per element
    return rnd.randbytes(n // block * type_size)  # Q8_0: an f16 scale + 32 int8 per block of 32


def write_gguf(tensors: list[tuple[str, int, tuple[int, ...]]], *, alignment: int | None = None,
               version: int = 3, seed: int = 0, o: str = "<") -> tuple[bytes, dict[str, tuple[int, int, int]]]:
    """A GGUF file in byte order ``o`` and, per tensor, (absolute start, byte length, ggml type)."""
    rnd = random.Random(seed)
    kvs = metadata(rnd, o=o)
    if alignment is not None:
        kvs.insert(1, kv_u32(b"general.alignment", alignment, o))
    align = alignment or 32
    blobs = [tensor_bytes(t, dims, rnd) for _, t, dims in tensors]
    infos, offsets, off = b"", [], 0
    for (name, t, dims), blob in zip(tensors, blobs, strict=True):
        offsets.append(off)
        infos += gstr(name.encode(), o) + struct.pack(o + "I", len(dims)) + struct.pack(f"{o}{len(dims)}Q", *dims)
        infos += struct.pack(o + "IQ", t, off)
        off += -(-len(blob) // align) * align
    head = b"GGUF" + struct.pack(o + "IQQ", version, len(tensors), len(kvs)) + b"".join(kvs) + infos
    head += b"\0" * (-len(head) % align)
    data = bytearray(head)
    for o_, blob in zip(offsets, blobs, strict=True):
        data += b"\0" * (len(head) + o_ - len(data)) + blob
    data += b"\0" * (-len(data) % align)
    layout = {name: (len(head) + o_, len(b), t) for (name, t, _), o_, b in zip(tensors, offsets, blobs, strict=True)}
    return bytes(data), layout


def split(data: bytes, params: ChunkerParams = SMALL_PARAMS) -> list[Chunk]:
    return list(GgufSplitter().split(io.BytesIO(data), params))



def check_tensors(chunks: list[Chunk], data: bytes, layout: dict[str, tuple[int, int, int]],
                  params: ChunkerParams) -> None:
    piece = piece_size(params)
    ends = [*sorted(s for s, _, _ in layout.values())[1:], len(data)]
    by_start = dict(zip(sorted(s for s, _, _ in layout.values()), ends, strict=True))
    first = min(s for s, _, _ in layout.values())
    assert all(c.dtype is None and c.tensor is None for c in chunks if c.offset < first)
    for name, (s, n, t) in layout.items():
        mine = [c for c in chunks if c.tensor == name]
        step = piece // 2 if HINT[t] == "BF16" else piece  # BF16: as many elements as an F32 piece
        assert [(c.offset, c.part) for c in mine] == [(o, i) for i, o in enumerate(range(s, by_start[s], step))]
        assert mine[-1].offset + len(mine[-1].data) >= s + n  # the range covers the tensor (+ padding)
        assert all(c.dtype == HINT[t] for c in mine)
        if HINT[t] is not None:
            assert all(len(c.data) % ELEM[t] == 0 for c in mine)


LAYOUT = [("token_embd.weight", F32, (256, 300)), ("blk.0.attn_norm.weight", F32, (256,)),
          ("blk.0.attn_q.weight", Q8_0, (256, 256)), ("blk.0.ffn_up.weight", F16, (256, 130)),
          ("blk.0.ffn_down.weight", BF16, (130, 256)), ("pos", I32, (7,)), ("output.weight", Q8_0, (256, 96))]


@pytest.mark.parametrize("alignment", [None, 1, 16, 64, 4096])
@pytest.mark.parametrize("version", [2, 3])
def test_tiles_with_hints_and_alignment(alignment: int | None, version: int) -> None:
    data, layout = write_gguf(LAYOUT, alignment=alignment, version=version)
    chunks = split(data)
    assert_tiles(chunks, data)
    check_tensors(chunks, data, layout, SMALL_PARAMS)
    if alignment:
        assert all(s % alignment == 0 for s, _, _ in layout.values())


def test_large_tensor_default_params_four_mib_pieces() -> None:
    data, layout = write_gguf([("a", F32, (1024, 2300)), ("b", Q8_0, (4096, 512)), ("c", F16, (10,))])
    chunks = split(data, DEFAULT)
    assert_tiles(chunks, data)
    check_tensors(chunks, data, layout, DEFAULT)
    assert [len(c.data) for c in chunks if c.tensor == "a"] == [4 * MiB, 4 * MiB, 1024 * 2300 * 4 - 8 * MiB]
    assert len(chunks[0].data) == layout["a"][0]  # one header chunk: metadata, infos, padding


def test_registry_and_small_files() -> None:
    data, _ = write_gguf([("t", F32, (8,))])
    assert default_registry().select(b"model.gguf", data[:65536]).name == "gguf"
    assert default_registry().select(b"anything", data[:65536]).name == "gguf"
    assert [(c.offset, len(c.data)) for c in split(data, DEFAULT)] == [(0, len(data))]


def _corruptions(data: bytes, rnd: random.Random) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(150):
        b = bytearray(data)
        for _ in range(rnd.randint(1, 6)):
            b[rnd.randrange(min(len(b), 9000))] = rnd.randrange(256)
        out.append(bytes(b))
    out += [data[:rnd.randrange(len(data))] for _ in range(40)]
    for field, fmt, value in [(4, "<I", 1), (4, "<I", 0x03000000), (8, "<Q", 1 << 60), (16, "<Q", 1 << 60),
                              (8, "<Q", 5000), (16, "<Q", 5000), (24, "<Q", 1 << 63)]:
        b = bytearray(data)
        struct.pack_into(fmt, b, field, value)  # version, counts, first key length
        out.append(bytes(b))
    return out


def test_hostile_headers_never_raise_and_still_tile() -> None:
    rnd = random.Random(5)
    data, _ = write_gguf(LAYOUT, alignment=64)
    n_plain = 0
    for bad in _corruptions(data, rnd):
        chunks = split(bad)
        assert_tiles(chunks, bad)
        n_plain += all(c.dtype is None for c in chunks)
    assert n_plain > 40  # at least the truncations and absurd counts fell back to CDC


def _with_offset(tensors: list[tuple[str, int, tuple[int, ...]]], index: int, new: int) -> bytes:
    """The file with tensor ``index``'s info offset field overwritten."""
    data, _ = write_gguf(tensors)
    name = tensors[index][0].encode()
    pos = data.index(gstr(name)) + len(gstr(name))
    n_dims = struct.unpack_from("<I", data, pos)[0]
    b = bytearray(data)
    struct.pack_into("<Q", b, pos + 4 + 8 * n_dims + 4, new)
    return bytes(b)


@pytest.mark.parametrize("case", ["past_eof", "overlap", "reorder", "huge", "duplicate_zero"])
def test_lying_offsets(case: str) -> None:
    tensors = [("a", F32, (64, 64)), ("b", F16, (64, 64)), ("c", Q8_0, (64, 64)), ("d", F32, (0,))]
    data, layout = write_gguf(tensors)
    new = {"past_eof": len(data), "overlap": 32, "reorder": 0, "huge": 1 << 63, "duplicate_zero": 0}[case]
    bad = _with_offset(tensors, {"past_eof": 1, "overlap": 1, "reorder": 2, "huge": 0, "duplicate_zero": 3}[case], new)
    chunks = split(bad)
    assert_tiles(chunks, bad)
    if case in ("past_eof", "overlap", "huge"):
        assert all(c.dtype is None for c in chunks)  # structure rejected: generic CDC
    if case == "duplicate_zero":  # an empty tensor sharing an offset is fine
        check_tensors(chunks, bad, {k: v for k, v in layout.items() if k != "d"}, SMALL_PARAMS)


def test_backup_restore_byte_identical(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.gguf").write_bytes(write_gguf([("a", F32, (1024, 1100)), ("q", Q8_0, (1024, 256))])[0])
    (src / "odd.gguf").write_bytes(write_gguf(LAYOUT, alignment=1)[0])
    res = repo.backup([src])
    assert not res.errors
    repo.restore(res.snapshot.id, tmp_path / "out")
    assert tree_digest(tmp_path / "out" / "src") == tree_digest(src)


# -- byte orders, ggml's whole type table, strict sizes --------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_big_endian_files_parse_and_split_by_tensor_without_hints(version: int) -> None:
    le, layout = write_gguf(LAYOUT, alignment=64, version=version)
    be, layout_be = write_gguf(LAYOUT, alignment=64, version=version, o=">")
    assert layout == layout_be and len(le) == len(be)
    assert struct.unpack_from("<I", be, 4)[0] == version << 24  # what a little-endian reader sees
    for strict in (False, True):
        h = gguf_header(io.BytesIO(be), len(be), strict=strict)
        assert (h.byte_order, h.version, h.alignment) == ("big", version, 64)
        assert h.tensors == gguf_header(io.BytesIO(le), len(le)).tensors and h.warnings == []
    assert gguf_header(io.BytesIO(le), len(le)).byte_order == "little"
    assert default_registry().select(b"x", be[:65536]).name == "gguf"
    chunks = split(be)
    assert_tiles(chunks, be)
    le_chunks = split(le)
    bf16 = {c.tensor for c in le_chunks if c.dtype == "BF16"}  # cut like F32 only with the hint
    assert [(c.offset, c.tensor, c.part) for c in chunks if c.tensor not in bf16] == [
        (c.offset, c.tensor, c.part) for c in le_chunks if c.tensor not in bf16]
    assert all(c.dtype is None for c in chunks)  # hints describe little-endian data only


@pytest.mark.parametrize("gtype", sorted(GGML_TYPES))
def test_every_ggml_type_passes_strict_with_its_block_size(gtype: int) -> None:
    tname, block, size = GGML_TYPES[gtype]
    tensors = [("w", gtype, (block * 2, 3)), ("after", F32, (5,))]
    data, layout = write_gguf(tensors)
    assert layout["w"][1] == 6 * size
    for strict in (False, True):
        h = gguf_header(io.BytesIO(data), len(data), strict=strict)
        assert h.tensors == tensors and h.warnings == []
    if block > 1:  # a row that is not a whole number of blocks
        bad, _ = write_gguf([("w", gtype, (block + 1, 3)), ("after", F32, (5,))])
        if gtype not in (F16, BF16):
            gguf_header(io.BytesIO(bad), len(bad))
        with pytest.raises(ValueError, match=rf"tensor 'w': dims \[{block + 1}, 3\] of {tname}: dims\[0\] is not"):
            gguf_header(io.BytesIO(bad), len(bad), strict=True)


def test_truncated_or_reshaped_files_fail_strict_naming_the_tensor() -> None:
    data, layout = write_gguf(LAYOUT)
    for strict in (False, True):
        assert gguf_header(io.BytesIO(data), len(data), strict=strict).tensors[2] == ("blk.0.attn_q.weight", Q8_0,
                                                                                      (256, 256))
    cut = data[:layout["output.weight"][0] + 100]  # into the last tensor (Q8_0)
    assert len(gguf_header(io.BytesIO(cut), len(cut)).tensors) == len(LAYOUT)  # lenient: quantised ranges unchecked
    with pytest.raises(ValueError, match=r"tensor 'output.weight': 26112 bytes of Q8_0 .* run past the end"):
        gguf_header(io.BytesIO(cut), len(cut), strict=True)
    cut = data[:layout["blk.0.ffn_up.weight"][0] + 10]  # into an F16 tensor: the ones after it start past EOF
    for strict in (False, True):
        with pytest.raises(ValueError, match=r"tensor 'blk\.0\.ffn_down\.weight' starts past the end"):
            gguf_header(io.BytesIO(cut), len(cut), strict=strict)
    # a shape edited in the header: (256, 256) -> (256, 512) of Q8_0 runs into the next tensor
    info = gstr(b"blk.0.attn_q.weight") + struct.pack("<I2Q", 2, 256, 256)
    bad = data.replace(info, gstr(b"blk.0.attn_q.weight") + struct.pack("<I2Q", 2, 256, 512))
    with pytest.raises(ValueError, match=r"tensor 'blk\.0\.ffn_up\.weight' at offset \d+, but the size of tensor "
                                         r"'blk\.0\.attn_q\.weight' \(Q8_0 \[256, 512\]\) puts it at"):
        gguf_header(io.BytesIO(bad), len(bad), strict=True)


def test_a_gap_between_tensors_is_a_strict_failure() -> None:
    tensors: list[tuple[str, int, tuple[int, ...]]] = [("a", F32, (64, 64)), ("q", Q8_0, (64, 64))]
    _, layout = write_gguf(tensors)
    bad = _with_offset(tensors, 1, layout["q"][0] - layout["a"][0] + 64) + bytes(64)
    assert gguf_header(io.BytesIO(bad), len(bad)).tensors[1] == ("q", Q8_0, (64, 64))
    with pytest.raises(ValueError, match=r"tensor 'q' at offset 16448, but the size of tensor 'a' \(F32 \[64, 64\]\)"
                                         r" puts it at 16384"):
        gguf_header(io.BytesIO(bad), len(bad), strict=True)


def test_an_unknown_type_is_a_warning_and_still_splits_by_tensor() -> None:
    tensors = [("a", F32, (64,)), ("future", 99, (1024, 8)), ("b", Q8_0, (64, 2))]
    data, layout = write_gguf(tensors)
    for strict in (False, True):
        h = gguf_header(io.BytesIO(data), len(data), strict=strict)
        assert h.tensors == tensors
        assert len(h.warnings) == 1 and "'future'" in h.warnings[0] and "type 99" in h.warnings[0]
    chunks = split(data)
    assert_tiles(chunks, data)
    future = [c for c in chunks if c.tensor == "future"]
    assert future[0].offset == layout["future"][0] and all(c.dtype is None for c in future)
    assert [c.tensor for c in chunks if c.offset >= layout["a"][0]] == ["a", *["future"] * len(future), "b"]
