"""Small pickles read as plain values by the non-executing scan (``pickle_scan.decode``).

``scan_value`` gives None, bool, int, float, bytes, str, tuple, list and dict, with an opaque
marker for anything else (the headers of a legacy ``torch.save`` file). ``scan_objects`` also keeps objects:
a class or callable the pickle names becomes an ``Obj`` with its name, arguments and pickled
state, a bare global a ``Name``, so a pickled dataclass (DCP's ``.metadata``) can be read field by
field. ``exact_value`` is the strict form for data that will be handed on (a DCP checkpoint's
pickled objects): plain values only, exactly as pickled, else ValueError. Nothing is imported or
executed; the names are only strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weightvault.chunking.pickle_scan import (
    OPAQUE,
    PickledDict,
    PickledGlobal,
    PickledList,
    PickledObject,
    decode,
)

__all__ = ["MAX_DEPTH", "Name", "Obj", "exact_value", "scan_objects", "scan_value"]

MAX_DEPTH = 50  # deeper values become opaque


@dataclass(frozen=True, slots=True)
class Name:
    """A global the pickle names (``torch.float32``): only its dotted name."""

    name: str


@dataclass(frozen=True, slots=True, eq=False)
class Obj:
    """An object the pickle builds: its class or callable, arguments, BUILD state and set items.
    Compared and hashed by identity, so it can be a dict key as in the pickle."""

    cls: str
    args: object = ()
    state: object = None
    items: dict[object, object] = field(default_factory=dict)

    def field(self, key: str) -> object:
        """``key`` of the object's state (a dataclass's ``__dict__``), or None."""
        return self.state.get(key) if isinstance(self.state, dict) else None


def _plain(v: object, objects: bool, depth: int = 0) -> object:
    if depth > MAX_DEPTH:
        return OPAQUE
    if v is None or isinstance(v, (str, int, float, bool, bytes)):
        return v
    if isinstance(v, (tuple, PickledList)):
        items = [_plain(x, objects, depth + 1) for x in (v if isinstance(v, tuple) else v.items)]
        return tuple(items) if isinstance(v, tuple) else items
    if isinstance(v, PickledDict):
        return _pairs(v.items, objects, depth)
    if objects and isinstance(v, PickledGlobal):
        return Name(str(v))
    if objects and isinstance(v, PickledObject):
        return Obj(v.cls, _plain(v.args, objects, depth + 1), _plain(v.state, objects, depth + 1),
                   _pairs(v.items, objects, depth))
    return OPAQUE


def _pairs(items: list[tuple[object, object]], objects: bool, depth: int) -> dict[object, object]:
    out: dict[object, object] = {}
    for k, x in items:
        key = _plain(k, objects, depth + 1)
        if not objects and not isinstance(key, (str, int, float, bool)):
            continue
        try:
            hash(key)
        except TypeError:
            continue
        out[key] = _plain(x, objects, depth + 1)
    return out


def _decoded(data: bytes, start: int, objects: bool) -> tuple[object, int]:
    try:
        _scan, root, end = decode(data, start)
    except Exception as exc:
        raise ValueError(f"a pickle that cannot be read: {exc}") from None
    return _plain(root, objects), end


def scan_value(data: bytes, start: int = 0) -> tuple[object, int]:
    """The pickle at ``data[start:]`` as plain values (anything else opaque): (value, offset after
    STOP); ValueError if it does not decode."""
    return _decoded(data, start, False)


def scan_objects(data: bytes, start: int = 0) -> tuple[object, int]:
    """As ``scan_value``, with objects as ``Obj`` and globals as ``Name``."""
    return _decoded(data, start, True)


def exact_value(data: bytes) -> object:
    """The whole of ``data`` as one pickle of plain values (None, bool, int, float, bytes, str,
    tuple, list, dict; an ``OrderedDict`` comes back as a dict of the same items in order),
    rebuilt; ValueError naming the first thing that is not one (a class instance, a global, a
    set, an unhashable key), or when the pickle does not decode or bytes follow it."""
    try:
        _scan, root, end = decode(data)
    except Exception as exc:
        raise ValueError(f"a pickle that cannot be read: {exc}") from None
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes after the pickle")
    return _exact(root, 0)


def _exact(v: object, depth: int) -> object:
    if depth > MAX_DEPTH:
        raise ValueError(f"values nested deeper than {MAX_DEPTH} levels")
    if v is None or isinstance(v, (str, int, float, bool, bytes)):
        return v
    if isinstance(v, tuple):
        return tuple(_exact(x, depth + 1) for x in v)
    if isinstance(v, PickledList):
        return [_exact(x, depth + 1) for x in v.items]
    if isinstance(v, PickledDict):
        return _exact_pairs(v.items, depth)
    if isinstance(v, PickledObject) and v.cls == "_codecs.encode" and isinstance(v.args, tuple) \
            and len(v.args) == 2 and isinstance(v.args[0], str) and v.args[1] == "latin1":
        return v.args[0].encode("latin1")  # bytes as protocol 2 pickles them
    if isinstance(v, PickledObject) and v.cls in ("builtins.bytes", "__builtin__.bytes") and v.args == ():
        return b""
    what = f"an object of {v.cls}" if isinstance(v, PickledObject) else (
        f"the global {v}" if isinstance(v, PickledGlobal) else "a value this reader does not rebuild")
    raise ValueError(f"{what}: not a plain value")


def _exact_pairs(items: list[tuple[object, object]], depth: int) -> dict[object, object]:
    out: dict[object, object] = {}
    for k, x in items:
        key = _exact(k, depth + 1)
        try:
            out[key] = _exact(x, depth + 1)
        except TypeError:
            raise ValueError(f"a dict key that cannot be hashed: {type(key).__name__}") from None
    return out
