"""Reading stored files in place (``Repository.open_files``) and the non-executing readers a DCP
reader is built on: one tensor from a ``torch.save`` archive, plain values from a pickle."""

from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository, read_plain_object, read_tensor_archive
from weightvault.errors import UsageError

torch = pytest.importorskip("torch")


def test_open_files_reads_ranges_of_a_snapshot_without_restoring(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    import random

    data = random.Random(1).randbytes(6_000_000)  # several blobs
    write(tmp_path / "run" / "big.bin", data)
    write(tmp_path / "run" / "sub" / "small.txt", b"hello")
    snap = repo.backup([tmp_path / "run"]).snapshot
    assert next(iter(repo.layouts(snap.id, "run/big.bin").values())).chunks > 2
    with repo.open_files(snap.id) as files:
        assert sorted(files.paths()) == ["run/big.bin", "run/sub/small.txt"]
        assert files.size("run/big.bin") == len(data)
        assert files.read("run/big.bin", 1_900_001, 3_000_000) == data[1_900_001:4_900_001]
        assert files.read("/run/sub/small.txt") == b"hello"
        assert files.read("run/big.bin", len(data)) == b""
        with pytest.raises(UsageError, match="holds no file 'run/nope'"):
            files.read("run/nope")
        with pytest.raises(UsageError, match="lie outside"):
            files.read("run/sub/small.txt", 2, 10)


def _archive(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _rebuilt(data: bytes) -> Any:
    a = read_tensor_archive(data)
    dtype = getattr(torch, a.dtype)
    flat = torch.frombuffer(bytearray(a.storage), dtype=dtype) if a.storage else torch.empty(0, dtype=dtype)
    return flat.as_strided(a.shape, a.stride, a.offset)


@pytest.mark.parametrize("tensor", [
    torch.arange(12.0).reshape(3, 4)[:, 1:3],  # a view: offset and strides
    torch.randn(5, 3).to(torch.bfloat16), torch.randn(4, dtype=torch.complex64), torch.tensor(7, dtype=torch.int64),
    torch.zeros(0, 3), torch.tensor([True, False]), torch.randn(2, 2).to(torch.float8_e4m3fn),
], ids=["view", "bf16", "c64", "scalar", "empty", "bool", "fp8"])
def test_one_tensor_is_read_from_its_archive_exactly(tensor: Any) -> None:
    got = _rebuilt(_archive(tensor))
    assert got.dtype == tensor.dtype and got.shape == tensor.shape
    assert torch.equal(got.view(torch.uint8) if got.dtype == torch.float8_e4m3fn else got,
                       tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else tensor)


def test_archives_that_are_not_one_sound_tensor_are_refused() -> None:
    with pytest.raises(ValueError, match="not one tensor"):
        read_tensor_archive(_archive({"w": torch.ones(2)}))
    with pytest.raises(ValueError, match="zip"):
        read_tensor_archive(b"not an archive at all")
    good = bytearray(_archive(torch.ones(4)))
    at = good.find(struct.pack("<f", 1.0) * 4)
    good[at] ^= 0xFF  # one storage byte changed: the member's CRC no longer matches
    with pytest.raises(ValueError, match="cannot be read"):
        read_tensor_archive(bytes(good))


def test_plain_values_come_back_and_anything_else_is_refused() -> None:
    value = {"lr": 1e-3, "betas": (0.9, 0.999), "steps": [1, 2, 3], "name": "adam", "raw": b"\x00\x01", "none": None,
             7: -2**70, "ordered": collections.OrderedDict(a=1)}
    assert read_plain_object(_archive(value)) == value
    for proto in (2, 4, 5):
        assert read_plain_object(pickle.dumps(value, protocol=proto)) == value
    for bad, why in [({1, 2}, "not a plain value"), (complex(1, 2), "builtin__.complex"),
                     (Path("/x"), "pathlib"), ({"t": torch.ones(2)}, "tensor storages")]:
        with pytest.raises(ValueError, match=why):
            read_plain_object(_archive(bad))
    with pytest.raises(ValueError, match="bytes after the pickle"):
        read_plain_object(pickle.dumps(1) + b"x")
