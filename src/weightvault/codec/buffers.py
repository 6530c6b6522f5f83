"""Output buffers for decoders that fill every byte themselves.

``bytearray(n)`` zeroes its ``n`` bytes while holding the GIL; a decoder about to overwrite all of
them (``floatplanes.decode``) would pay that memset for nothing, on the one thread every restore
worker shares. ``uninitialized`` asks CPython's C API for the buffer without the memset.
"""

from __future__ import annotations

import ctypes

__all__ = ["uninitialized"]

_new = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new.argtypes, _new.restype = [ctypes.c_void_p, ctypes.c_ssize_t], ctypes.py_object


def uninitialized(n: int) -> bytearray:
    """A ``bytearray`` of ``n`` bytes whose content is undefined. The caller must write every
    byte before the buffer is read or leaves it: it may hold what the process freed before."""
    if n < 0:
        raise ValueError(f"buffer size {n} is negative")
    buf: bytearray = _new(None, n)
    return buf
