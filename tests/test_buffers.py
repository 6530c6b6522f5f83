"""``codec.buffers.uninitialized``: a bytearray of the asked size, without the memset, that the
byte-plane decoder fills completely (a decode must never leave a byte of old memory in a result)."""

from __future__ import annotations

import numpy as np
import pytest

from weightvault.codec import floatplanes
from weightvault.codec.buffers import uninitialized


@pytest.mark.parametrize("n", [0, 1, 4095, 4 << 20])
def test_it_is_a_writable_bytearray_of_the_asked_size(n: int) -> None:
    buf = uninitialized(n)
    assert type(buf) is bytearray and len(buf) == n
    buf[:] = b"\x07" * n
    assert buf.count(7) == n


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        uninitialized(-1)


@pytest.mark.parametrize("tail", [0, 1, 3])
def test_the_byteplane_decoder_fills_every_byte_even_over_reused_memory(tail: int) -> None:
    rng = np.random.default_rng(7)
    data = rng.standard_normal(1 << 18).astype("<f4").tobytes() + bytes(range(1, tail + 1))
    payload = floatplanes.encode(data, 4, 3)
    assert payload is not None
    for _ in range(20):  # freed 1 MiB buffers filled with 0xEE are what the allocator hands back next
        junk = bytearray(b"\xee" * len(data))
        del junk
        assert floatplanes.decode(payload, len(data)) == data
