"""Many writers at once: a snapshot another client committed after this client read the index
refers to blobs of index files this client has not read. Looking them up reads index/ again
(the race found by eight concurrent backups of one path through the repository server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, write
from weightvault.backends.local import LocalBackend
from weightvault.errors import IntegrityError
from weightvault.ops.backup import backup
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.repo import Repository as Engine


def test_a_snapshot_committed_since_the_index_was_read_is_readable(tmp_path: Path) -> None:
    Engine.init(LocalBackend(tmp_path / "repo"), PASSWORD.encode(), kdf=FAST_KDF)
    early = Engine.open(LocalBackend(tmp_path / "repo"), PASSWORD.encode())  # index read now
    other = Engine.open(LocalBackend(tmp_path / "repo"), PASSWORD.encode())
    src = tmp_path / "src"
    write(src / "weights.bin", os.urandom(300_000))
    write(src / "notes.txt", b"step 10\n")
    with other.lock():
        snap = backup(other, [str(src)]).snapshot  # packs, index file, snapshot: all after `early` read
    [seen] = early.snapshots()
    assert seen.id == snap.id
    names = {os.path.basename(n.path) for n in iter_manifest(seen.tree, early.load_blob)}
    assert {b"notes.txt", b"weights.bin"} <= names
    with early.lock():  # and a backup of the same path takes it as parent without "missing data"
        again = backup(early, [str(src)])
    assert again.snapshot.parent == snap.id


def test_a_blob_in_no_index_file_is_still_missing_data(repo_path: Path) -> None:
    Engine.init(LocalBackend(repo_path), PASSWORD.encode(), kdf=FAST_KDF)
    eng = Engine.open(LocalBackend(repo_path), PASSWORD.encode())
    with pytest.raises(IntegrityError, match="not in the index"):
        eng.lookup(os.urandom(32))
    with pytest.raises(IntegrityError, match="not in the index"):  # within the second: no re-read, same answer
        eng.lookup(os.urandom(32))
