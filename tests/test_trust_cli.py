"""Answers a user trusts, driven through the CLI: a missing source is listed and the rest is saved
(exit 3), `--force` counts identical files as unmodified, a damaged newest snapshot is never
silently skipped by `latest`, `check --read-data-subset` always reads something and says what."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, write
from test_cli import cli_env, ok, wv
from weightvault.api import Repository


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    return {**cli_env(tmp_path / "home"), "WEIGHTVAULT_REPO": str(tmp_path / "repo")}


def test_a_missing_source_is_listed_and_the_others_are_saved(env: dict[str, str], tmp_path: Path) -> None:
    run = write(tmp_path / "run" / "model.bin", b"w" * 5000).parent
    gone = tmp_path / "not-mounted"
    proc = wv(env, "backup", run, gone, "--json")
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"] == [{"path": str(gone), "reason": "does not exist"}]
    assert out["snapshot"]["paths"] == [str(run)]
    assert f"{gone}: does not exist" in wv(env, "backup", run, gone).stderr
    only_gone = wv(env, "backup", gone)
    assert only_gone.returncode == 2 and f"nothing to back up: {gone} does not exist" in only_gone.stderr
    snaps = json.loads(ok(wv(env, "snapshots", "--json")).stdout)
    assert len(snaps) == 2 and all(s["paths"] == [str(run)] for s in snaps)


def test_force_rereads_and_counts_identical_files_as_unmodified(env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    write(run / "a.bin", os.urandom(4000))
    write(run / "b.txt", b"hello")
    ok(wv(env, "backup", run))
    write(run / "b.txt", b"hello, changed")
    s = json.loads(ok(wv(env, "backup", run, "--force", "--json")).stdout)["snapshot"]["summary"]
    assert (s["files_new"], s["files_changed"], s["files_unmodified"]) == (0, 1, 1)
    assert s["bytes_read"] == 4000 + len(b"hello, changed")  # --force still reads every file


def test_a_damaged_newest_snapshot_is_never_skipped_silently(env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    write(run / "w.bin", b"old")
    old = json.loads(ok(wv(env, "backup", run, "--json")).stdout)["snapshot"]["id"]
    write(run / "w.bin", b"new!")
    new = json.loads(ok(wv(env, "backup", run, "--json")).stdout)["snapshot"]["id"]
    doc = tmp_path / "repo" / "snapshots" / new
    data = bytearray(doc.read_bytes())
    data[len(data) // 2] ^= 0x40
    doc.write_bytes(bytes(data))

    restore = wv(env, "restore", "latest", "--target", tmp_path / "out")
    assert restore.returncode == 4, restore.stderr
    assert f"snapshot {new[:8]} cannot be read" in restore.stderr and "'latest' might be it" in restore.stderr
    assert "--skip-unreadable" in restore.stderr and not (tmp_path / "out").exists()
    by_id = wv(env, "restore", new[:10], "--target", tmp_path / "out")
    assert by_id.returncode == 4 and f"snapshot {new[:8]} cannot be read" in by_id.stderr
    ok(wv(env, "--skip-unreadable", "restore", "latest", "--target", tmp_path / "out"))
    assert (tmp_path / "out" / "run" / "w.bin").read_bytes() == b"old"

    listing = wv(env, "snapshots", "--json")
    assert listing.returncode == 4 and f"snapshot {new[:8]} cannot be read (damaged)" in listing.stderr
    assert [s["id"] for s in json.loads(listing.stdout)] == [old, new]
    assert json.loads(listing.stdout)[1]["damaged"]


def test_a_check_subset_always_reads_and_rotates_over_every_pack(tmp_path: Path) -> None:
    from weightvault.backends.base import FileType
    from weightvault.backends.local import LocalBackend
    from weightvault.repository.repo import Repository as Engine
    path = tmp_path / "small-packs"
    Engine.init(LocalBackend(path), PASSWORD.encode(), kdf=FAST_KDF, pack_size=1024, chunk_min=256, chunk_avg=512,
                chunk_max=1024)
    env = {**cli_env(tmp_path / "home"), "WEIGHTVAULT_REPO": str(path)}
    run = tmp_path / "run"
    for i in range(6):  # each holds a full 1 KiB chunk: adding it fills a pack, so every file seals one
        write(run / f"f{i}.bin", os.urandom(1500))
    ok(wv(env, "backup", run))
    packs = len(list(LocalBackend(path).list(FileType.PACK)))
    assert packs >= 6
    seen: set[int] = set()
    reads = []
    for _ in range(20):  # 5%: 20 parts, one per run, every pack within them
        out = json.loads(ok(wv(env, "check", "--read-data-subset", "5%", "--json")).stdout)
        assert out["packs_read"] >= 1 and out["bytes_read"] > 0
        seen.add(int(out["subset"].split("/")[0]))
        reads.append(out["packs_read"])
    assert seen == set(range(1, 21)) and out["coverage"] == 1.0
    assert sum(reads[:packs]) >= packs
    text = ok(wv(env, "check", "--read-data-subset", "1/3")).stdout
    assert "read " in text and "part 1/3" in text and "no problems found" in text


def _policy(tmp_path: Path, run: Path) -> Path:
    text = f"""
version = 1
[settings]
rpo = "1d"
journal = "{tmp_path / 'journal.jsonl'}"

[repositories.main]
url = "{tmp_path / 'repo'}"
password_env = "WEIGHTVAULT_PASSWORD"

[sources.run]
paths = ["{run}"]
repository = "main"

[classes.weights]
globs = ["*.safetensors"]
every = "1h"
keep_last = 3

[classes.logs]
globs = ["*.log"]
every = "1h"
keep_last = 3
"""
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_policy_check_refuses_a_source_that_does_not_exist(env: dict[str, str], tmp_path: Path) -> None:
    policy = _policy(tmp_path, Path("/path/to/run"))
    bad = wv(env, "policy", "check", "--policy", policy)
    assert bad.returncode == 7 and "sources.run.paths: /path/to/run does not exist" in bad.stderr
    assert "--allow-missing" in bad.stderr
    allowed = ok(wv(env, "policy", "check", "--policy", policy, "--allow-missing"))
    assert "warning:" in allowed.stderr and "1 sources" in allowed.stdout


def test_status_counts_only_snapshots_of_the_source_and_verified_only_what_was_drilled(
        env: dict[str, str], tmp_path: Path) -> None:
    import numpy as np

    from test_delta import safetensors_bytes
    run, other = tmp_path / "exp" / "run", tmp_path / "other" / "run"
    for d in (run, other):
        write(d / "model.safetensors", safetensors_bytes({"w": ("F32", np.ones((8, 8), dtype=np.float32))}))
        write(d / "train.log", b"step 1 loss 0.5\n")
    policy = _policy(tmp_path, run)
    # snapshots of another directory that carry the same tags are not backups of this source
    for cls in ("weights", "logs"):
        ok(wv(env, "backup", other, "--tag", "source=run", "--tag", f"class={cls}"))
    status = wv(env, "status", "--policy", policy, "--json")
    assert status.returncode == 6, status.stdout
    assert all(ln["breached"] and ln["last"] is None for ln in json.loads(status.stdout)["lines"])

    ok(wv(env, "policy", "apply", "--policy", policy))
    lines = {ln["dc"]: ln for ln in json.loads(ok(wv(env, "status", "--policy", policy, "--json")).stdout)["lines"]}
    assert not any(ln["breached"] for ln in lines.values())
    assert all(ln["last_verified"] is None for ln in lines.values())
    drilled = json.loads(wv(env, "drill", "--level", "3", "--json").stdout)
    assert drilled["ok"], drilled  # a plain CLI drill, not the policy's: picks the snapshot holding the weights
    lines = {ln["dc"]: ln for ln in json.loads(ok(wv(env, "status", "--policy", policy, "--json")).stdout)["lines"]}
    assert lines["weights"]["last_verified"] is not None and lines["logs"]["last_verified"] is None


def test_no_empty_snapshots_for_classes_without_files(env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    write(run / "train.log", b"step 1\n")
    policy = _policy(tmp_path, run)
    out = json.loads(ok(wv(env, "policy", "apply", "--policy", policy, "--json")).stdout)
    backups = [s for s in out["steps"] if s["step"] == "backup"]
    assert [s["data_class"] for s in backups] == ["logs"]  # no snapshot of an empty weights class
    snaps = json.loads(ok(wv(env, "snapshots", "--json")).stdout)
    assert [s["tags"] for s in snaps] == [["source=run", "class=logs"]]
    lines = {ln["dc"]: ln for ln in json.loads(ok(wv(env, "status", "--policy", policy, "--json")).stdout)["lines"]}
    assert lines["weights"]["no_files"] and not lines["weights"]["breached"]
    assert "ok (no files)" in ok(wv(env, "status", "--policy", policy)).stdout
    write(run / "model.safetensors", b"x" * 100)  # the first weights appear: now they are due, and missing
    assert wv(env, "status", "--policy", policy).returncode == 6
    out = json.loads(ok(wv(env, "policy", "apply", "--policy", policy, "--json")).stdout)
    assert [s["data_class"] for s in out["steps"] if s["step"] == "backup"] == ["weights"]


def test_restore_a_whole_policy_run_as_of_a_time(env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    write(run / "model.safetensors", b"weights v1")
    write(run / "train.log", b"step 1\n")
    write(run / "notes.txt", b"other class")  # in no class of the policy: not backed up
    policy = _policy(tmp_path, run)
    ok(wv(env, "policy", "apply", "--policy", policy, "--now", "2026-11-20T10:00:00+00:00"))
    write(run / "model.safetensors", b"weights v2")
    write(run / "train.log", b"step 1\nstep 2\n")
    ok(wv(env, "policy", "apply", "--policy", policy, "--now", "2026-11-20T12:00:00+00:00"))

    out = json.loads(ok(wv(env, "restore", "--source", "run", "--at", "2026-11-20T11:00", "--target",
                           tmp_path / "t1", "--verify", "--json")).stdout)
    assert sorted(out["snapshots"]) == ["logs", "weights"] and out["files"] == 2 and out["verified"] == 2
    assert (tmp_path / "t1" / "run" / "model.safetensors").read_bytes() == b"weights v1"
    assert (tmp_path / "t1" / "run" / "train.log").read_bytes() == b"step 1\n"
    text = ok(wv(env, "restore", "--source", "run", "--target", tmp_path / "t2")).stdout
    assert "from 2 snapshot(s)" in text
    assert (tmp_path / "t2" / "run" / "model.safetensors").read_bytes() == b"weights v2"
    assert (tmp_path / "t2" / "run" / "train.log").read_bytes() == b"step 1\nstep 2\n"
    one = json.loads(ok(wv(env, "restore", "--source", "run", "--include", "run/model.safetensors", "--target",
                           tmp_path / "t5", "--json")).stdout)  # the logs class holds no match: skipped
    assert one["files"] == 1 and (tmp_path / "t5" / "run" / "model.safetensors").read_bytes() == b"weights v2"
    nothing = wv(env, "restore", "--source", "run", "--include", "run/nope", "--target", tmp_path / "t6")
    assert nothing.returncode == 22
    early = wv(env, "restore", "--source", "run", "--at", "2026-11-19T00:00", "--target", tmp_path / "t3")
    assert early.returncode == 14 and "no snapshot of source 'run' at or before" in early.stderr
    both = wv(env, "restore", "latest", "--source", "run", "--target", tmp_path / "t4")
    assert both.returncode == 2 and "either SNAPSHOT or --source" in both.stderr


def test_a_level_4_check_in_the_current_directory_is_found(env: dict[str, str], tmp_path: Path) -> None:
    run = write(tmp_path / "run" / "notes.txt", b"epoch 3").parent
    ok(wv(env, "backup", run))
    here = tmp_path / "mychecks"
    write(here / "wvcheck.py", b"def ok(root):\n    return []\n\ndef bad(root):\n    return 'loss went up'\n")
    passed = json.loads(wv(env, "drill", "--level", "4", "--check", "wvcheck:ok", "--any-snapshot", "--json",
                           cwd=here).stdout)
    assert passed["report"]["check_problems"] == [], passed
    failed = wv(env, "drill", "--level", "4", "--check", "wvcheck:bad", "--any-snapshot", cwd=here)
    assert failed.returncode == 9 and "loss went up" in failed.stderr
    assert "your check wvcheck:bad failed" in failed.stderr and "check --read-data" not in failed.stderr
    missing = wv(env, "drill", "--level", "4", "--check", "nosuchcheck:ok", "--any-snapshot", cwd=tmp_path)
    assert missing.returncode == 9 and f"looked in {tmp_path}" in missing.stderr
    early = json.loads(wv(env, "drill", "--level", "4", "--check", "nosuchcheck:ok", "--json", cwd=tmp_path).stdout)
    assert early["files"] == 0 and early["restore_s"] == 0  # found missing before anything was restored


def test_a_missing_default_key_file_is_named(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", password=None)
    ok(wv(env, "backup", write(tmp_path / "run" / "a.txt", b"hi").parent))
    keyfile = tmp_path / "home" / "config" / "weightvault" / "default-repo.key"
    assert keyfile.exists()
    keyfile.unlink()
    proc = wv(env, "snapshots")
    assert proc.returncode == 11 and f"the key file {keyfile}, which does not exist" in proc.stderr
    assert "saved copy" in proc.stderr


def test_policy_suggest_takes_parameter_counts_and_its_hint_runs_as_printed(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    run = write(tmp_path / "run" / "a.txt", b"x").parent
    bare = wv(env, "policy", "suggest", "--stage", "middle", "--model-size", "7", "--path", run)
    assert bare.returncode == 2 and "a bare number is neither a size nor a parameter count" in bare.stderr
    small = ok(wv(env, "policy", "suggest", "--stage", "middle", "--model-size", "7B", "--path", run)).stdout
    large = ok(wv(env, "policy", "suggest", "--stage", "middle", "--model-size", "70B", "--path", run)).stdout
    assert small != large  # 14 GB vs 140 GB of weights: above 100 GB the intervals stretch
    assert small == ok(wv(env, "policy", "suggest", "--stage", "middle", "--model-size", "14GB", "--path", run)).stdout
    missing = wv(env, "policy", "check")
    assert missing.returncode == 7
    hint = missing.stderr.split("`")[1]  # the command the hint prints, run as printed
    assert hint.startswith("weightvault policy suggest") and "> " in hint
    cmd, _, dest = hint.partition(" > ")
    args = cmd.split()[1:]
    args[args.index("RUN_DIR")] = str(run)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Path(dest).write_text(ok(wv(env, *args)).stdout)
    ok(wv(env, "policy", "check"))


def test_every_help_text_is_plain_ascii_without_format_escapes() -> None:
    import click
    from click.testing import CliRunner

    from weightvault.cli.main import cli

    def commands(group: click.Group, path: list[str]) -> list[list[str]]:
        out = [path]
        for name, cmd in group.commands.items():
            out += commands(cmd, [*path, name]) if isinstance(cmd, click.Group) else [[*path, name]]
        return out

    runner = CliRunner()
    for path in commands(cli, []):
        res = runner.invoke(cli, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert res.output.isascii() and "%%" not in res.output, (path, res.output)


def test_the_exit_code_tables_list_every_code() -> None:
    import re

    from weightvault import errors

    root = Path(__file__).resolve().parents[1]
    codes = {cls.exit_code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.WeightvaultError)} | {0, 130}
    for doc in (root / "README.md", root / "docs" / "CLI.md"):
        listed = {int(c) for c in re.findall(r"^\| (\d+) \|", doc.read_text(), re.M)}
        assert codes <= listed, (doc.name, sorted(codes - listed))


def test_ls_of_a_missing_path_and_an_include_that_matches_nothing_say_so(env: dict[str, str], tmp_path: Path) -> None:
    run = write(tmp_path / "exp7" / "checkpoint-1" / "w.bin", b"w").parent.parent
    ok(wv(env, "backup", run))
    ls = wv(env, "ls", "latest", "checkpoint-1")
    assert ls.returncode == 22 and "has no entry 'checkpoint-1'" in ls.stderr and "top directory (exp7/)" in ls.stderr
    assert ok(wv(env, "ls", "latest", "exp7/checkpoint-1")).stdout.strip()
    res = wv(env, "restore", "latest", "--target", tmp_path / "out", "--include", "checkpoint-1/*")
    assert res.returncode == 22 and "--include 'exp7/checkpoint-*'" in res.stderr and not (tmp_path / "out").exists()


def test_ctrl_c_at_any_moment_of_start_up_prints_no_traceback(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    env = cli_env(tmp_path / "home")
    codes = set()
    for delay in (0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6):  # before, during and after the imports
        proc = subprocess.Popen([sys.executable, "-m", "weightvault", "snapshots"], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, (delay, err)
        codes.add(proc.returncode)
    assert codes <= {130, -signal.SIGINT, 0, 10}, codes  # interrupted, killed before Python ran, or finished


def test_an_interrupt_wrapped_by_class_creation_still_counts_as_ctrl_c() -> None:
    from weightvault.cli.entry import _interrupted

    wrapped = RuntimeError("Error calling __set_name__ on 'Field' instance")
    wrapped.__cause__ = KeyboardInterrupt()
    assert _interrupted(wrapped) and _interrupted(KeyboardInterrupt())
    assert not _interrupted(RuntimeError("a real start-up failure"))


def test_a_drill_reports_progress_and_human_sizes(env: dict[str, str], tmp_path: Path) -> None:
    repo = Repository.open(tmp_path / "repo", PASSWORD)
    repo.backup([write(tmp_path / "run" / "w.bin", os.urandom(300_000)).parent])
    seen: list[object] = []
    assert repo.drill(level=1, record=False, progress=seen.append).ok
    assert seen, "the drill's restore reported no progress"
    text = ok(wv(env, "drill", "--level", "1")).stdout
    assert "KiB" in text and "bytes" not in text
    assert "KiB" in ok(wv(env, "verify", "latest")).stdout


def test_validate_accepts_the_restore_target_or_the_directory_itself(env: dict[str, str], tmp_path: Path) -> None:
    import numpy as np

    from test_delta import safetensors_bytes
    run = write(tmp_path / "exp" / "model.safetensors",
                safetensors_bytes({"w": ("F32", np.ones((4, 4), dtype=np.float32))})).parent
    ok(wv(env, "backup", run))
    ok(wv(env, "restore", "latest", "--target", tmp_path / "out"))
    for given in (tmp_path / "out", tmp_path / "out" / "exp", run):
        out = json.loads(ok(wv(env, "validate", "latest", given, "--level", "3", "--json")).stdout)
        assert out["ok"] and [f["passed"] for f in out["files"]] == [3], (given, out)


def test_a_source_on_another_host_counts_only_that_hosts_snapshots(env: dict[str, str], tmp_path: Path) -> None:
    run = write(tmp_path / "run" / "model.safetensors", b"w" * 64).parent
    policy = _policy(tmp_path, run)
    policy.write_text(policy.read_text().replace('repository = "main"\n', 'repository = "main"\nhost = "gpu-7"\n', 1))
    ok(wv(env, "backup", run, "--tag", "source=run", "--tag", "class=weights"))  # made here, not on gpu-7
    lines = {ln["dc"]: ln for ln in json.loads(wv(env, "status", "--policy", policy, "--json").stdout)["lines"]}
    assert lines["weights"]["breached"] and lines["weights"]["last"] is None
    ok(wv(env, "backup", run, "--tag", "source=run", "--tag", "class=weights", "--host", "gpu-7"))
    lines = {ln["dc"]: ln for ln in json.loads(wv(env, "status", "--policy", policy, "--json").stdout)["lines"]}
    assert not lines["weights"]["breached"]
    out = json.loads(ok(wv(env, "policy", "apply", "--policy", policy, "--json")).stdout)
    assert not [s for s in out["steps"] if s["step"] == "backup"]  # this machine is not gpu-7
