"""Tensor-aligned splitting of NumPy ``.npy`` files and ``.npz`` archives.

``.npy``: magic ``\\x93NUMPY``, version byte pair, header length (u16 for v1, u32 for v2/v3), a
Python dict literal ``{'descr', 'fortran_order', 'shape'}`` (read by ``npy_literal``, a bounded
parser of the literal syntax numpy writes: never evaluated), then the raw array data. ``.npz``:
a zip of ``.npy`` members; stored members get the ``.npy`` treatment in place, compressed members
and zip structures become opaque chunks.
Anything inconsistent falls back to generic CDC over the whole file.

``parse_npy_header`` is the one ``.npy`` header parser (lenient for the splitter, ``strict`` for
validation) and ``npz_arrays`` reads an archive's array headers the way validation needs them.
"""

from __future__ import annotations

import re
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

from weightvault.chunking.base import Chunk, ChunkerParams, has_suffix
from weightvault.chunking.tensor_plan import (
    Piece,
    PlanBuilder,
    TensorRange,
    bounded_count,
    file_size,
    read_exact,
    split_or_fallback,
)
from weightvault.chunking.zipscan import ZIP_ERRORS, ZipMember, check_crcs, open_zip, zip_members

__all__ = [
    "MAX_NPY_HEADER", "NPY_MAGIC", "NpyHeader", "NpySplitter", "NpzSplitter", "descr_info", "npy_literal", "npz_arrays",
    "parse_npy_header",
]

NPY_MAGIC = b"\x93NUMPY"
# numpy's np.load refuses headers over 10 000 bytes unless given max_header_size, but np.save writes
# any size (a structured dtype of 600 fields takes ~14 KB); beyond this a header is hostile.
MAX_NPY_HEADER = 16 * 1024 * 1024
_MAX_DEPTH = 32  # brackets nested deeper than this in a header: refused

# Little-endian (or byte-order-free) numeric descrs and their names in Chunk.dtype.
_DESCR_DTYPES: dict[str, str] = {
    "<f8": "F64", "<f4": "F32", "<f2": "F16",
    "<i8": "I64", "<i4": "I32", "<i2": "I16", "|i1": "I8", "<i1": "I8",
    "<u8": "U64", "<u4": "U32", "<u2": "U16", "|u1": "U8", "<u1": "U8",
    "|b1": "BOOL", "<b1": "BOOL",
}
_SIMPLE_DESCR = re.compile(r"[<>|=]([a-zA-Z])(\d+)(\[\w+\])?")
_OBJECT_DESCR = re.compile(r"[<>|=]?O\d*")  # pickled Python objects: '|O' as numpy writes it


# One token of a header: punctuation, a string (numpy writes repr()s; a u prefix from Python 2),
# an integer (Python 2 wrote longs as 3L), or a keyword. The string patterns are "unrolled loops":
# linear even when the closing quote is missing.
_TOKEN = re.compile(
    r"""\s*(?:([\[\](){},:])"""
    r"""|([uU]?(?:'[^'\\\n]*(?:\\.[^'\\\n]*)*'|"[^"\\\n]*(?:\\.[^"\\\n]*)*"))"""
    r"""|(-?\d+)[lL]?\b|(True|False|None)\b)""",
    re.ASCII,  # Python's own whitespace and digits, no others
)
_BLANK = re.compile(r"\s*", re.ASCII)
_KEYWORDS: dict[str, object] = {"True": True, "False": False, "None": None}
_CLOSE = {"[": "]", "(": ")", "{": "}"}

_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_VALID_ESCAPES = frozenset("\\'\"abfnrtv01234567xNuU")  # others Python warns about (and may refuse)


def _string(token: str) -> object:
    """A string token's value, decoded as Python decodes a (non-raw) literal."""
    body = token[1:-1] if token[0] in "'\"" else token[2:-1]
    if "\\" not in body:
        return body
    if any(m.group(1) not in _VALID_ESCAPES for m in _ESCAPE.finditer(body)):
        raise ValueError(f"invalid escape in string {token[:40]!r}")
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape")


class _Literal:
    """A recursive-descent reader of one literal; ValueError naming the offset of the problem."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def token(self) -> re.Match[str]:
        m = _TOKEN.match(self.text, self.pos)
        if m is None:
            raise ValueError(f"unexpected text at offset {self.pos}")
        self.pos = m.end()
        return m

    def value(self, m: re.Match[str], depth: int) -> object:
        p, s, i, k = m.groups()
        if s is not None:
            return _string(s)
        if i is not None:
            return int(i)
        if k is not None:
            return _KEYWORDS[k]
        if p not in _CLOSE:
            raise ValueError(f"unexpected {p!r} at offset {m.start(1)}")
        if depth >= _MAX_DEPTH:
            raise ValueError(f"brackets nested deeper than {_MAX_DEPTH}")
        close, comma = _CLOSE[p], False
        items: list[object] = []
        while (m := self.token()).group(1) != close:
            if items and not comma:
                raise ValueError(f"expected ',' or {close!r} at offset {m.start()}")
            item = self.value(m, depth + 1)
            if p == "{":
                if self.token().group(1) != ":":
                    raise ValueError(f"expected ':' at offset {self.pos}")
                item = (item, self.value(self.token(), depth + 1))
            items.append(item)
            comma = False
            if (m := self.token()).group(1) == close:
                break
            if m.group(1) != ",":
                raise ValueError(f"expected ',' or {close!r} at offset {m.start()}")
            comma = True
        if p == "[":
            return items
        if p == "(":
            return items[0] if len(items) == 1 and not comma else tuple(items)
        try:
            return dict(cast(list[tuple[object, object]], items))
        except TypeError:
            raise ValueError("a dict key is not hashable") from None


def npy_literal(text: str) -> object:
    """The value of a ``.npy`` header's text: the Python literal syntax numpy writes (dicts, lists,
    tuples, strings, integers, True/False/None), read in one pass without building an AST, so a
    header of ``MAX_NPY_HEADER`` bytes costs linear time and memory, brackets nest at most
    ``_MAX_DEPTH`` deep and nothing is evaluated (``ast.literal_eval``, numpy's reader, needs
    ~13 s and ~3 GB for 16 MiB of fields; this ~3 s and ~0.4 GB, a hostile 16 MiB of tiny tokens
    up to ~10 s). Agrees with ``ast.literal_eval`` on every header numpy writes, and also takes
    Python 2's ``3L`` as numpy does. ValueError otherwise."""
    r = _Literal(text)
    v = r.value(r.token(), 0)
    if not _BLANK.fullmatch(text, r.pos):
        raise ValueError(f"unexpected text at offset {r.pos}")
    return v


@dataclass(frozen=True, slots=True)
class NpyHeader:
    """A parsed ``.npy`` header: data begins at ``data_offset`` (relative to the magic) and is
    ``data_length`` bytes of ``itemsize``-byte elements; ``dtype`` is the hint (None if not a
    little-endian numeric type). ``descr`` is the header's descr as text (a structured one as the
    repr of its field list) and ``shape`` the array's shape."""

    data_offset: int
    data_length: int
    itemsize: int
    dtype: str | None
    descr: str = ""
    shape: tuple[int, ...] = ()


def descr_info(descr: object) -> tuple[int, str | None]:
    """(itemsize, dtype hint) of a ``.npy`` descr; ValueError for object dtypes and anything
    whose size cannot be known from the descr alone."""
    if isinstance(descr, str):
        if _OBJECT_DESCR.fullmatch(descr):
            raise ValueError("holds Python objects (pickled data), refused")
        m = _SIMPLE_DESCR.fullmatch(descr)
        if not m:
            raise ValueError(f"unsupported descr {descr!r:.100}")
        n = int(m.group(2))
        return (4 * n if m.group(1) == "U" else n), _DESCR_DTYPES.get(descr)
    if isinstance(descr, list) and descr:  # structured: [(name, descr) | (name, descr, shape), ...]
        total = 0
        for field in descr:
            if not isinstance(field, tuple) or len(field) not in (2, 3):
                raise ValueError("bad structured descr")
            sub, _ = descr_info(field[1])
            count = 1
            if len(field) == 3:
                shape = field[2] if isinstance(field[2], tuple) else (field[2],)
                count = bounded_count(shape, 1 << 40)
            total += sub * count
        return total, None
    raise ValueError(f"unsupported descr {descr!r:.100}")


_NPY_KEYS = {"descr", "fortran_order", "shape"}


def parse_npy_header(read: BinaryIO, available: int, *, strict: bool = False) -> NpyHeader:
    """Parse the header at the stream's position; ``available`` bytes follow it in the file or
    member. ValueError naming the problem if it is not a consistent ``.npy``: magic and version,
    header length, the dict (``npy_literal``, never evaluated), no object dtype, enough data
    for the shape. ``strict`` (validation) also wants exactly numpy's three keys and no bytes
    after the data."""
    pre = read_exact(read, 8)
    if len(pre) < 8 or pre[:6] != NPY_MAGIC or pre[6] not in (1, 2, 3):
        raise ValueError("bad .npy header: no magic string or an unknown version")
    if pre[6] == 1:
        lb = read_exact(read, 2)
        (hlen,) = struct.unpack("<H", lb) if len(lb) == 2 else (-1,)
        fixed = 10
    else:
        lb = read_exact(read, 4)
        (hlen,) = struct.unpack("<I", lb) if len(lb) == 4 else (-1,)
        fixed = 12
    if hlen < 0 or hlen > MAX_NPY_HEADER or fixed + hlen > available:
        raise ValueError(f"bad .npy header: header length {hlen} does not fit ({available} bytes)")
    raw = read_exact(read, hlen)
    if len(raw) != hlen:
        raise ValueError("bad .npy header: truncated")
    try:
        d = npy_literal(raw.decode("utf-8" if pre[6] == 3 else "latin1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"bad .npy header: the header dict does not parse ({exc})"[:300]) from None
    if not isinstance(d, dict) or not isinstance(d.get("fortran_order"), bool):
        raise ValueError("bad .npy header: not a dict with a boolean fortran_order")
    if strict and set(d) != _NPY_KEYS:
        raise ValueError(f"bad .npy header: keys {sorted(map(repr, d))[:8]}, numpy writes {sorted(_NPY_KEYS)}")
    shape = d.get("shape")
    if not isinstance(shape, tuple) or not all(type(x) is int and x >= 0 for x in shape):
        raise ValueError(f"bad .npy header: bad shape {shape!r:.100}")
    descr = d.get("descr")
    itemsize, dtype = descr_info(descr)
    text = descr if isinstance(descr, str) else repr(descr)
    have = available - fixed - hlen
    try:
        length = bounded_count(shape, available) * itemsize
    except ValueError:
        raise ValueError(f"{have} data bytes for shape {shape} of {text} (more needed)") from None
    if length > have:  # bytes after the data are fine: np.save appends arrays that way, np.load reads the first
        raise ValueError(f"{have} data bytes for shape {shape} of {text} ({length} needed)")
    return NpyHeader(fixed + hlen, length, itemsize, dtype, text, shape)


def _plan_npy_at(stream: BinaryIO, plan: PlanBuilder, start: int, end: int, name: str) -> None:
    """Plan a ``.npy`` occupying ``[start, end)``: header, tensor data, trailing bytes."""
    stream.seek(start)
    h = parse_npy_header(stream, end - start)
    plan.whole(start + h.data_offset, f"{name}/__header__" if name else "__header__")
    data_start = start + h.data_offset
    plan.tensors([TensorRange(data_start, data_start + h.data_length, name, h.dtype, h.itemsize)], end)


def plan_npy(stream: BinaryIO) -> list[Piece]:
    """Plan a whole ``.npy`` file; raises on anything malformed."""
    size = file_size(stream)
    plan = PlanBuilder()
    _plan_npy_at(stream, plan, 0, size, "")
    return plan.finish(size)


class NpySplitter:
    """Header chunk, then element-aligned data chunks; CDC for anything that does not parse."""

    name = "npy"

    def accepts(self, name: bytes, head: bytes) -> bool:
        return has_suffix(name, b".npy") or head.startswith(NPY_MAGIC)

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        return split_or_fallback(stream, params, lambda: plan_npy(stream))


def plan_npz(stream: BinaryIO) -> list[Piece]:
    """The chunk plan of a zip of ``.npy`` members; ValueError (or another exception from parsing
    hostile bytes) if the archive's ranges are inconsistent."""
    size = file_size(stream)
    stream.seek(0)
    with zipfile.ZipFile(stream) as zf:
        members = zip_members(zf, stream, size)
    plan = PlanBuilder()
    for m in members:
        info, data_start, data_end = m.info, m.data_start, m.data_end
        plan.opaque(info.header_offset)
        plan.whole(data_start)  # local header: changes with the member's CRC and sizes
        if info.compress_type == zipfile.ZIP_STORED and info.filename.endswith(".npy"):
            before = (len(plan.pieces), plan.pos)
            try:
                _plan_npy_at(stream, plan, data_start, data_end, info.filename[: -len(".npy")])
                continue
            except Exception:  # a member that is not a valid .npy is stored as opaque bytes
                del plan.pieces[before[0]:]
                plan.pos = before[1]
        plan.opaque(data_end)
    plan.opaque(size)  # data descriptors, the central directory and the end record
    return plan.finish(size)


def _member_header(zf: zipfile.ZipFile, stream: BinaryIO, m: ZipMember) -> NpyHeader:
    """A member's ``.npy`` header, parsed strictly. A stored member is read in place (only its
    header bytes), a compressed one through zipfile (only as far as its header)."""
    info = m.info
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise ValueError(f"stored member of {info.compress_size} bytes claims {info.file_size}")
        stream.seek(m.data_start)
        return parse_npy_header(stream, m.data_end - m.data_start, strict=True)
    with zf.open(info) as f:
        return parse_npy_header(cast(BinaryIO, f), info.file_size, strict=True)


def npz_arrays(stream: BinaryIO, size: int, *, check_crc: bool = False) -> dict[str, NpyHeader]:
    """The header of every ``.npy`` member of an ``.npz`` archive of ``size`` bytes, by array name
    (the member name without ``.npy``), for validation: the zip's ranges checked as the splitter
    checks them (``zip_members``), every array header parsed strictly, reading only the end
    record, the central directory, the local headers and the array headers; ``check_crc`` also
    reads every member in full and checks its CRC-32. ValueError naming the problem."""
    with open_zip(stream) as zf:
        members = zip_members(zf, stream, size)
        if check_crc:
            check_crcs(zf)
        out: dict[str, NpyHeader] = {}
        for m in members:
            name = m.info.filename
            if not name.endswith(".npy"):
                continue
            try:
                out[name[: -len(".npy")]] = _member_header(zf, stream, m)
            except ZIP_ERRORS as exc:
                raise ValueError(f"{name[: -len('.npy')]}: {exc}") from None
        return out


def _npz_head(head: bytes) -> bool:
    """A zip whose first member is a ``.npy`` (what ``np.savez`` writes)."""
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return False
    (name_len,) = struct.unpack_from("<H", head, 26)
    return head[30:30 + name_len].endswith(b".npy")


class NpzSplitter:
    """Zip of ``.npy`` members: stored members split like ``.npy`` files; CDC if the zip is off."""

    name = "npz"

    def accepts(self, name: bytes, head: bytes) -> bool:
        return has_suffix(name, b".npz") or _npz_head(head)

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        return split_or_fallback(stream, params, lambda: plan_npz(stream))
