"""torch_zip_structure: tensor names, dtypes and shapes of torch.save files read by the
non-executing pickle scan, and strict storage checks on damaged copies.

The fixture tests need no torch (tests/fixtures/torch_structure.json holds what torch says about
every fixture); the tests marked by ``pytest.importorskip("torch")`` build more files with real
torch in tmp_path and compare with the tensors themselves."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import pickletools
import random
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from test_splitter_torchzip import _mutations
from weightvault.chunking import pickle_scan
from weightvault.chunking.pickle_scan import scan_storage_dtypes, scan_tensors
from weightvault.chunking.torchzip import TorchStructure, torch_zip_structure

FIXTURES = Path(__file__).parent / "fixtures"
STRUCTURE: dict[str, dict[str, list[Any]]] = json.loads((FIXTURES / "torch_structure.json").read_text())
ZIP_FIXTURES = sorted(n for n in STRUCTURE if n != "legacy_format.pt")


def read(data: bytes, *, strict: bool = True) -> TorchStructure:
    return torch_zip_structure(io.BytesIO(data), len(data), strict=strict)


def as_json(s: TorchStructure) -> dict[str, list[Any]]:
    return {name: [dt, list(shape)] for name, (dt, shape) in s.tensors.items()}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def rebuild(data: bytes, *, drop: tuple[str, ...] = (),
            change: dict[str, Callable[[bytes], bytes]] | None = None) -> bytes:
    """The archive rewritten by zipfile: members in ``drop`` left out, members in ``change``
    replaced by the function of their bytes, every other member byte-identical."""
    change = change or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        names = src.namelist()
        assert all(n in names for n in (*drop, *change)), (drop, change, names)
        for info in src.infolist():
            if info.filename in drop:
                continue
            raw = src.read(info)
            dst.writestr(info.filename, change[info.filename](raw) if info.filename in change else raw)
    return out.getvalue()


def storage_member(data: bytes, tensor: str) -> str:
    """The ``<archive>/data/<key>`` member holding a tensor, found by the scan (cross-checked by
    the fixture tests, where every name and shape equals torch's)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        (pkl,) = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        scan = scan_tensors(zf.read(pkl))
    (ref,) = [t for n, t in scan.named if n == tensor]
    return f"{pkl[:-len('data.pkl')]}data/{ref.storage.key}"


def pkl_name(data: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        (pkl,) = [n for n in zf.namelist() if n.endswith("/data.pkl")]
    return pkl


# -- fixtures written by real torch (no torch needed here) ----------------------------------------

@pytest.mark.parametrize("name", sorted(STRUCTURE))
def test_fixture_structure_equals_torchs(name: str) -> None:
    s = read(fixture(name))
    assert as_json(s) == STRUCTURE[name]
    assert list(s.tensors) == list(STRUCTURE[name])  # pickle order = the objects' order
    assert s.warnings == []


def test_lenient_and_strict_agree_on_sound_files() -> None:
    for name in STRUCTURE:
        assert read(fixture(name), strict=False) == read(fixture(name), strict=True)


def test_legacy_file_reads_like_a_zip() -> None:
    s = read(fixture("legacy_format.pt"))
    assert s.tensors == {"w": ("F32", (3,))} and s.warnings == []


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, n: int | None = -1) -> bytes:
        out = super().read(n)
        self.bytes_read += len(out)
        return out

    def readinto(self, b: Any) -> int:
        n = super().readinto(b)
        self.bytes_read += n
        return n


def test_storages_are_never_read() -> None:
    data = fixture("mixed_dtypes.pt")  # one 288 KiB storage
    f = CountingReader(data)
    torch_zip_structure(f, len(data), strict=True)
    assert f.bytes_read < 16 * 1024, f.bytes_read


# -- damaged copies --------------------------------------------------------------------------------

def test_missing_storage_names_the_tensor() -> None:
    data = fixture("f32_state.pt")
    bad = rebuild(data, drop=(storage_member(data, "3.weight"),))
    with pytest.raises(ValueError, match=r"tensor '3\.weight': its storage f32_state/data/\d+ is missing"):
        read(bad)
    lenient = read(bad, strict=False)
    assert lenient.tensors == read(data).tensors  # the names still come from data.pkl
    assert any("'3.weight'" in w and "missing" in w for w in lenient.warnings)


def test_missing_shared_storage_names_its_first_tensor() -> None:
    data = fixture("views.pt")
    member = storage_member(data, "t")
    assert member == storage_member(data, "base") == storage_member(data, "block")
    with pytest.raises(ValueError, match=r"tensor 'base'.* is missing"):
        read(rebuild(data, drop=(member,)))


@pytest.mark.parametrize("cut", [lambda b: b[:-4], lambda b: b"", lambda b: b + b"\0" * 64])
def test_storage_of_the_wrong_size_fails(cut: Callable[[bytes], bytes]) -> None:
    data = fixture("checkpoint_adamw.pt")
    member = storage_member(data, "optimizer.state.4.exp_avg")
    bad = rebuild(data, change={member: cut})
    with pytest.raises(ValueError, match=r"tensor 'optimizer\.state\.4\.exp_avg': storage .* holds \d+ bytes, its "
                                         r"record says 384 x 4 \(FloatStorage\)"):
        read(bad)
    assert any("holds" in w for w in read(bad, strict=False).warnings)


def _patch_offset(pkl: bytes, tensor: str, new: int) -> bytes:
    """data.pkl with one tensor's storage offset (a BININT1 after its BINPERSID) replaced."""
    ops = list(pickletools.genops(pkl))
    start = next(i for i, (op, arg, _) in enumerate(ops) if op.name.endswith("UNICODE") and arg == tensor)
    persid = next(i for i in range(start, len(ops)) if ops[i][0].name == "BINPERSID")
    op, _, pos = ops[persid + 1]
    assert op.name == "BININT1" and isinstance(pos, int)
    return pkl[:pos + 1] + bytes([new]) + pkl[pos + 2:]


def test_tensor_reaching_beyond_its_storage_fails() -> None:
    data = fixture("mixed_dtypes.pt")  # view_b = base[16:]: offset 16, 48 of 64 elements
    bad = rebuild(data, change={pkl_name(data): lambda p: _patch_offset(p, "view_b", 17)})
    with pytest.raises(ValueError, match=r"tensor 'view_b' \(F32 \[48\], offset 17, stride \[1\]\) needs 260 bytes "
                                         r"of storage mixed_dtypes/data/10, which holds 256"):
        read(bad)
    assert read(rebuild(data, change={pkl_name(data): lambda p: _patch_offset(p, "view_b", 16)})) == read(data)


def test_renamed_key_gives_other_names() -> None:
    data = fixture("f32_state.pt")
    bad = rebuild(data, change={pkl_name(data): lambda p: p.replace(b"0.weight", b"0.weighX")})
    before, after = read(data), read(bad)
    assert set(before.tensors) ^ set(after.tensors) == {"0.weight", "0.weighX"}
    assert after.tensors["0.weighX"] == before.tensors["0.weight"]


def test_transposed_tensor_gives_another_shape() -> None:
    data = fixture("f32_state.pt")  # 0.weight: size (48, 24), stride (24, 1)
    size, stride = b"K\x30K\x18\x86", b"K\x18K\x01\x86"

    def transpose(p: bytes) -> bytes:
        assert p.count(size) == 1 and p.count(stride) == 1
        return p.replace(size, b"K\x18K\x30\x86").replace(stride, b"K\x01K\x18\x86")

    after = read(rebuild(data, change={pkl_name(data): transpose})).tensors  # still fits its storage
    assert after["0.weight"] == ("F32", (24, 48))
    assert {k: v for k, v in after.items() if k != "0.weight"} == {
        k: v for k, v in read(data).tensors.items() if k != "0.weight"}


@pytest.mark.parametrize("damage", [lambda p: p[:-1], lambda p: b"\x80\x02garbage", lambda p: b""])
def test_unreadable_pickle_gives_no_tensors_and_a_warning(damage: Callable[[bytes], bytes]) -> None:
    data = fixture("f32_state.pt")
    bad = rebuild(data, change={pkl_name(data): damage})
    for strict in (True, False):
        s = read(bad, strict=strict)
        assert s.tensors == {} and any("cannot be read" in w for w in s.warnings)


def test_unreferenced_storage_is_a_warning() -> None:
    data = fixture("f16_state.pt")
    out = io.BytesIO(rebuild(data))
    with zipfile.ZipFile(out, "a") as zf:
        zf.writestr("f16_state/data/99", b"\0" * 8)
    s = read(out.getvalue())
    assert s.tensors == read(data).tensors
    assert s.warnings == ["1 storages no tensor references, e.g. f16_state/data/99"]


def test_not_torch_files_fail() -> None:
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("readme.txt", "hello")
    for bad in (b"hello", b"", plain.getvalue(), b"\x80\x04K\x01."):
        with pytest.raises(ValueError):
            read(bad, strict=False)


def test_legacy_damage() -> None:
    data = fixture("legacy_format.pt")
    with pytest.raises(ValueError, match=r"tensor 'w': storage legacy storage '\d+' holds 8 bytes, its record says "
                                         r"3 x 4"):
        read(data[:-4])
    assert any("'w'" in w for w in read(data[:-4], strict=False).warnings)
    s = read(data + b"xyz")
    assert s.tensors == {"w": ("F32", (3,))} and s.warnings == ["3 bytes after the last legacy storage"]
    numel = data.rindex(struct.pack("<q", 3))  # the storage's header: int64 numel
    bigger = data[:numel] + struct.pack("<q", 4) + data[numel + 8:] + b"\0" * 4
    with pytest.raises(ValueError, match="holds 16 bytes, its record says 3 x 4"):
        read(bigger)


# -- what the scan cannot follow -------------------------------------------------------------------

def _zip_with_pickle(pkl: bytes, storages: dict[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        for key, raw in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", raw)
        zf.writestr("archive/version", b"3\n")
    return out.getvalue()


def _unicode(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s.encode()


_TENSOR = (b"ctorch._utils\n_rebuild_tensor_v2\n((" + _unicode("storage") + b"ctorch\nFloatStorage\n"
           + _unicode("0") + _unicode("cpu") + b"K\x04tQK\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rt"
           + b"R")


def test_unknown_rebuild_and_custom_classes_are_warnings() -> None:
    pkl = (b"\x80\x02}(" + _unicode("w") + _TENSOR
           + _unicode("q") + b"ctorch._utils\n_rebuild_weird\n)R"
           + _unicode("obj") + b"cmylib\nHolder\n)\x81}" + _unicode("inner") + _TENSOR + b"sb"
           + _unicode("n") + b"K\x05u.")
    pickletools.dis(pkl, out=io.StringIO())  # well-formed (raises otherwise)
    s = read(_zip_with_pickle(pkl, {"0": b"\0" * 16}))
    assert s.tensors == {"w": ("F32", (4,)), "obj.inner": ("F32", (4,))}
    assert s.warnings == [
        "q: torch._utils._rebuild_weird is not followed",
        "obj: mylib.Holder is not followed; tensors inside are named through its pickled arguments and state",
    ]
    assert scan_storage_dtypes(pkl) == {"0": "F32"}


def test_scan_never_executes(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}".encode()
    payload = b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."
    s = read(_zip_with_pickle(payload))
    assert s.tensors == {} and s.warnings == []
    assert not marker.exists()


def test_hostile_files_raise_only_value_error() -> None:
    rnd = random.Random(11)
    n = 0
    for name in ("views.pt", "lightning.ckpt"):
        for bad in _mutations(fixture(name), rnd):
            for strict in (True, False):
                with contextlib.suppress(ValueError):
                    read(bad, strict=strict)
                n += 1
    legacy = fixture("legacy_format.pt")
    for _ in range(200):
        b = bytearray(legacy)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        for data in (bytes(b), bytes(b[:rnd.randrange(len(b))])):
            with contextlib.suppress(ValueError):
                read(data, strict=rnd.random() < 0.5)
    assert n > 300


def test_hostile_pickles_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    data = fixture("lightning.ckpt")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        pkl = zf.read(pkl_name(data))
    rnd = random.Random(5)
    for _ in range(300):
        b = bytearray(pkl)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        scan_tensors(bytes(b))
    deep = b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b"."  # lists nested 5000 deep
    s = scan_tensors(deep)
    assert s.readable and s.named == [] and any("deeper" in w for w in s.warnings)
    monkeypatch.setattr(pickle_scan, "MAX_VISITS", 20_000)
    shared = b"\x80\x02" + _TENSOR + b"q\x000" + b"h\x00h\x00\x86q\x000" * 40 + b"h\x00."  # 2**40 paths
    s = scan_tensors(shared)
    assert s.readable and "more than 20000 objects: tensors beyond them are not named" in s.warnings
    assert 0 < len(s.named) < 20_000 and len(s.tensors) == 1


# -- real torch ------------------------------------------------------------------------------------

def _torch() -> tuple[Any, ModuleType]:
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("make_torch_fixtures", FIXTURES / "make_torch_fixtures.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return torch, mod


class Holder:
    """A custom class holding a tensor (pickled by reference to this module)."""

    def __init__(self, w: Any) -> None:
        self.w = w


def _save(torch: Any, obj: Any, path: Path, *, legacy: bool = False) -> bytes:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path.read_bytes()


def test_real_torch_objects(tmp_path: Path) -> None:
    torch, mk = _torch()
    m, opt = mk.trained()
    sgd = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(4, 24)).sum().backward()
    sgd.step()
    base = torch.randn(5, 7)
    objects: dict[str, Any] = {
        "dtypes": {"f32": torch.randn(3, 4), "bf16": torch.randn(2, 8).to(torch.bfloat16),
                   "f16": torch.randn(5).half(), "i64": torch.arange(6).reshape(2, 3)},
        "shared": {"a": base[1:3], "b": base[:, 2], "whole": base},
        "transposed": {"t": torch.randn(6, 3).t(), "perm": torch.randn(2, 3, 4).permute(2, 0, 1)},
        "lightning": mk.lightning(),
        "adamw": opt.state_dict(),
        "sgd": sgd.state_dict(),
        "model": m.state_dict(),
        "list_root": [torch.ones(2), {"x": torch.zeros(1, 1)}],
    }
    for name, obj in objects.items():
        expected = mk.structure(obj)
        assert expected
        for legacy in (False, True):
            s = read(_save(torch, obj, tmp_path / f"{name}.pt", legacy=legacy))
            assert as_json(s) == expected, (name, legacy)
            assert s.warnings == [], (name, legacy, s.warnings)
    one = read(_save(torch, torch.arange(3), tmp_path / "root.pt"))
    assert one.tensors == {"": ("I64", (3,))}


def test_real_torch_transposed_tensor_differs(tmp_path: Path) -> None:
    torch, _ = _torch()
    w = torch.randn(4, 9)
    a = read(_save(torch, {"w": w}, tmp_path / "a.pt"))
    b = read(_save(torch, {"w": w.t()}, tmp_path / "b.pt"))
    assert a.tensors["w"] == ("F32", (4, 9)) and b.tensors["w"] == ("F32", (9, 4))


def test_real_torch_damage(tmp_path: Path) -> None:
    torch, mk = _torch()
    data = _save(torch, mk.lightning(), tmp_path / "l.ckpt")
    name = "optimizer_states.0.state.0.exp_avg"
    with pytest.raises(ValueError, match=rf"tensor '{name}': its storage .* is missing"):
        read(rebuild(data, drop=(storage_member(data, name),)))
    with pytest.raises(ValueError, match=rf"tensor '{name}': storage .* holds"):
        read(rebuild(data, change={storage_member(data, name): lambda b: b[:-1]}))


def test_real_torch_unfollowed_objects_warn(tmp_path: Path) -> None:
    torch, _ = _torch()
    obj = {"holder": Holder(torch.ones(2, 2)), "c": torch.ones(3, dtype=torch.complex64),
           "p": torch.nn.Parameter(torch.ones(2)), "ok": torch.ones(1), "c2": torch.ones(2, dtype=torch.complex128)}
    s = read(_save(torch, obj, tmp_path / "x.pt"))
    assert s.tensors == {"holder.w": ("F32", (2, 2)), "c": ("C64", (3,)), "p": ("F32", (2,)), "ok": ("F32", (1,)),
                         "c2": ("C128", (2,))}
    assert [w for w in s.warnings if "test_torch_structure.Holder is not followed" in w]
    assert not [w for w in s.warnings if "Complex" in w or "dtype unknown" in w], s.warnings
    with pytest.warns(UserWarning):
        q = torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8)
    s = read(_save(torch, {"q": q}, tmp_path / "q.pt"))
    assert s.tensors == {} and "q: torch._utils._rebuild_qtensor is not followed" in s.warnings


def test_every_dtype_torch_writes_is_understood(tmp_path: Path) -> None:
    torch, _ = _torch()
    names = ["float32", "float64", "float16", "bfloat16", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2",
             "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "int8", "int16", "int32", "int64", "uint8",
             "uint16", "uint32", "uint64", "bool"]
    obj = {n: torch.zeros(3, 2).to(getattr(torch, n)) for n in names}
    obj["f4"] = torch.zeros(3, 2, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    s = read(_save(torch, obj, tmp_path / "dtypes.pt"))
    assert s.warnings == [] and set(s.tensors) == {*names, "f4"}
    assert all(shape == (3, 2) for _, shape in s.tensors.values())
    assert len({dt for dt, _ in s.tensors.values()}) == len(names) + 1  # each its own name
