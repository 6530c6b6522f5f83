"""Restricted, non-executing scan of a ``torch.save`` pickle: storage dtypes and tensor structure.

Nothing is unpickled or imported: ``pickletools.genops`` only decodes opcodes, and a small symbolic
machine tracks strings, numbers, globals, tuples, the memo, dicts and lists (``SETITEM(S)``,
``collections.OrderedDict()``, ``APPEND(S)``), storage persistent ids and the REDUCE calls that
rebuild tensors. Other opcodes get their documented stack effect with opaque values; an unknown
callable gives an opaque object keeping its name, arguments and pickled state.

Storage persistent id: ``('storage', torch.<X>Storage | torch.storage.UntypedStorage, key,
location, numel[, view_metadata])``, ``numel`` in elements (typed) or bytes (untyped). Tensors:
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])``,
``_rebuild_tensor_v3(..., hooks, dtype[, meta])`` for dtypes without a typed storage class, both
maybe wrapped by ``_rebuild_parameter(_with_state)`` or ``torch._tensor._rebuild_from_type_v2``.
``scan_storage_dtypes`` (chunk hints) and ``scan_tensors`` (validation) share one pass.
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass, field

from weightvault.chunking.base import DTYPE_SIZES

__all__ = [
    "ELEMENT_SIZES",
    "MAX_OPS",
    "OPAQUE",
    "TORCH_DTYPES",
    "PickleTensors",
    "PickledDict",
    "PickledGlobal",
    "PickledList",
    "PickledObject",
    "StorageRef",
    "TensorRef",
    "decode",
    "scan_storage_dtypes",
    "scan_tensors",
]

MAX_OPS = 20_000_000  # opcode budget; a larger pickle gets no hints and no structure
MAX_VISITS = 5_000_000  # nodes visited while naming tensors (shared sub-objects are visited per reference)
MAX_DEPTH = 1000  # nesting depth followed while naming tensors (cycles end here)

# Legacy typed storages: ('storage', torch.<X>Storage, key, location, numel).
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL", "ComplexFloatStorage": "C64", "ComplexDoubleStorage": "C128",
}
# torch dtype globals (``torch float32``), used with ``torch.storage UntypedStorage``.
TORCH_DTYPES: dict[str, str] = {
    "float32": "F32", "float": "F32", "float64": "F64", "double": "F64", "float16": "F16",
    "half": "F16", "bfloat16": "BF16", "int64": "I64", "long": "I64", "int32": "I32", "int": "I32",
    "int16": "I16", "short": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16",
    "uint32": "U32", "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "complex64": "C64", "cfloat": "C64", "complex128": "C128", "cdouble": "C128", "complex32": "C32",
    "chalf": "C32", "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0", "float4_e2m1fn_x2": "F4_X2",
}
# element sizes: the codecs' DTYPE_SIZES and dtypes validated by size only (never a codec hint)
ELEMENT_SIZES: dict[str, int] = {**DTYPE_SIZES, "C64": 8, "C128": 16, "C32": 4, "F8_E4M3FNUZ": 1,
                                 "F8_E5M2FNUZ": 1, "F8_E8M0": 1, "F4_X2": 1}
_TENSOR_REBUILDS = frozenset({"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"})
_PARAM_REBUILDS = frozenset({"_rebuild_parameter", "_rebuild_parameter_with_state"})
_PLAIN_TENSOR_TYPES = frozenset({"torch.Tensor", "torch.nn.parameter.Parameter", "torch.nn.parameter.Buffer"})
_DICT_TYPES = frozenset({"collections.OrderedDict", "collections.defaultdict", "builtins.dict"})
_STRING_OPS = frozenset({
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
})
_INT_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_CONSTS: dict[str, object] = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


class Opaque:
    """A value the scan does not model."""


OPAQUE = Opaque()
_MARK = object()


@dataclass(frozen=True, slots=True)
class PickledGlobal:
    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, slots=True)
class StorageRef:
    """One storage persistent id: ``numel`` units of ``unit`` bytes (None: unknown storage class)."""

    key: str
    storage_type: str  # e.g. "torch.FloatStorage"
    dtype: str | None  # a typed storage's dtype; None for UntypedStorage or an unknown class
    numel: int | None
    unit: int | None  # bytes per numel: the dtype's size, 1 for UntypedStorage

    @property
    def nbytes(self) -> int | None:
        return None if self.numel is None or self.unit is None else self.numel * self.unit


@dataclass(frozen=True, slots=True, eq=False)
class TensorRef:
    """A tensor rebuilt from a storage: ``dtype`` None when the scan does not know it."""

    storage: StorageRef
    dtype: str | None
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def needed_bytes(self) -> int | None:
        """Bytes of the storage this view reaches (offset + furthest element + 1), None if unknown."""
        if self.dtype is None:
            return None
        if any(n == 0 for n in self.shape):
            return 0
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        return (last + 1) * ELEMENT_SIZES[self.dtype]


@dataclass(slots=True)
class PickledDict:
    items: list[tuple[object, object]] = field(default_factory=list)


@dataclass(slots=True)
class PickledList:
    items: list[object] = field(default_factory=list)


@dataclass(slots=True)
class PickledObject:
    """An object the scan does not model: its callable's name, arguments and later pickled parts."""

    cls: str
    args: object = ()
    state: object = None
    items: list[tuple[object, object]] = field(default_factory=list)
    list_items: list[object] = field(default_factory=list)
    rebuild: bool = False  # a torch rebuild function the scan cannot follow


@dataclass(slots=True)
class PickleTensors:
    """What ``scan_tensors`` found: named tensors in pickle order (a tensor reachable by two paths
    has two names), every tensor and storage referenced, warnings, and whether the pickle decoded."""

    named: list[tuple[str, TensorRef]]
    tensors: list[TensorRef]
    storages: dict[str, StorageRef]
    warnings: list[str]
    readable: bool
    end: int  # offset just after STOP (-1 if not readable)


class _Scan:
    def __init__(self) -> None:
        self.stack: list[object] = []
        self.memo: dict[int, object] = {}
        self.found: dict[str, set[str | None]] = {}
        self.storages: dict[str, StorageRef] = {}
        self.tensors: list[TensorRef] = []
        self.warnings: list[str] = []

    def pop(self) -> object:
        return self.stack.pop()  # IndexError on underflow: a malformed pickle

    def top(self) -> object:
        return self.stack[-1]

    def pop_mark(self) -> list[object]:
        items: list[object] = []
        while True:
            v = self.pop()
            if v is _MARK:
                items.reverse()
                return items
            items.append(v)

    def record(self, key: str, dtype: str | None) -> None:
        self.found.setdefault(key, set()).add(dtype)  # several dtypes for one key: no hint

    def warn(self, msg: str) -> None:
        if msg not in self.warnings and len(self.warnings) < 100:
            self.warnings.append(msg)

    def tuple_built(self, items: list[object]) -> tuple[object, ...]:
        """Attach a dtype global to untyped storages built in the same tuple (rebuild_tensor_v3)."""
        dtypes = {TORCH_DTYPES.get(v.name) for v in items
                  if isinstance(v, PickledGlobal) and v.module == "torch" and v.name in TORCH_DTYPES}
        if len(dtypes) == 1:
            (dt,) = dtypes
            for v in items:
                if isinstance(v, StorageRef) and v.dtype is None and v.unit == 1:
                    self.record(v.key, dt)
        return tuple(items)

    def persid(self, pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            return OPAQUE
        stype, raw_key = pid[1], pid[2]
        key: object = str(raw_key) if isinstance(raw_key, int) else raw_key
        if not isinstance(key, str) or not isinstance(stype, PickledGlobal):
            return OPAQUE
        numel = pid[4] if len(pid) >= 5 and isinstance(pid[4], int) and not isinstance(pid[4], bool) else None
        if len(pid) >= 6 and pid[5] is not None:
            self.warn(f"storage {key!r} is a legacy storage view: its bounds are not checked")
            numel = None
        if stype.name == "UntypedStorage":
            self.found.setdefault(key, set())
            ref = StorageRef(key, str(stype), None, numel, 1)
        else:
            dtype = _STORAGE_DTYPES.get(stype.name) if stype.module == "torch" else None
            self.record(key, dtype)
            ref = StorageRef(key, str(stype), dtype, numel, ELEMENT_SIZES[dtype] if dtype else None)
        old = self.storages.setdefault(key, ref)
        if old != ref:
            self.warn(f"storage {key!r} is recorded twice, differently ({old.storage_type} {old.numel}, "
                      f"{ref.storage_type} {ref.numel})")
        return ref

    def tensor(self, fn: PickledGlobal, args: object) -> object:
        """A ``_rebuild_tensor*`` call, or an opaque rebuild if its arguments are not understood."""
        if not (isinstance(args, tuple) and len(args) >= 4):
            return PickledObject(str(fn), args, rebuild=True)
        storage, offset, shape, stride = args[:4]
        if not (isinstance(storage, StorageRef) and isinstance(offset, int) and not isinstance(offset, bool)
                and offset >= 0 and isinstance(shape, tuple) and _int_tuple(shape) and isinstance(stride, tuple)
                and _int_tuple(stride) and len(shape) == len(stride)):
            return PickledObject(str(fn), args, rebuild=True)
        dtype = storage.dtype
        if fn.name == "_rebuild_tensor_v3":
            dt = args[6] if len(args) > 6 else None
            dtype = TORCH_DTYPES.get(dt.name) if isinstance(dt, PickledGlobal) and dt.module == "torch" else None
            if dtype is None:
                self.warn(f"storage {storage.key!r}: dtype {dt} unknown")
        elif dtype is None:
            self.warn(f"storage {storage.key!r}: {storage.storage_type} has no dtype the scan knows")
        t = TensorRef(storage, dtype, offset, shape, stride)
        self.tensors.append(t)
        return t

    def reduce(self, fn: object, args: object) -> object:
        if not isinstance(fn, PickledGlobal):
            return PickledObject("?", args)
        qual = str(fn)
        if fn.module == "torch._utils" and fn.name in _TENSOR_REBUILDS:
            return self.tensor(fn, args)
        if fn.module == "torch._utils" and fn.name in _PARAM_REBUILDS:
            if isinstance(args, tuple) and args and isinstance(args[0], TensorRef):
                return args[0]
            return PickledObject(qual, args, rebuild=True)
        if qual == "torch._tensor._rebuild_from_type_v2" and isinstance(args, tuple) and len(args) >= 3:
            inner, cls = args[0], args[1]
            t = self.reduce(inner, args[2]) if isinstance(inner, PickledGlobal) and inner.name in _TENSOR_REBUILDS \
                else OPAQUE
            if isinstance(t, TensorRef):
                if str(cls) not in _PLAIN_TENSOR_TYPES:
                    self.warn(f"tensor subclass {cls} is read as a plain tensor")
                return t
            return PickledObject(qual, args, rebuild=True)
        if qual in _DICT_TYPES:
            return PickledDict()
        if qual == "torch.Size" and isinstance(args, tuple) and len(args) == 1 and _int_tuple(args[0]):
            return args[0]
        return PickledObject(qual, args, rebuild="rebuild" in fn.name)

    def step(self, op: pickletools.OpcodeInfo, arg: object) -> None:
        name = op.name
        st = self.stack
        if name == "MARK":
            st.append(_MARK)
        elif name in _STRING_OPS or name in _INT_OPS:
            st.append(arg if isinstance(arg, (str, int)) else OPAQUE)
        elif name in _CONSTS:
            st.append(_CONSTS[name])
        elif name in ("BINFLOAT", "FLOAT"):
            st.append(float(arg) if isinstance(arg, (int, float)) else OPAQUE)
        elif name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
            st.append(bytes(arg) if isinstance(arg, (bytes, bytearray)) else OPAQUE)
        elif name == "GLOBAL":
            module, _, gname = str(arg).partition(" ")
            st.append(PickledGlobal(module, gname))
        elif name == "STACK_GLOBAL":
            qual, mod = self.pop(), self.pop()
            st.append(PickledGlobal(mod, qual) if isinstance(mod, str) and isinstance(qual, str) else OPAQUE)
        elif name == "EMPTY_TUPLE":
            st.append(())
        elif name == "TUPLE":
            st.append(self.tuple_built(self.pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            st.append(self.tuple_built([self.pop() for _ in range(int(name[-1]))][::-1]))
        elif name in _PUT_OPS:
            self.memo[int(arg)] = self.top()  # type: ignore[call-overload]
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.top()
        elif name in _GET_OPS:
            st.append(self.memo.get(int(arg), OPAQUE))  # type: ignore[call-overload]
        elif name == "BINPERSID":
            st.append(self.persid(self.pop()))
        elif not self.container(name, arg):
            self.generic(op)

    def container(self, name: str, arg: object) -> bool:
        """Dicts, lists and objects; False for an opcode this does not model."""
        st, top = self.stack, self.top
        if name in ("EMPTY_DICT", "DICT"):
            st.append(PickledDict(_pairs(self.pop_mark()) if name == "DICT" else []))
        elif name in ("SETITEM", "SETITEMS"):
            if name == "SETITEMS":
                pairs = _pairs(self.pop_mark())
            else:
                value, key = self.pop(), self.pop()
                pairs = [(key, value)]
            if isinstance(target := top(), (PickledDict, PickledObject)):
                target.items.extend(pairs)
        elif name in ("EMPTY_LIST", "LIST"):
            st.append(PickledList(self.pop_mark() if name == "LIST" else []))
        elif name in ("APPEND", "APPENDS"):
            values = self.pop_mark() if name == "APPENDS" else [self.pop()]
            if isinstance(target := top(), PickledList):
                target.items.extend(values)
            elif isinstance(target, PickledObject):
                target.list_items.extend(values)
        elif name == "REDUCE":
            args, fn = self.pop(), self.pop()
            st.append(self.reduce(fn, args))
        elif name == "BUILD":
            state = self.pop()
            if isinstance(target := top(), PickledObject):
                target.state = state
        elif name in ("NEWOBJ", "NEWOBJ_EX"):
            _kwargs = self.pop() if name == "NEWOBJ_EX" else None
            args, cls = self.pop(), self.pop()
            st.append(PickledObject(_name(cls), args))
        elif name == "INST":
            st.append(PickledObject(str(arg).replace(" ", "."), tuple(self.pop_mark())))
        elif name == "OBJ":
            items = self.pop_mark()
            st.append(PickledObject(_name(items[0] if items else None), tuple(items[1:])))
        else:
            return False
        return True

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
        self.stack.extend(OPAQUE for _ in op.stack_after)


def _pairs(flat: list[object]) -> list[tuple[object, object]]:
    return list(zip(flat[::2], flat[1::2], strict=False))


def _name(cls: object) -> str:
    return str(cls) if isinstance(cls, PickledGlobal) else "?"


def _int_tuple(v: object) -> bool:
    return isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def decode(data: bytes, start: int = 0) -> tuple[_Scan, object, int]:
    """Decode one pickle from ``data[start:]``: (scan, root value, offset after STOP); ValueError
    (or whatever pickletools raises) on a malformed or truncated pickle."""
    scan = _Scan()
    stream = io.BytesIO(data)
    stream.seek(start)
    for n, (op, arg, pos) in enumerate(pickletools.genops(stream)):
        if n >= MAX_OPS:
            raise ValueError(f"more than {MAX_OPS} opcodes")
        if op.name == "STOP":
            if len(scan.stack) != 1:
                raise ValueError("STOP with a malformed stack")
            assert isinstance(pos, int)
            return scan, scan.stack[0], pos + 1
        scan.step(op, arg)
    raise ValueError("no STOP: truncated")


def scan_storage_dtypes(pickle_bytes: bytes) -> dict[str, str]:
    """Map storage key -> dtype name for every storage whose dtype is unambiguous and one the
    codecs know (``DTYPE_SIZES``). Never executes or imports anything named in the pickle; on any
    decoding error returns {}.
    """
    try:
        scan, _root, _end = decode(pickle_bytes)
    except Exception:  # malformed pickle: hints are optional
        return {}
    out: dict[str, str] = {}
    for key, dtypes in scan.found.items():
        if len(dtypes) == 1:
            (dt,) = dtypes
            if dt in DTYPE_SIZES:
                out[key] = dt
    return out


class _Namer:
    """Names every tensor by its key path from the root (dict keys, list indices joined by ".");
    depth-first in pickle order, with an explicit stack, a visit budget and a depth limit."""

    def __init__(self, scan: _Scan) -> None:
        self.named: list[tuple[str, TensorRef]] = []
        self.warn = scan.warn

    def walk(self, root: object) -> None:
        todo: list[tuple[object, tuple[str, ...], str | None]] = [(root, (), None)]
        deep = False
        visits = 0
        while todo:
            node, path, inside = todo.pop()
            visits += 1
            if visits > MAX_VISITS:
                self.warn(f"more than {MAX_VISITS} objects: tensors beyond them are not named")
                return
            if len(path) > MAX_DEPTH:
                deep = True
                continue
            if isinstance(node, TensorRef):
                self.named.append((".".join(path), node))
                if inside is not None:
                    self.warn(inside)
                continue
            todo.extend(reversed(self.children(node, path, inside)))
        if deep:
            self.warn(f"objects nested deeper than {MAX_DEPTH} (or cyclic) are not followed")

    def children(self, node: object, path: tuple[str, ...],
                 inside: str | None) -> list[tuple[object, tuple[str, ...], str | None]]:
        where = ".".join(path) or "<root>"
        if isinstance(node, (PickledList, tuple)):
            items = node.items if isinstance(node, PickledList) else node
            return [(v, (*path, str(i)), inside) for i, v in enumerate(items)]
        if isinstance(node, PickledDict):
            return [(v, p, inside) for v, p in self.dict_children(node.items, path, where)]
        if not isinstance(node, PickledObject):
            return []
        if node.rebuild:
            self.warn(f"{where}: {node.cls} is not followed")
        inside = inside or (f"{where}: {node.cls} is not followed; tensors inside are named through its "
                            "pickled arguments and state")
        kids: list[tuple[object, tuple[str, ...]]] = []
        if isinstance(node.args, tuple):
            kids += [(v, (*path, str(i))) for i, v in enumerate(node.args)]
        if isinstance(node.state, PickledDict):
            kids += self.dict_children(node.state.items, path, where)
        elif node.state is not None:
            kids.append((node.state, path))
        kids += self.dict_children(node.items, path, where)
        kids += [(v, (*path, str(i))) for i, v in enumerate(node.list_items)]
        return [(v, p, inside) for v, p in kids]

    def dict_children(self, items: list[tuple[object, object]], path: tuple[str, ...],
                      where: str) -> list[tuple[object, tuple[str, ...]]]:
        out: dict[str, object] = {}
        for k, v in items:
            c = k if isinstance(k, str) else str(k) if isinstance(k, (int, float)) or k is None else None
            if c is None:
                self.warn(f"{where}: a key of type {type(k).__name__} is named '?'")
            out[c or "?"] = v
        return [(v, (*path, c)) for c, v in out.items()]


def scan_tensors(pickle_bytes: bytes, start: int = 0) -> PickleTensors:
    """The tensors of the pickle at ``pickle_bytes[start:]``, named by their key path from the root:
    state_dict keys, nested dict keys and list indices joined by "." (a tensor at the root is
    named ""). Never executes or imports anything named in the pickle. A pickle that does not
    decode gives no tensors, ``readable=False`` and a warning; objects the scan cannot follow
    (custom classes, unknown rebuild functions) are warnings naming them."""
    try:
        scan, root, end = decode(pickle_bytes, start)
    except Exception as exc:  # malformed pickle: structure unknown, never a crash
        return PickleTensors([], [], {}, [f"the pickle cannot be read: {exc}"], False, -1)
    namer = _Namer(scan)
    namer.walk(root)
    reached = {id(t) for _, t in namer.named}
    lost = sum(1 for t in scan.tensors if id(t) not in reached)
    if lost:
        scan.warn(f"{lost} tensors are not reachable by a key path")
    return PickleTensors(namer.named, scan.tensors, scan.storages, scan.warnings, True, end)
