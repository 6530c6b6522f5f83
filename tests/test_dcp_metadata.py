"""A DCP checkpoint's ``.metadata``, read without executing its pickle: the same names, dtypes,
shapes and storage entries as torch's own reader; validation checks each item against the shards
beside it, and level 3 compares fully qualified names, dtypes and shapes with the backup.
Checkpoints are written in the tests by the real torch (a development dependency)."""

from __future__ import annotations

import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD
from weightvault.api import Repository
from weightvault.chunking.dcp_metadata import parse_dcp_metadata
from weightvault.chunking.registry import detect_format

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2,
          torch.uint16]


def _state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    model = {f"layer.{i}.{str(dt).removeprefix('torch.')}": torch.randn(4, 3, generator=g).to(dt)
             for i, dt in enumerate(DTYPES)}
    model["scalar"] = torch.tensor(2.5)
    model["empty"] = torch.zeros(0, 5)
    return {"model": model, "step": 7, "meta": {"run": "r1", "tags": ["a", "b"]},
            "emb": torch.randn(96, 1024, generator=g)}


def _save(directory: Path, state: dict[str, Any] | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single process on purpose: "torch.distributed is ... uninitialized"
        dcp.save(state or _state(), checkpoint_id=str(directory))
    return directory


def _short(dtype: Any) -> str:
    from weightvault.chunking.pickle_scan import TORCH_DTYPES
    name = str(dtype).removeprefix("torch.")
    return TORCH_DTYPES.get(name, f"torch.{name}")


def test_the_metadata_reads_as_torch_reads_it(tmp_path: Path) -> None:
    ckpt = _save(tmp_path / "ckpt")
    data = (ckpt / ".metadata").read_bytes()
    assert detect_format(data[:65536]) == "dcp-metadata"
    ours = parse_dcp_metadata(data)
    theirs = dcp.FileSystemReader(str(ckpt)).read_metadata()
    tensors = {fqn: (_short(md.properties.dtype), tuple(md.size)) for fqn, md in theirs.state_dict_metadata.items()
               if hasattr(md, "properties")}
    assert ours.tensors == tensors and len(tensors) == len(DTYPES) + 3
    assert sorted(ours.objects) == sorted(set(theirs.state_dict_metadata) - set(tensors))
    assert ours.warnings == []
    where = {(i.fqn, i.chunk): (i.path, i.start, i.length) for i in ours.items}
    assert where == {(k.fqn, tuple(k.offset) if k.offset is not None else None): (v.relative_path, v.offset, v.length)
                     for k, v in theirs.storage_data.items()}


def test_a_pickle_that_is_not_dcp_metadata_is_refused() -> None:
    import pickle
    with pytest.raises(ValueError, match=r"not a pickled torch\.distributed\.checkpoint Metadata"):
        parse_dcp_metadata(pickle.dumps({"state_dict_metadata": {}}))
    with pytest.raises(ValueError, match="cannot be read"):
        parse_dcp_metadata(b"\x80\x04\x95")


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Repository, str, Path]:
    run = tmp_path / "run"
    _save(run / "step-100")
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    return repo, repo.backup([run]).snapshot.id, run / "step-100"


def test_a_drill_of_a_dcp_checkpoint_passes_level_3(backed_up: tuple[Repository, str, Path]) -> None:
    repo, _snap, _ckpt = backed_up
    res = repo.drill(level=3, record=False)
    assert res.ok, res.error
    assert res.report is not None
    got = {f.path.split("/")[-1]: (f.format, f.passed, f.warnings) for f in res.report.files}
    assert got == {".metadata": ("dcp-metadata", 3, []), "__0_0.distcp": ("dcp", 3, [])}


def _binint(n: int) -> bytes:
    """``n`` as the pickle opcode protocol 4 writes for it."""
    return b"K" + bytes([n]) if n < 256 else b"M" + struct.pack("<H", n) if n < 65536 else b"J" + struct.pack("<i", n)


def _problems(repo: Repository, snap: str, ckpt: Path) -> list[str]:
    (bad,) = repo.validate(snap, ckpt.parent, level=3).failed
    return bad.problems


def test_a_missing_or_short_shard_fails_the_metadata(backed_up: tuple[Repository, str, Path]) -> None:
    repo, snap, ckpt = backed_up
    shard = ckpt / "__0_0.distcp"
    data = shard.read_bytes()
    shard.write_bytes(data[:-4096])
    report = repo.validate(snap, ckpt.parent, level=3)
    meta = next(f for f in report.files if f.path.endswith(".metadata"))
    assert meta.passed == 1 and any("lie beyond the end of __0_0.distcp" in p and "'emb'" in p
                                    for p in meta.problems), meta.problems
    shard.unlink()
    meta = next(f for f in repo.validate(snap, ckpt.parent, level=3).files if f.path.endswith(".metadata"))
    assert any("shard '__0_0.distcp'" in p and "cannot be read" in p for p in meta.problems), meta.problems


def test_items_that_are_not_where_the_metadata_says_fail(backed_up: tuple[Repository, str, Path]) -> None:
    """An item's offset moved by one byte: still inside the shard, no longer one archive."""
    repo, snap, ckpt = backed_up
    data = bytearray((ckpt / ".metadata").read_bytes())
    md = parse_dcp_metadata(bytes(data))
    item = min((i for i in md.items if i.chunk is not None and i.start >= 256), key=lambda i: i.start)
    old, new = _binint(item.start), _binint(item.start + 1)  # the pickled offset of "emb", moved by one byte
    assert data.count(old) == 1 and len(new) == len(old)
    at = data.index(old)
    data[at:at + len(old)] = new
    (ckpt / ".metadata").write_bytes(bytes(data))
    problems = _problems(repo, snap, ckpt)
    assert any(f"tensor {item.fqn!r}: bytes {item.start + 1}.." in p and "not one torch.save archive" in p
               for p in problems), problems


def test_a_renamed_or_reshaped_tensor_in_the_metadata_fails_level_3(backed_up: tuple[Repository, str, Path]) -> None:
    repo, snap, ckpt = backed_up
    original = (ckpt / ".metadata").read_bytes()
    (ckpt / ".metadata").write_bytes(original.replace(b"\x8c\x03emb", b"\x8c\x03emc"))
    problems = _problems(repo, snap, ckpt)
    assert "level 3: tensor 'emb' is missing" in problems
    assert "level 3: tensor 'emc' is not in the backed-up file" in problems
    reshaped = _save(ckpt.parent / "other", {**_state(), "emb": torch.randn(1024, 96)})
    shutil.copy(reshaped / ".metadata", ckpt / ".metadata")
    shutil.copy(reshaped / "__0_0.distcp", ckpt / "__0_0.distcp")
    shutil.rmtree(reshaped)
    report = repo.validate(snap, ckpt.parent, level=3)
    meta = next(f for f in report.files if f.path.endswith(".metadata"))
    assert "level 3: tensor 'emb' is F32 [1024, 96], was F32 [96, 1024]" in meta.problems, meta.problems
