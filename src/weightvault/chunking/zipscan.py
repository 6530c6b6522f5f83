"""Where the members of a zip archive lie, checked: shared by the ``.npz`` and torch zip splitters
and by validation.

Zip layout: per member a local header (``PK\\x03\\x04``, 30 fixed bytes with the name and extra
field lengths at 26 and 28, then the name and the extra field), the member's (compressed) data,
an optional data descriptor; then the central directory (at ``ZipFile.start_dir``) and the end
record. Sizes and offsets come from the central directory (``zipfile``); each member's data start
is read from its own local header, since the extra field there may differ from the central one.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from weightvault.chunking.tensor_plan import read_exact

__all__ = ["ZIP_ERRORS", "ZipMember", "check_crcs", "open_zip", "zip_members"]

LOCAL_SIG = b"PK\x03\x04"
# What zipfile may raise on hostile or unsupported archives (encrypted members: RuntimeError,
# unknown compression methods: NotImplementedError).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
              zlib.error, struct.error, ValueError)


@dataclass(frozen=True, slots=True)
class ZipMember:
    """One member: its (compressed) data lies at ``data_start .. data_end`` of the archive."""

    info: zipfile.ZipInfo
    data_start: int
    data_end: int


def open_zip(stream: BinaryIO) -> zipfile.ZipFile:
    """``zipfile.ZipFile`` over the stream (reads the end record and the central directory only);
    ValueError if that fails."""
    try:
        return zipfile.ZipFile(stream)
    except ZIP_ERRORS as exc:
        raise ValueError(f"not a complete zip archive: {exc}") from None


def zip_members(zf: zipfile.ZipFile, stream: BinaryIO, size: int) -> list[ZipMember]:
    """The members of ``zf`` (opened over ``stream``, ``size`` bytes) in file order, after checking
    that the central directory lies inside the file, that every member has a local header naming
    it as the central directory does, and that members neither overlap each other nor reach into
    the central directory; ValueError naming the first problem. Reads the local headers only."""
    start_dir = getattr(zf, "start_dir", None)
    if not isinstance(start_dir, int) or not 0 <= start_dir <= size:
        raise ValueError("the central directory lies outside the file")
    members: list[ZipMember] = []
    prev_end = 0
    for info in sorted(zf.infolist(), key=lambda i: i.header_offset):
        off = info.header_offset
        if off < prev_end or off + 30 > start_dir:
            raise ValueError(f"member {info.filename!r} overlaps another or the central directory")
        stream.seek(off)
        lh = read_exact(stream, 30)
        if len(lh) < 30 or lh[:4] != LOCAL_SIG:
            raise ValueError(f"member {info.filename!r}: bad local header")
        (flags,) = struct.unpack_from("<H", lh, 6)
        nlen, elen = struct.unpack_from("<HH", lh, 26)
        lname = read_exact(stream, nlen)
        if lname.decode("utf-8" if flags & 0x800 else "cp437", "replace") != info.orig_filename:
            raise ValueError(f"member {info.filename!r}: its local header names another file")
        data_start = off + 30 + nlen + elen
        data_end = data_start + info.compress_size
        if info.compress_size < 0 or data_end > start_dir:
            raise ValueError(f"member {info.filename!r} overlaps another or the central directory")
        members.append(ZipMember(info, data_start, data_end))
        prev_end = data_end
    return members


def check_crcs(zf: zipfile.ZipFile) -> None:
    """Read every member in full and check its CRC-32; ValueError naming the first bad one."""
    try:
        bad = zf.testzip()
    except ZIP_ERRORS as exc:
        raise ValueError(f"not a complete zip archive: {exc}") from None
    if bad is not None:
        raise ValueError(f"zip member {bad!r} fails its CRC check")
