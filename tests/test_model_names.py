"""Which names say "model file": an extension as ``os.path.splitext`` sees one, so a dotfile named
after an extension (``.safetensors``) is an ordinary file, backed up without a warning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from weightvault.api import Repository
from weightvault.chunking.base import has_suffix
from weightvault.chunking.registry import MODEL_SUFFIXES, default_registry, looks_like_model


@pytest.mark.parametrize("name, expected", [
    (b"model.safetensors", True), (b"MODEL.SafeTensors", True), (b"ckpt/step-1/model.safetensors", True),
    (b"a.b.safetensors", True), (b".hidden.safetensors", True),
    (b".safetensors", False), (b"..safetensors", False), (b"dir/.safetensors", False),
    (b"safetensors", False), (b"model.safetensors.bak", False), (b"", False),
])
def test_extension_needs_a_stem(name: bytes, expected: bool) -> None:
    assert has_suffix(name, b".safetensors") is expected
    assert looks_like_model(os.fsdecode(name)) is expected


@pytest.mark.parametrize("suffix", MODEL_SUFFIXES)
def test_every_model_suffix_agrees_with_splitext(suffix: str) -> None:
    for name in (f"w{suffix}", suffix, f"d/{suffix}", f"d/x{suffix}"):
        assert looks_like_model(name) is (os.path.splitext(name)[1].lower() == suffix), name


def test_registry_does_not_pick_a_splitter_from_a_dotfile_name() -> None:
    reg = default_registry()
    junk = os.urandom(4096)
    for name in (b".safetensors", b".npy", b".npz", b".pt", b".distcp"):
        assert reg.select(name, junk).name == "cdc", name
    assert reg.select(b"m.safetensors", junk).name == "safetensors"


def test_random_bytes_in_a_dotfile_named_like_a_model_back_up_without_warning(repo: Repository, tmp_path: Path) -> None:
    """The case hypothesis found: random bytes in ``.safetensors`` were parsed as safetensors and
    warned about; under a real model name the warning still comes."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(300_000)
    (src / ".safetensors").write_bytes(data)
    res = repo.backup([str(src)])
    assert res.errors == [] and res.warnings == []
    (src / "x.safetensors").write_bytes(data)
    res = repo.backup([str(src)])
    assert [w[0] for w in res.warnings] == ["src/x.safetensors"]
