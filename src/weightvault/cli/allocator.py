"""Process-wide allocator settings for the ``weightvault`` command (never for a library user's
process: a training job that imports ``weightvault.api`` keeps its own malloc behaviour).

glibc serves allocations of 128 KiB and more (raising the cut-off dynamically up to 32 MiB) with a
fresh ``mmap`` that ``free`` unmaps again, and trims the heap top back to the kernel. A backup
allocates chunk-sized buffers (up to a few MiB) thousands of times a second, so each one arrived as
new pages the kernel had to fault in and zero; on a VM that hands freed memory back to its host
each such page also faults on the host. Serving them from the heap and keeping freed memory there
cut a 3.2 GB backup's kernel time from 4.1-4.4 s to 2.4-2.8 s on this project's machines (wall
10.99-11.86 s -> 9.58-10.64 s, peak RSS 204-220 -> 227-229 MiB; docs/BENCHMARKS.md).
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["MMAP_THRESHOLD", "tune_allocator"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 << 20  # freed heap memory kept for reuse before any is given back


def tune_allocator() -> bool:
    """Apply the settings above where the C library is glibc; True if it did. Never raises."""
    try:
        # os.confstr and the process's own symbols, not platform.libc_ver() (which reads the
        # interpreter's binary) and ctypes.util.find_library (which runs ldconfig): ~70 ms of every
        # command's start-up.
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError, ValueError):
        return False
