"""The compiled byte-plane and cast loops compute exactly the bytes of their NumPy twins
(weightvault.codec.kernels), for every element size, with and without the rotation, at any
alignment; and refuse a length that does not fit before writing anything."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.codec import kernels

_kernels: ModuleType | None
try:
    _kernels = importlib.import_module("weightvault.codec._kernels")
except ImportError:  # the first test says why this is wrong here
    _kernels = None

compiled = pytest.mark.skipif(_kernels is None, reason="weightvault.codec._kernels not built")


def test_the_compiled_kernels_are_built_and_used() -> None:
    """scripts/setup builds the extension (it needs a C compiler); without it every float chunk
    would silently take the 4-6x slower NumPy loops."""
    assert _kernels is not None, "weightvault.codec._kernels was not built: run scripts/setup (needs gcc)"
    assert kernels.COMPILED is (os.environ.get("WEIGHTVAULT_KERNELS") != "numpy")


@compiled
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=4099), k=st.sampled_from([2, 4, 8]), rotate=st.booleans(),
       skew=st.integers(0, 7))
def test_split_and_join_match_numpy_and_invert(data: bytes, k: int, rotate: bool, skew: int) -> None:
    assert _kernels is not None
    src = memoryview(bytes(skew) + data)[skew:]  # any alignment of the source
    n = len(data) // k
    ours, twin = bytearray(n * k), bytearray(n * k)
    _kernels.split(src, k, rotate, ours)
    kernels._np_split(src, k, rotate, twin)
    assert ours == twin
    planes = [memoryview(bytes(skew) + bytes(ours[j * n : (j + 1) * n]))[skew:] for j in range(k)]
    back, back_twin = bytearray(n * k + skew), bytearray(n * k)
    _kernels.join(planes, rotate, memoryview(back)[skew:])
    kernels._np_join(planes, rotate, back_twin)
    assert back[skew:] == back_twin == data[: n * k]


@compiled
@settings(max_examples=150, deadline=None)
@given(data=st.data(), k=st.sampled_from([2, 4, 8]), rotate=st.booleans(),
       mode=st.sampled_from([kernels.SUB, kernels.XOR]), skew=st.integers(0, 7))
def test_deltas_within_split_and_join_match_numpy_and_invert(data: st.DataObject, k: int, rotate: bool, mode: int,
                                                             skew: int) -> None:
    """The delta codecs' fused passes: split(src - base) and join(...) + base (or XOR) give the
    planes of the difference and rebuild ``src`` exactly, wrapping modulo 2**(8k)."""
    assert _kernels is not None
    src = data.draw(st.binary(max_size=2051))
    base = memoryview(bytes(skew) + data.draw(st.binary(min_size=len(src), max_size=len(src))))[skew:]
    n = len(src) // k
    ours, twin = bytearray(n * k), bytearray(n * k)
    _kernels.split(src, k, rotate, ours, base, mode)
    kernels._np_split(src, k, rotate, twin, base, mode)
    assert ours == twin
    planes = [bytes(ours[j * n : (j + 1) * n]) for j in range(k)]
    back, back_twin = bytearray(n * k), bytearray(n * k)
    _kernels.join(planes, rotate, back, base, mode)
    kernels._np_join(planes, rotate, back_twin, base, mode)
    assert back == back_twin == src[: n * k]


def test_a_difference_wraps_around() -> None:
    planes = bytearray(4)
    kernels.split((1).to_bytes(4, "little"), 4, False, planes, (2).to_bytes(4, "little"), kernels.SUB)
    assert bytes(planes) == b"\xff\xff\xff\xff"  # 1 - 2 modulo 2**32
    out = bytearray(4)
    kernels.join([planes[j : j + 1] for j in range(4)], False, out, (2).to_bytes(4, "little"), kernels.SUB)
    assert int.from_bytes(out, "little") == 1


def test_rotation_moves_the_sign_to_bit_zero() -> None:
    """The byte-plane format's rotation: plane 0 of F32 -1.0 (0xBF800000) rotated is 0x01."""
    src = np.array([-1.0], dtype="<f4").tobytes()
    planes = bytearray(4)
    kernels.split(src, 4, True, planes)
    assert bytes(planes) == bytes([0x01, 0x00, 0x00, 0x7F])
    out = bytearray(4)
    kernels.join([planes[j : j + 1] for j in range(4)], True, out)
    assert bytes(out) == src


@compiled
@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 600), seed=st.integers(0, 2**32 - 1), skew=st.integers(0, 3))
def test_bf16_xor_matches_numpy(n: int, seed: int, skew: int) -> None:
    assert _kernels is not None
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**32, n, dtype=np.uint32)
    base[: n // 4] |= 0x7F800000  # infinities and NaNs among them
    base[n // 4 : n // 2] = (base[n // 4 : n // 2] & 0xFFFF0000) | 0x8000  # exact ties
    a = rng.integers(0, 2**16, n, dtype=np.uint16).tobytes()
    base_view = memoryview(bytes(skew) + base.astype("<u4").tobytes())[skew:]
    ours, twin = bytearray(2 * n), bytearray(2 * n)
    _kernels.bf16_xor(a, base_view, ours)
    kernels._np_bf16_xor(a, base_view, twin)
    assert ours == twin


def test_bf16_rounds_to_nearest_even() -> None:
    # 1.0 + half an ulp of BF16 (a tie) rounds down to even; one bit more rounds up; NaN stays NaN
    base = np.array([0x3F808000, 0x3F808001, 0x3F818000, 0x7FC00001], dtype="<u4").tobytes()
    out = bytearray(8)
    kernels.bf16_xor(bytes(8), base, out)
    assert np.frombuffer(bytes(out), dtype="<u2").tolist() == [0x3F80, 0x3F81, 0x3F82, 0x7FC0]


@pytest.mark.parametrize("impl", ["compiled", "numpy"])
def test_lengths_that_do_not_fit_are_refused_before_writing(impl: str) -> None:
    if impl == "compiled":
        if _kernels is None:
            pytest.skip("weightvault.codec._kernels not built")
        split, join, bf16_xor = _kernels.split, _kernels.join, _kernels.bf16_xor
    else:
        split, join, bf16_xor = kernels._np_split, kernels._np_join, kernels._np_bf16_xor
    out = bytearray(b"\xaa" * 12)
    with pytest.raises(ValueError, match="expected 8"):
        split(bytes(9), 4, True, out)  # two whole elements need 8 bytes of planes
    with pytest.raises(ValueError, match="not supported"):
        split(bytes(9), 3, True, bytearray(9))
    with pytest.raises(ValueError, match="plane 1 has 2 bytes, expected 3"):
        join([bytes(3), bytes(2), bytes(3), bytes(3)], True, out)
    with pytest.raises(ValueError, match="not supported"):
        join([bytes(4)] * 3, True, out)
    with pytest.raises(ValueError, match="twice as many"):
        bf16_xor(bytes(6), bytes(10), out[:6])
    with pytest.raises(ValueError, match="needs a base"):
        split(bytes(8), 4, False, out[:8], None, kernels.SUB)
    with pytest.raises(ValueError, match="base has 7 bytes, expected at least 8"):
        join([bytes(2)] * 4, False, out[:8], bytes(7), kernels.XOR)
    with pytest.raises(ValueError, match="mode 3"):
        split(bytes(8), 4, False, out[:8], bytes(8), 3)
    assert out == b"\xaa" * 12


@compiled
@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.binary(max_size=300), max_size=12))
def test_concat_is_bytes_join(parts: list[bytes]) -> None:
    """A pack's assembly: the same bytes as b"".join, as a real ``bytes`` object, from any mix of
    buffer types."""
    assert _kernels is not None
    mixed = [p if i % 3 == 0 else bytearray(p) if i % 3 == 1 else memoryview(b"#" + p)[1:] for i, p in enumerate(parts)]
    out = _kernels.concat(mixed)
    assert type(out) is bytes
    assert out == b"".join(parts) == kernels._np_concat(mixed)


def test_concat_refuses_what_is_not_a_buffer() -> None:
    with pytest.raises(TypeError):
        kernels.concat([b"ok", 7])  # type: ignore[list-item]
