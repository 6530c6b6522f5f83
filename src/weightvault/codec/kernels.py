"""The per-element loops of the float codecs: the byte-plane split and join (with the one-bit
rotation) and the BF16 cast residual, in compiled code where it was built.

``weightvault.codec._kernels`` (C, ``src/weightvault/codec/_kernels.c``, built by ``pip install``
where a C compiler is present) runs each loop once over the data with the GIL released, 4-6x
faster per core than the NumPy passes below (a strided byte copy plus shifts, each through
memory). Where it was not built, the NumPy twins run; both compute the same bytes (tests compare
them). ``COMPILED`` says which one this process uses; ``WEIGHTVAULT_KERNELS=numpy`` forces the
twins (for the tests and for before/after measurements).

Contracts (``n = len(src) // k``; the elements are little-endian words of ``k`` bytes):

* ``split(src, k, rotate, planes, base=None, mode=NONE)``: ``planes`` (``k * n`` writable bytes)
  receives plane ``j`` at ``[j * n, (j + 1) * n)``: byte ``j`` of every element (first less the
  same element of ``base`` modulo ``2**(8k)`` with ``mode=SUB``, or XORed with it with
  ``mode=XOR``), rotated left by one bit when ``rotate``. Bytes of ``src`` (and ``base``) past the
  last whole element are not read.
* ``join(planes, rotate, out, base=None, mode=NONE)``: the inverse: ``out`` (``k * n`` writable
  bytes, ``k = len(planes)``) receives element ``i`` built from byte ``i`` of each plane, rotated
  right by one bit when ``rotate``, then plus (``SUB``) or XOR (``XOR``) element ``i`` of ``base``.
* ``concat(parts)``: ``b"".join(parts)``; compiled, the copy runs without the GIL (a pack of
  32 MiB is a fresh mapping whose pages the kernel faults in and zeroes as they are written).
* ``bf16_xor(a, base, out)``: ``out[i] = a[i] XOR bf16(base[i])`` over 16-bit elements of ``a``,
  where ``bf16(x) = ((x + 0x7FFF + ((x >> 16) & 1)) mod 2**32) >> 16`` of ``base``'s 32-bit
  elements (round to nearest, ties to even; docs/FORMAT.md, codec CAST).

Each raises ValueError, before writing anything, when a length does not fit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["COMPILED", "NONE", "SUB", "XOR", "bf16_xor", "concat", "join", "split"]

Buffer = bytes | bytearray | memoryview | np.ndarray

_UINT: dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
#: how ``split`` and ``join`` combine each element with ``base``'s (the delta codecs)
NONE, SUB, XOR = 0, 1, 2


def _base_words(base: Buffer | None, mode: int, n: int, k: int) -> np.ndarray | None:
    if mode not in (NONE, SUB, XOR):
        raise ValueError(f"mode {mode} is not 0 (none), 1 (difference) or 2 (XOR)")
    if mode == NONE:
        return None
    if base is None:
        raise ValueError("a difference or XOR needs a base")
    b = np.frombuffer(base, dtype=np.uint8)
    if b.size < n * k:
        raise ValueError(f"base has {b.size} bytes, expected at least {n * k}")
    return b[: n * k].view(_UINT[k])


def _np_split(src: Buffer, k: int, rotate: bool, planes: Buffer, base: Buffer | None = None,
              mode: int = NONE) -> None:
    if k not in _UINT:
        raise ValueError(f"element size {k} not supported")
    n = np.frombuffer(src, dtype=np.uint8).size // k
    out = np.frombuffer(planes, dtype=np.uint8)
    if out.size != n * k:
        raise ValueError(f"planes buffer has {out.size} bytes, expected {n * k}")
    b = _base_words(base, mode, n, k)
    words = np.frombuffer(src, dtype=_UINT[k], count=n)
    if b is not None:
        words = words - b if mode == SUB else words ^ b
    if rotate:
        top = words >> (8 * k - 1)
        words = words << 1
        words |= top
    np.copyto(out.reshape(k, n), words.view(np.uint8).reshape(n, k).T)


def _np_join(planes: Sequence[Buffer], rotate: bool, out: Buffer, base: Buffer | None = None,
             mode: int = NONE) -> None:
    k = len(planes)
    if k not in _UINT:
        raise ValueError(f"{k} planes: element size not supported")
    dst = np.frombuffer(out, dtype=np.uint8)
    n = dst.size // k
    if dst.size != n * k:
        raise ValueError(f"output of {dst.size} bytes is not whole {k}-byte elements")
    arrays = [np.frombuffer(p, dtype=np.uint8) for p in planes]
    for j, a in enumerate(arrays):
        if a.size != n:
            raise ValueError(f"plane {j} has {a.size} bytes, expected {n}")
    b = _base_words(base, mode, n, k)
    grid = dst.reshape(n, k)
    for j, a in enumerate(arrays):
        grid[:, j] = a
    if rotate:
        words = dst.view(_UINT[k])
        bottom = words << (8 * k - 1)
        words >>= 1
        words |= bottom
    if b is not None:
        words = dst.view(_UINT[k])
        if mode == SUB:
            words += b  # wraps modulo 2**(8k)
        else:
            words ^= b


def _np_bf16_xor(a: Buffer, base: Buffer, out: Buffer) -> None:
    x16 = np.frombuffer(a, dtype=np.uint8)
    b = np.frombuffer(base, dtype=np.uint8)
    dst = np.frombuffer(out, dtype=np.uint8)
    n = x16.size // 2
    if x16.size % 2 or b.size != 4 * n or dst.size != x16.size:
        raise ValueError(f"cast of {x16.size} bytes needs a base of twice as many and an output of as many"
                         f" (got {b.size} and {dst.size})")
    x = b.view("<u4")
    r = (x >> 16) & 1
    r += 0x7FFF
    r += x  # wraps modulo 2**32, as the format says
    r >>= 16
    np.bitwise_xor(x16.view("<u2"), r.astype("<u2"), out=dst.view("<u2"))


def _np_concat(parts: Sequence[Buffer]) -> bytes:
    return b"".join(p.data if isinstance(p, np.ndarray) else p for p in parts)


_split: Callable[[Buffer, int, bool, Buffer, Buffer | None, int], None] = _np_split
_join: Callable[[Sequence[Buffer], bool, Buffer, Buffer | None, int], None] = _np_join
_bf16_xor: Callable[[Buffer, Buffer, Buffer], None] = _np_bf16_xor
_concat: Callable[[Sequence[Buffer]], bytes] = _np_concat
COMPILED = False
if os.environ.get("WEIGHTVAULT_KERNELS", "") != "numpy":
    try:
        from weightvault.codec import _kernels
    except ImportError:  # not built here: the NumPy twins above
        pass
    else:
        _split, _join, _bf16_xor, _concat = _kernels.split, _kernels.join, _kernels.bf16_xor, _kernels.concat
        COMPILED = True


def split(src: Buffer, k: int, rotate: bool, planes: Buffer, base: Buffer | None = None, mode: int = NONE) -> None:
    """See the module docstring."""
    _split(src, k, rotate, planes, base, mode)


def join(planes: Sequence[Buffer], rotate: bool, out: Buffer, base: Buffer | None = None, mode: int = NONE) -> None:
    """See the module docstring."""
    _join(planes, rotate, out, base, mode)


def bf16_xor(a: Buffer, base: Buffer, out: Buffer) -> None:
    """See the module docstring."""
    _bf16_xor(a, base, out)


def concat(parts: Sequence[Buffer]) -> bytes:
    """See the module docstring."""
    return _concat(parts)
