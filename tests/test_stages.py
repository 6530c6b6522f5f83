"""``backup --json`` and ``restore --json`` report where the time went, per stage (no timing
assertions: only that each stage was accounted for)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import write
from test_cli import cli_env, ok, wv


def test_backup_and_restore_json_report_their_stages(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    repo = tmp_path / "repo"
    ok(wv(env, "-r", repo, "init"))
    src = tmp_path / "run"
    write(src / "model.bin", os.urandom(3_000_000))
    write(src / "notes.txt", b"hello " * 1000)
    out = json.loads(ok(wv(env, "-r", repo, "backup", src, "--json")).stdout)
    stages = out["stages"]
    assert {"read", "sha256", "blob_id", "wait_workers", "store", "flush", "commit"} <= set(stages)
    assert all(v >= 0 for v in stages.values()) and stages["store"] > 0 and stages["read"] > 0
    snap = out["snapshot"]["id"]
    back = json.loads(ok(wv(env, "-r", repo, "restore", snap, "--target", tmp_path / "back", "--json")).stdout)
    assert {"load", "zero_check", "write", "wait_load", "fsync", "verify"} <= set(back["stages"])
    assert back["stages"]["load"] > 0 and back["files"] == 2


def test_the_zero_check_agrees_with_counting_zeros() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from weightvault.ops.restore_io import all_zero

    @given(st.integers(0, 300), st.integers(0, 300), st.binary(max_size=3))
    def agree(before: int, after: int, middle: bytes) -> None:
        data = bytes(before) + middle + bytes(after)
        assert all_zero(data) == (data.count(0) == len(data))

    agree()
    assert all_zero(bytes(5_000_000)) and not all_zero(bytes(4_000_000) + b"\x01" + bytes(1_000_000))
