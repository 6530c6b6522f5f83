"""Restricted, non-executing scan of a ``torch.save`` ``data.pkl`` for storage dtypes.

Nothing is unpickled: ``pickletools.genops`` only decodes opcodes, and a small symbolic stack
tracks the few values that matter (strings, ints, globals, tuples, the memo). Every other opcode
is applied by its documented stack effect with opaque values. The result maps storage keys (the
names of the ``data/<key>`` zip entries) to dtype names from ``DTYPE_SIZES``; it is a hint only,
so any decoding problem yields an empty mapping.
"""

from __future__ import annotations

import pickletools
from dataclasses import dataclass

__all__ = ["MAX_OPS", "scan_storage_dtypes"]

MAX_OPS = 20_000_000  # opcode budget; a data.pkl this large gets no hints

# Legacy typed storages: ('storage', torch.<X>Storage, key, location, numel).
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}
# torch dtype globals (``torch float32``), used with ``torch.storage UntypedStorage``.
_TORCH_DTYPES: dict[str, str] = {
    "float32": "F32", "float": "F32", "float64": "F64", "double": "F64", "float16": "F16",
    "half": "F16", "bfloat16": "BF16", "int64": "I64", "long": "I64", "int32": "I32", "int": "I32",
    "int16": "I16", "short": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16",
    "uint32": "U32", "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
_STRING_OPS = frozenset({
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
})
_INT_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})


class _Opaque:
    """A value the scan does not model."""


_OPAQUE = _Opaque()
_MARK = object()


@dataclass(frozen=True, slots=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True, slots=True)
class _Pid:
    """The result of a BINPERSID on a torch storage tuple."""

    key: str
    dtype: str | None  # None for UntypedStorage: the dtype comes from the enclosing rebuild args


class _Scan:
    def __init__(self) -> None:
        self.stack: list[object] = []
        self.memo: dict[int, object] = {}
        self.found: dict[str, set[str | None]] = {}

    def pop(self) -> object:
        if not self.stack:
            raise ValueError("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[object]:
        items: list[object] = []
        while True:
            v = self.pop()
            if v is _MARK:
                items.reverse()
                return items
            items.append(v)

    def record(self, key: str, dtype: str | None) -> None:
        self.found.setdefault(key, set()).add(dtype)

    def tuple_built(self, items: list[object]) -> tuple[object, ...]:
        """Attach a dtype global to untyped storages built in the same tuple (rebuild_tensor_v3)."""
        dtypes = {_TORCH_DTYPES.get(v.name) for v in items
                  if isinstance(v, _Global) and v.module == "torch" and v.name in _TORCH_DTYPES}
        if len(dtypes) == 1:
            (dt,) = dtypes
            for v in items:
                if isinstance(v, _Pid) and v.dtype is None:
                    self.record(v.key, dt)
        return tuple(items)

    def persid(self, pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            return _OPAQUE
        stype, raw_key = pid[1], pid[2]
        key: object = str(raw_key) if isinstance(raw_key, int) else raw_key
        if not isinstance(key, str) or not isinstance(stype, _Global):
            return _OPAQUE
        if stype.name == "UntypedStorage":
            self.found.setdefault(key, set())
            return _Pid(key, None)
        dtype = _STORAGE_DTYPES.get(stype.name) if stype.module == "torch" else None
        self.record(key, dtype)
        return _Pid(key, dtype)

    def step(self, op: pickletools.OpcodeInfo, arg: object) -> None:
        name = op.name
        st = self.stack
        if name == "MARK":
            st.append(_MARK)
        elif name in _STRING_OPS or name in _INT_OPS:
            st.append(arg if isinstance(arg, (str, int)) else _OPAQUE)
        elif name == "GLOBAL":
            module, _, gname = str(arg).partition(" ")
            st.append(_Global(module, gname))
        elif name == "STACK_GLOBAL":
            qual, mod = self.pop(), self.pop()
            st.append(_Global(mod, qual) if isinstance(mod, str) and isinstance(qual, str) else _OPAQUE)
        elif name == "EMPTY_TUPLE":
            st.append(())
        elif name == "TUPLE":
            st.append(self.tuple_built(self.pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self.pop() for _ in range(n)]
            items.reverse()
            st.append(self.tuple_built(items))
        elif name in _PUT_OPS:
            if not st:
                raise ValueError("memo put on empty stack")
            self.memo[int(arg)] = st[-1]  # type: ignore[call-overload]
        elif name == "MEMOIZE":
            if not st:
                raise ValueError("memo put on empty stack")
            self.memo[len(self.memo)] = st[-1]
        elif name in _GET_OPS:
            st.append(self.memo.get(int(arg), _OPAQUE))  # type: ignore[call-overload]
        elif name == "BINPERSID":
            st.append(self.persid(self.pop()))
        else:
            self.generic(op)

    def generic(self, op: pickletools.OpcodeInfo) -> None:
        """Apply the opcode's documented stack effect with opaque results."""
        before = op.stack_before
        if pickletools.markobject in before:
            self.pop_mark()
            for _ in range(before.index(pickletools.markobject)):
                self.pop()
        else:
            for _ in before:
                self.pop()
        self.stack.extend(_OPAQUE for _ in op.stack_after)


def scan_storage_dtypes(pickle_bytes: bytes) -> dict[str, str]:
    """Map storage key -> dtype name for every storage whose dtype is unambiguous.

    Never executes or imports anything named in the pickle; on any decoding error returns {}.
    """
    scan = _Scan()
    try:
        for n, (op, arg, _pos) in enumerate(pickletools.genops(pickle_bytes)):
            if n >= MAX_OPS:
                return {}
            if op.name == "STOP":
                break
            scan.step(op, arg)
        else:
            return {}  # no STOP: truncated
    except Exception:  # malformed pickle: hints are optional
        return {}
    out: dict[str, str] = {}
    for key, dtypes in scan.found.items():
        if len(dtypes) == 1:
            (dt,) = dtypes
            if dt is not None:
                out[key] = dt
    return out
