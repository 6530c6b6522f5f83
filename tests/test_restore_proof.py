"""Restore proves every byte by its blob's content address (the keyed BLAKE3 that is its id,
checked once where the blob is decoded): a blob whose plaintext is not what its id says (written
by a buggy or hostile holder of the key, so its AEAD is valid) fails the restore of its file,
leaves nothing under the file's name, and ``check --read-data`` names the blob."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import write
from weightvault.api import Repository
from weightvault.errors import VerificationError
from weightvault.repository.repo import Repository as Engine
from weightvault.types import BlobType


def _lying_backup(repo: Repository, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Back up ``src`` with every data blob's plaintext replaced by other bytes of the same length,
    sealed under the blob's true id."""
    real = Engine.encode_blob

    def lying(self: Engine, btype: BlobType, bid: bytes, data: bytes, dtype: str | None,
              base: tuple[bytes, bytes] | None = None) -> tuple[int, bytes | bytearray]:
        if btype == BlobType.DATA:
            data = bytes(b ^ 0x5A for b in data[:64]) + data[64:]
        return real(self, btype, bid, data, dtype, None)

    with monkeypatch.context() as m:
        m.setattr(Engine, "encode_blob", lying)
        repo.backup([src])


def test_a_blob_that_lies_about_its_content_fails_the_restore_of_its_file(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "run"
    write(src / "model.bin", os.urandom(3 << 20))
    _lying_backup(repo, src, monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match=r"model\.bin: restored content does not match"):
        repo.restore("latest", out)
    assert not (out / "run" / "model.bin").exists()
    assert [p.name for p in (out / "run").iterdir()] == []  # no temporary file left either
    result = repo.check(read_data=True)
    assert not result.ok
    assert any("content hash does not match its id" in e for e in result.errors)
