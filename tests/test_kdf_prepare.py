"""Deriving the password key ahead of need (codec/kdf.py, repository/key_prefetch.py, cli/prewarm.py):
a prepared key is used only for exactly its inputs, once; the CLI's guess reads only regular files
and never changes what a command does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from argon2.low_level import Type, hash_secret_raw

from conftest import FAST_KDF, PASSWORD
from weightvault.api import Repository
from weightvault.cli.prewarm import guess, start
from weightvault.codec.kdf import KdfParams, derive_key, prepare_key, prepared_count
from weightvault.errors import WrongPasswordError
from weightvault.repository.key_prefetch import prefetch_local_keys

SALT = b"0123456789abcdef"


def _reference(password: bytes, salt: bytes, p: KdfParams) -> bytes:
    return bytes(hash_secret_raw(password, salt, p.time_cost, p.memory_kib, p.parallelism, 32, Type.ID))


@pytest.fixture(autouse=True)
def _nothing_prepared() -> None:
    assert prepared_count() == 0, "an earlier test left a prepared key behind"


def test_a_prepared_key_is_the_computed_one_and_is_taken_once() -> None:
    assert prepare_key(b"pw", SALT, FAST_KDF)
    assert prepared_count() == 1
    assert derive_key(b"pw", SALT, FAST_KDF) == _reference(b"pw", SALT, FAST_KDF)
    assert prepared_count() == 0
    assert derive_key(b"pw", SALT, FAST_KDF) == _reference(b"pw", SALT, FAST_KDF)  # computed again


@pytest.mark.parametrize("other", [
    (b"other password", SALT, FAST_KDF),
    (b"pw", b"fedcba9876543210", FAST_KDF),
    (b"pw", SALT, KdfParams(memory_kib=FAST_KDF.memory_kib, time_cost=2, parallelism=1)),
])
def test_a_prepared_key_is_never_used_for_other_inputs(other: tuple[bytes, bytes, KdfParams]) -> None:
    assert prepare_key(b"pw", SALT, FAST_KDF)
    assert derive_key(*other) == _reference(*other)
    assert derive_key(*other) != _reference(b"pw", SALT, FAST_KDF)
    assert prepared_count() == 1  # still waiting for its own inputs
    assert derive_key(b"pw", SALT, FAST_KDF) == _reference(b"pw", SALT, FAST_KDF)
    assert prepared_count() == 0


def test_prepare_refuses_invalid_params_duplicates_and_more_than_four() -> None:
    assert not prepare_key(b"pw", SALT, KdfParams(memory_kib=1, time_cost=1, parallelism=1))
    assert prepare_key(b"pw", SALT, FAST_KDF)
    assert not prepare_key(b"pw", SALT, FAST_KDF)
    for i in range(3):
        assert prepare_key(b"pw%d" % i, SALT, FAST_KDF)
    assert not prepare_key(b"one too many", SALT, FAST_KDF)
    assert prepared_count() == 4
    for pw in (b"pw", b"pw0", b"pw1", b"pw2"):
        assert derive_key(pw, SALT, FAST_KDF) == _reference(pw, SALT, FAST_KDF)
    assert prepared_count() == 0


def test_prefetch_then_open_a_real_repository(repo: Repository, repo_path: Path) -> None:
    assert prefetch_local_keys(repo_path, PASSWORD.encode()) == 1
    Repository.open(repo_path, PASSWORD)
    assert prepared_count() == 0  # the open took it
    assert prefetch_local_keys(repo_path, b"not the password") == 1
    with pytest.raises(WrongPasswordError):
        Repository.open(repo_path, "not the password")
    assert prepared_count() == 0


def test_prefetch_skips_what_it_cannot_read(tmp_path: Path) -> None:
    keys = tmp_path / "repo" / "keys"
    assert prefetch_local_keys(tmp_path / "repo", b"pw") == 0  # no keys/
    keys.mkdir(parents=True)
    os.mkfifo(keys / "a-fifo")
    (keys / "b-dir").mkdir()
    (keys / "c-garbage").write_bytes(b"\xff not json")
    (keys / "d-kms").write_text(json.dumps({"version": 1, "kdf": "kms", "kms": "aws:k"}))
    (keys / "e-malformed").write_text(json.dumps({"version": 1, "kdf": "argon2id", "salt": "!!"}))
    (keys / "f-huge").write_bytes(b" " * (65 * 1024))
    (keys / ".wvtmp-partial").write_text(json.dumps({"version": 1, "kdf": "argon2id", "salt": "AAAA",
                                                     "kdf_params": {"memory_kib": 8192, "time_cost": 1,
                                                                    "parallelism": 1}}))
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(prefetch_local_keys(tmp_path / "repo", b"pw")), daemon=True)
    t.start()
    t.join(timeout=30)
    assert done == [0]


def test_the_cli_guess_follows_the_cli_sources(tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    pwfile.write_bytes(b"from file\nsecond line\n")
    env = {"WEIGHTVAULT_PASSWORD": "from env"}
    assert guess(["-r", "/x/repo", "snapshots"], env) == (Path("/x/repo"), b"from env")
    assert guess(["--repo=/x/repo", "snapshots"], env) == (Path("/x/repo"), b"from env")
    assert guess(["--password-file", str(pwfile), "-r", "/x", "restore"], env) == (Path("/x"), b"from file")
    assert guess(["snapshots"], {"WEIGHTVAULT_REPO": "/y", "WEIGHTVAULT_PASSWORD_FILE": str(pwfile)}) == (
        Path("/y"), b"from file")
    assert guess(["-r", "s3://bucket/repo", "snapshots"], env) is None
    assert guess(["-r", "/x", "init"], env) is None
    assert guess(["--help"], env) is None
    assert guess(["-r", "/x", "snapshots"], {}) is None  # no password source: the CLI would prompt
    assert guess(["-r", "/x", "snapshots"], {"WEIGHTVAULT_PASSWORD": ""}) is None


def test_the_guess_never_reads_a_pipe(tmp_path: Path) -> None:
    fifo = tmp_path / "pw-pipe"
    os.mkfifo(fifo)
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(guess(["--password-file", str(fifo), "-r", "/x", "snapshots"],
                                                         {})), daemon=True)
    t.start()
    t.join(timeout=30)
    assert out == [None]


def test_the_default_repository_is_guessed_with_its_key_file(isolated_home: Path) -> None:
    key = isolated_home / ".config" / "weightvault" / "default-repo.key"
    key.parent.mkdir(parents=True)
    key.write_bytes(b"generated\n")
    env = {"XDG_DATA_HOME": os.environ["XDG_DATA_HOME"], "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    assert guess(["snapshots"], env) == (isolated_home / ".local" / "share" / "weightvault" / "repo", b"generated")
    assert start(["snapshots"], env) == 0  # no repository there yet: nothing started


def test_the_command_line_opens_with_the_prepared_key_and_refuses_a_wrong_one(repo: Repository,
                                                                              repo_path: Path) -> None:
    env = {**os.environ, "WEIGHTVAULT_PASSWORD": PASSWORD}
    ok = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "snapshots", "--json"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == []
    env["WEIGHTVAULT_PASSWORD"] = "wrong"
    bad = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "snapshots"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == WrongPasswordError.exit_code, bad.stderr
    assert "wrong password" in bad.stderr
