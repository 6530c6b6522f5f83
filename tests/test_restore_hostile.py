"""Hostile snapshots, continued (issue 20): sizes and digests that lie, entry types weightvault
never writes, names that differ only by Unicode normalisation or case, and hard links. Crafted
with the engine, as someone holding the key could (authentication passes)."""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path

import pytest

from conftest import write
from weightvault.api import Repository
from weightvault.errors import UnsupportedFormatError, VerificationError
from weightvault.repository.manifest import ManifestWriter, Node
from weightvault.repository.snapshots import Snapshot
from weightvault.types import BlobType

DATA = b"hello world" * 100


def _snapshot(repo: Repository, nodes: list[Node]) -> str:
    engine = repo._repo
    w = ManifestWriter()
    for n in nodes:
        w.add(n)
    tree = w.finish(lambda data: engine.save_blob(BlobType.TREE, data)[0])
    engine.flush()
    return engine.save_snapshot(Snapshot(time="2026-01-01T00:00:00+00:00", host="attacker", user="mallory",
                                         paths=["/x"], tags=[], tree=tree))


def _file(repo: Repository, path: bytes, data: bytes, **lie: object) -> Node:
    bid, _ = repo._repo.save_blob(BlobType.DATA, data)
    fields: dict[str, object] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **lie}
    return Node(path=path, type="file", mode=0o644, blobs=[bid], **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("lie", [{"size": len(DATA) + 5000}, {"size": 10}, {"size": 1 << 60}, {"size": -5}],
                         ids=lambda d: next(iter(d.items()))[0] + "=" + str(next(iter(d.values())))[:8])
def test_a_file_whose_size_lies_is_refused_and_never_named(repo: Repository, tmp_path: Path,
                                                                      lie: dict[str, object]) -> None:
    sid = _snapshot(repo, [_file(repo, b"ok", b"fine"), _file(repo, b"liar", DATA, **lie)])
    out = tmp_path / "target"
    with pytest.raises(VerificationError) as err:
        repo.restore(sid, out)
    assert err.value.exit_code == 4 and "liar" in err.value.message
    assert not (out / "liar").exists()  # never under its name, and no temporary file left either
    assert not [p for p in out.rglob(".wvtmp-*")]


def test_a_digest_that_lies_is_found_by_verify_and_restore_verify(repo: Repository, tmp_path: Path) -> None:
    """Restore proves each byte by its blob's content address (the ids the manifest names), not
    by recomputing the file's SHA-256: the blobs' bytes are restored, and the digest that
    disagrees with them is what ``verify`` and ``restore --verify`` report."""
    sid = _snapshot(repo, [_file(repo, b"ok", b"fine"), _file(repo, b"liar", DATA, sha256="0" * 64)])
    out = tmp_path / "target"
    repo.restore(sid, out)
    assert (out / "liar").read_bytes() == DATA and (out / "ok").read_bytes() == b"fine"
    checked = repo.verify(sid)
    assert not checked.ok and [p for p, _ in checked.damaged] == ["liar"]
    with pytest.raises(VerificationError, match="liar: SHA-256 read back from disk does not match"):
        repo.restore(sid, tmp_path / "again", verify=True)
    assert not (tmp_path / "again" / "liar").exists()
    assert not [p for p in (tmp_path / "again").rglob(".wvtmp-*")]


@pytest.mark.parametrize("kind", ["fifo", "dev", "chardev", "socket", "hardlink"])
def test_entry_types_weightvault_never_writes_are_refused(repo: Repository, tmp_path: Path, kind: str) -> None:
    sid = _snapshot(repo, [Node(path=b"x", type=kind, mode=0o644)])
    with pytest.raises(UnsupportedFormatError, match=f"unknown type '{kind}'"):
        repo.restore(sid, tmp_path / "target")
    assert not (tmp_path / "target" / "x").exists()


def test_names_that_differ_by_normalisation_or_case_are_distinct_files(repo: Repository, tmp_path: Path) -> None:
    """On Linux file systems names are bytes: NFC and NFD forms, and case twins, are different
    files and are restored as such, each with its own content (none overwrites another)."""
    nfc = unicodedata.normalize("NFC", "café").encode()
    nfd = unicodedata.normalize("NFD", "café").encode()
    assert nfc != nfd
    names = [nfc, nfd, b"Model.bin", b"model.bin", b"MODEL.BIN"]
    sid = _snapshot(repo, [_file(repo, n, b"content of " + n) for n in names])
    out = tmp_path / "target"
    repo.restore(sid, out)
    assert sorted(os.listdir(os.fsencode(out))) == sorted(names)
    for n in names:
        assert (out / os.fsdecode(n)).read_bytes() == b"content of " + n


def test_hard_links_come_back_as_separate_files_with_their_content(repo: Repository, tmp_path: Path) -> None:
    """The manifest has no hard-link entry (as kopia's): linked files are stored once (dedup) and
    restored as independent copies, so writing one never changes the other."""
    src = tmp_path / "src"
    write(src / "a.bin", DATA)
    os.link(src / "a.bin", src / "b.bin")
    repo.backup([src])
    out = tmp_path / "out"
    repo.restore("latest", out)
    a, b = out / "src" / "a.bin", out / "src" / "b.bin"
    assert a.read_bytes() == b.read_bytes() == DATA
    assert a.stat().st_nlink == 1 and b.stat().st_nlink == 1 and a.stat().st_ino != b.stat().st_ino
