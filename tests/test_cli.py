"""The command-line interface, driven end to end in real subprocesses (`python -m weightvault`)."""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from weightvault import errors
from weightvault.api import Repository

NEW_PASSWORD = "a whole new passphrase 42"
THIRD_PASSWORD = "third time lucky, 7 horses"


def cli_env(home: Path, password: str | None = PASSWORD, **extra: str) -> dict[str, str]:
    """A clean environment: no WEIGHTVAULT_* from outside, HOME/XDG under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "share"), XDG_CONFIG_HOME=str(home / "config"))
    if password is not None:
        env["WEIGHTVAULT_PASSWORD"] = password
    env.update(extra)
    return env


def wv(env: dict[str, str], *args: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdin not a terminal; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, **kw,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def make_source(root: Path) -> Path:
    src = root / "exp7"
    write(src / "model.safetensors", os.urandom(300_000) + bytes(200_000))
    write(src / "cfg" / "train.yaml", b"lr: 0.001\n")
    write(src / "optimizer.pt", b"adam state " * 1000)
    os.symlink("model.safetensors", src / "latest.safetensors")
    return src


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """A repository (cheap KDF) holding one snapshot of a small source; for read-only checks."""
    base = tmp_path_factory.mktemp("cli-shared")
    repo_path = base / "repo"
    Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)
    src = make_source(base)
    write(src / os.fsdecode(b"odd-\xff-name"), b"x")
    env = cli_env(base / "home")
    ok(wv(env, "-r", repo_path, "backup", src, "--tag", "run=exp7"))
    return repo_path, src, env


def test_init_explicit_repository(tmp_path: Path) -> None:
    """`init` with the production KDF; the other tests make repositories with a cheap one to stay fast."""
    env = cli_env(tmp_path / "home", password=None)
    pwfile = write(tmp_path / "pw", PASSWORD.encode() + b"\n")
    repo = tmp_path / "repo"
    nopw = wv(env, "-r", repo, "init")
    assert nopw.returncode == 2 and not repo.exists()
    made = ok(wv(env, "-r", repo, "--password-file", pwfile, "init"))
    assert "created repository" in made.stdout and (repo / "config").is_file()
    assert wv(env, "-r", repo, "--password-file", pwfile, "init").returncode == 13
    from_env_file = {**env, "WEIGHTVAULT_PASSWORD_FILE": str(pwfile)}
    assert json.loads(ok(wv(from_env_file, "-r", repo, "snapshots", "--json")).stdout) == []
    assert wv({**env, "WEIGHTVAULT_PASSWORD": "other"}, "-r", repo, "snapshots").returncode == 11


def test_end_to_end(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", password=None)
    pwfile = write(tmp_path / "pw", PASSWORD.encode() + b"\n")
    repo = str(tmp_path / "repo")
    Repository.init(repo, PASSWORD, kdf=FAST_KDF)
    outputs: list[str] = []

    def run(*args: str | Path, code: int = 0, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = wv({**env, **(extra or {})}, "-r", repo, *args)
        outputs.extend([proc.stdout, proc.stderr])
        assert proc.returncode == code, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    pw = {"WEIGHTVAULT_PASSWORD": PASSWORD}
    src = make_source(tmp_path)
    first = run("--password-file", pwfile, "backup", src, "--tag", "run=exp7", "--tag", "step=1")
    assert "3 new" in first.stdout and "snapshot" in first.stdout
    # no progress bar when stderr is not a terminal; the only line: random bytes named .safetensors
    assert [ln for ln in first.stderr.splitlines() if "stored with generic chunking" not in ln] == []
    write(src / "cfg" / "train.yaml", b"lr: 0.0005\n")
    write(src / "eval.json", b'{"acc": 0.9}')
    second = json.loads(run("backup", src, "--tag", "run=exp7", "--tag", "step=2", "--json", extra=pw).stdout)
    summary = second["snapshot"]["summary"]
    assert (summary["files_new"], summary["files_changed"], summary["files_unmodified"]) == (1, 1, 2)
    assert second["errors"] == [] and second["snapshot"]["tags"] == ["run=exp7", "step=2"]

    snaps = json.loads(run("snapshots", "--json", extra=pw).stdout)
    assert [s["tags"] for s in snaps] == [["run=exp7", "step=1"], ["run=exp7", "step=2"]]
    assert snaps[1]["id"] == second["snapshot"]["id"] and snaps[1]["parent"] == snaps[0]["id"]
    step1 = json.loads(run("snapshots", "--tag", "step=1", "--json", extra=pw).stdout)
    assert [s["id"] for s in step1] == [snaps[0]["id"]]
    table = run("snapshots", extra=pw).stdout
    assert snaps[0]["short_id"] in table and "step=2" in table

    listing = run("ls", "latest", extra=pw).stdout.splitlines()
    assert "exp7/eval.json" in listing and "exp7/cfg/train.yaml" in listing
    nodes = json.loads(run("ls", snaps[0]["short_id"], "exp7/cfg", "--json", extra=pw).stdout)
    assert [(n["path"], n["type"]) for n in nodes] == [("exp7/cfg", "dir"), ("exp7/cfg/train.yaml", "file")]
    assert nodes[1]["size"] == 10 and len(nodes[1]["sha256"]) == 64 and nodes[1]["mode"] == 0o644
    long = run("ls", "latest", "-l", extra=pw).stdout
    assert "-rw-r--r--" in long and "latest.safetensors -> model.safetensors" in long

    d = json.loads(run("diff", snaps[0]["id"], "latest", "--json", extra=pw).stdout)
    assert {(e["change"], e["path"]) for e in d["entries"]} >= {("M", "exp7/cfg/train.yaml"), ("+", "exp7/eval.json")}
    assert d["counts"]["+"] == 1 and d["counts"]["M"] == 1
    assert "M  exp7/cfg/train.yaml" in run("diff", "latest:step=1", "latest:step=2", extra=pw).stdout

    out = tmp_path / "out"
    restored = json.loads(run("restore", "latest:step=1", "--target", out, "--verify", "--json", extra=pw).stdout)
    assert restored["files"] == 3 and restored["verified"] == 3 and restored["symlinks"] == 1
    write(src / "cfg" / "train.yaml", b"lr: 0.001\n")
    (src / "eval.json").unlink()
    assert tree_digest(out / "exp7") == tree_digest(src)
    run("restore", "latest", "--target", out, code=18, extra=pw)  # train.yaml differs
    assert "restored" in run("restore", "latest", "--target", out, "--overwrite", "if-changed", extra=pw).stdout

    assert "no problems" in run("check", extra=pw).stdout
    checked = json.loads(run("check", "--read-data", "--json", extra=pw).stdout)
    assert checked["ok"] is True and checked["packs_read"] == checked["packs"] > 0
    run("check", "--read-data-subset", "50%", extra=pw)
    run("check", "--read-data-subset", "1/2", extra=pw)
    run("check", "--read-data", "--read-data-subset", "1/2", code=2, extra=pw)

    st = json.loads(run("stats", "--json", extra=pw).stdout)
    assert st["snapshots"] == 2 and st["raw_bytes"] > st["unique_bytes"] > 0 and st["dedup_ratio"] > 1
    assert {"stored_bytes", "compression_ratio", "repository_bytes"} <= st.keys()
    assert json.loads(run("stats", "latest:step=1", "--json", extra=pw).stdout)["snapshots"] == 1
    assert "deduplication ratio" in run("stats", extra=pw).stdout

    # keys: add a second password, remove the first, change the password, check which ones open it
    keys = json.loads(run("key", "list", "--json", extra=pw).stdout)
    assert len(keys) == 1 and keys[0]["current"] is True
    run("key", "add", code=2, extra=pw)  # the new password is never taken from argv and stdin is no TTY
    newpw = write(tmp_path / "newpw", NEW_PASSWORD.encode())
    assert "added key" in run("key", "add", "--new-password-file", newpw, extra=pw).stdout
    assert len(json.loads(run("key", "list", "--json", extra=pw).stdout)) == 2
    new = {"WEIGHTVAULT_PASSWORD": NEW_PASSWORD}
    run("key", "remove", keys[0]["id"][:10], code=2, extra=pw)  # the key in use
    assert keys[0]["id"][:12] in run("key", "remove", keys[0]["id"][:10], extra=new).stdout
    assert "wrong password" in run("snapshots", code=11, extra=pw).stderr
    third = write(tmp_path / "third", THIRD_PASSWORD.encode())
    assert "password changed" in run("key", "passwd", "--new-password-file", third, extra=new).stdout
    run("snapshots", code=11, extra=new)
    final = json.loads(run("key", "list", "--json", extra={"WEIGHTVAULT_PASSWORD": THIRD_PASSWORD}).stdout)
    assert len(final) == 1 and final[0]["current"] is True

    assert "no stale locks" in run("unlock", extra={"WEIGHTVAULT_PASSWORD": THIRD_PASSWORD}).stdout
    for secret in (PASSWORD, NEW_PASSWORD, THIRD_PASSWORD):
        assert not any(secret in text for text in outputs)


def test_default_repository_created_on_first_backup(isolated_home: Path, tmp_path: Path) -> None:
    env = cli_env(isolated_home, password=None)
    missing = wv(env, "snapshots")
    assert missing.returncode == 10 and "hint:" in missing.stderr and "weightvault init" in missing.stderr

    src = make_source(tmp_path)
    first = ok(wv(env, "backup", src))
    keyfile = isolated_home / "config" / "weightvault" / "default-repo.key"
    repo_dir = isolated_home / "share" / "weightvault" / "repo"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600 and (repo_dir / "config").is_file()
    assert str(keyfile) in first.stderr and str(repo_dir) in first.stderr
    assert "ONLY way" in first.stderr and "off this disk" in first.stderr
    generated = keyfile.read_text().strip()
    assert len(generated) >= 32 and generated not in first.stdout + first.stderr

    second = ok(wv(env, "backup", src))  # the key file opens it; no creation message this time
    assert "created" not in second.stderr and "0 new" in second.stdout
    assert len(json.loads(ok(wv(env, "snapshots", "--json")).stdout)) == 2
    assert wv(env, "init").returncode == 13
    ok(wv(env, "restore", "latest", "--target", tmp_path / "out"))
    assert tree_digest(tmp_path / "out" / "exp7") == tree_digest(src)
    assert wv({**env, "WEIGHTVAULT_PASSWORD": "not it"}, "snapshots").returncode == 11


def test_init_default_repository(isolated_home: Path) -> None:
    env = cli_env(isolated_home, password=None)
    proc = ok(wv(env, "init"))
    keyfile = isolated_home / "config" / "weightvault" / "default-repo.key"
    assert str(keyfile) in proc.stderr and stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert json.loads(ok(wv(env, "snapshots", "--json")).stdout) == []


def test_error_exit_codes(shared: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    repo, _src, env = shared
    nopw = {k: v for k, v in env.items() if k != "WEIGHTVAULT_PASSWORD"}

    gone = wv(env, "-r", tmp_path / "nothing-here", "snapshots")
    assert gone.returncode == 10 and gone.stderr.startswith("error: ") and "hint: " in gone.stderr
    wrong = wv({**env, "WEIGHTVAULT_PASSWORD": "nope"}, "-r", repo, "snapshots")
    assert wrong.returncode == 11 and "wrong password" in wrong.stderr
    unknown = wv(env, "-r", repo, "ls", "deadbeef")
    assert unknown.returncode == 14 and "deadbeef" in unknown.stderr
    assert wv(env, "-r", repo, "restore", "latest:run=nope", "--target", tmp_path / "t").returncode == 14
    assert wv(env, "-r", repo, "diff", "latest", "0123abcd").returncode == 14
    nopass = wv(nopw, "-r", repo, "snapshots")
    assert nopass.returncode == 2 and "not a terminal" in nopass.stderr
    assert wv(nopw, "-r", repo, "--password-file", tmp_path / "absent", "snapshots").returncode == 2
    assert wv({**nopw, "WEIGHTVAULT_PASSWORD": ""}, "-r", repo, "snapshots").returncode == 2
    assert wv(env, "-r", repo, "restore", "latest", "--target", tmp_path / "t", "--overwrite", "bad").returncode == 2
    assert wv(env, "-r", repo, "ls", "not-an-id!").returncode == 2
    assert wv(env, "-r", repo, "no-such-command").returncode == 2
    assert wv(env, "-r", repo, "backup", tmp_path / "no-such-source").returncode == 2


def test_restore_conflict_exits_18_and_writes_nothing(
    shared: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    repo, _src, env = shared
    target = tmp_path / "target"
    write(target / "exp7" / "cfg" / "train.yaml", b"locally edited\n")
    proc = wv(env, "-r", repo, "restore", "latest", "--target", target)
    assert proc.returncode == 18 and "train.yaml" in proc.stderr and "--overwrite" in proc.stderr
    assert sorted(p.name for p in (target / "exp7").iterdir()) == ["cfg"]
    ok(wv(env, "-r", repo, "restore", "latest", "--target", target, "--overwrite", "never"))
    assert (target / "exp7" / "cfg" / "train.yaml").read_bytes() == b"locally edited\n"
    assert (target / "exp7" / "optimizer.pt").read_bytes() == b"adam state " * 1000


def test_ls_json_keeps_undecodable_names_exact(shared: tuple[Path, Path, dict[str, str]]) -> None:
    repo, _src, env = shared
    nodes = json.loads(ok(wv(env, "-r", repo, "ls", "latest", "--json")).stdout)
    odd = [n for n in nodes if "path_b64" in n]
    assert len(odd) == 1 and base64.b64decode(odd[0]["path_b64"]) == b"exp7/odd-\xff-name"
    assert odd[0]["path"] == "exp7/odd-\\xff-name"
    plain = ok(wv(env, "-r", repo, "ls", "latest")).stdout
    assert "exp7/odd-\\xff-name" in plain


def test_check_reports_corruption_with_exit_5(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    Repository.init(repo, PASSWORD, kdf=FAST_KDF)
    env = cli_env(tmp_path / "home")
    ok(wv(env, "-r", repo, "backup", make_source(tmp_path)))
    packs = sorted((repo / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else -1)
    biggest = packs[-1]
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.chmod(0o644)
    biggest.write_bytes(bytes(data))
    assert "no problems" in ok(wv(env, "-r", repo, "check")).stdout  # structure is intact
    bad = wv(env, "-r", repo, "check", "--read-data")
    assert bad.returncode == 5 and biggest.name in bad.stdout and "problem" in bad.stderr
    doc = json.loads(wv(env, "-r", repo, "check", "--read-data", "--json").stdout)
    assert doc["ok"] is False and doc["errors"]


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2


def _drop_file_read_override() -> None:
    """preexec_fn: take CAP_DAC_OVERRIDE/READ_SEARCH out of the bounding set, so that even root,
    after exec, is bound by file permission bits. (Switching to `nobody` is not enough here:
    the interpreter may live where nobody cannot reach it, such as under /root.)"""
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if _LIBC.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_unreadable_source_exits_3_and_still_saves(tmp_path: Path) -> None:
    repo, src = tmp_path / "repo", tmp_path / "src"
    Repository.init(repo, PASSWORD, kdf=FAST_KDF)
    write(src / "readable.bin", b"fine" * 1000)
    secret = write(src / "secret.bin", b"cannot read me")
    secret.chmod(0)
    env = cli_env(tmp_path / "home")
    kw: dict[str, Any] = {"preexec_fn": _drop_file_read_override} if os.geteuid() == 0 else {}
    probe = subprocess.run([sys.executable, "-c", f"open({str(secret)!r}, 'rb')"], capture_output=True, **kw)
    assert probe.returncode != 0, "the backup process could still read a mode-000 file"
    proc = wv(env, "-r", repo, "backup", src, **kw)
    assert proc.returncode == 3, proc.stderr
    assert "src/secret.bin" in proc.stderr and "Permission denied" in proc.stderr and "error:" in proc.stderr
    assert "snapshot" in proc.stdout
    secret.chmod(0o644)
    listing = ok(wv(env, "-r", repo, "ls", "latest")).stdout.splitlines()
    assert "src/readable.bin" in listing and "src/secret.bin" not in listing


def _write_lock(repo: Path, pid: int) -> Path:
    now = time.time()
    doc = {"exclusive": True, "host": socket.gethostname(), "pid": pid, "user": "tester", "created": now,
           "refreshed": now}
    return write(repo / "locks" / os.urandom(16).hex(), json.dumps(doc).encode())


def test_lock_held_exits_12_and_unlock(shared: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    repo, src, env = shared
    live = _write_lock(repo, os.getpid())  # this test process is alive: the lock is not stale
    try:
        proc = wv(env, "-r", repo, "backup", src)
        assert proc.returncode == 12 and "locked" in proc.stderr and "wait" in proc.stderr
        assert wv(env, "-r", repo, "restore", "latest", "--target", tmp_path / "t").returncode == 12
        kept = ok(wv(env, "-r", repo, "unlock"))
        assert live.exists() and "kept" in kept.stdout
        assert "removed" in ok(wv(env, "-r", repo, "unlock", "--remove-all")).stdout
        assert not live.exists()
    finally:
        live.unlink(missing_ok=True)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = _write_lock(repo, dead.pid)  # its process is gone: stale, but still blocks until removed
    try:
        proc = wv(env, "-r", repo, "check")
        assert proc.returncode == 12 and "STALE" in proc.stderr and "unlock" in proc.stderr
        assert "removed" in ok(wv(env, "-r", repo, "unlock")).stdout and not stale.exists()
        ok(wv(env, "-r", repo, "check"))
    finally:
        stale.unlink(missing_ok=True)


def test_progress_bar_only_on_a_terminal(shared: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    repo, src, env = shared
    quiet = ok(wv(env, "-r", repo, "restore", "latest", "--target", tmp_path / "a"))
    assert quiet.stderr == ""
    primary, replica = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "weightvault", "-r", str(repo), "backup", str(src), "--force"],
            env={**env, "TERM": "xterm", "COLUMNS": "120"}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=replica, timeout=120,
        )
        os.close(replica)
        replica = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if replica >= 0:
            os.close(replica)
        os.close(primary)
    assert proc.returncode == 0
    assert b"backup" in drawn and b"files" in drawn  # the bar's label and file counter were drawn
    assert b"\x1b[" not in proc.stdout and b"snapshot" in proc.stdout  # nothing of it on stdout


def test_docs_exit_code_table_matches_errors() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "CLI.md").read_text()
    table = doc[doc.index("## Exit codes"):]
    documented: dict[str, int] = {}
    for code, names in re.findall(r"^\| (\d+) \|[^|]*\| ([^|]*)\|$", table, re.M):
        for name in re.findall(r"`(\w+)`", names):
            documented[name] = int(code)
    classes = {n: getattr(errors, n) for n in errors.__all__}
    assert {n for n in classes if n not in ("ObjectNotFoundError", "ObjectExistsError")} <= documented.keys()
    for name, code in documented.items():
        assert classes[name].exit_code == code, name


def _answer_prompts(env: dict[str, str], args: list[str], answers: list[tuple[str, str]]) -> tuple[int, str]:
    """Run the CLI with stdin on a pseudo-terminal and type each answer once its prompt (seen on
    stderr) is waiting with echo off, i.e. after getpass has flushed the terminal's input."""
    primary, replica = os.openpty()
    err = bytearray()
    try:
        with subprocess.Popen([sys.executable, "-m", "weightvault", *args], env=env, stdin=replica,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True) as proc:
            stream = proc.stderr
            assert stream is not None

            def pump() -> None:
                while chunk := stream.read1(4096):  # type: ignore[attr-defined]
                    err.extend(chunk)

            reader = threading.Thread(target=pump)
            reader.start()
            for marker, text in answers:
                deadline = time.monotonic() + 60
                while not (marker.encode() in err and not termios.tcgetattr(replica)[3] & termios.ECHO):
                    assert proc.poll() is None and time.monotonic() < deadline, err.decode()
                    time.sleep(0.01)
                os.write(primary, text.encode() + b"\n")
            code = proc.wait(timeout=60)
            reader.join()
    finally:
        os.close(primary)
        os.close(replica)
    return code, err.decode()


def test_password_prompts_on_a_terminal(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", password=None)
    repo = str(tmp_path / "repo")
    code, err = _answer_prompts(env, ["-r", repo, "init"],
                                [("new password for repository", PASSWORD), ("Repeat for confirmation", PASSWORD)])
    assert code == 0, err
    assert PASSWORD not in err
    code, err = _answer_prompts(env, ["-r", repo, "snapshots"], [("password for repository", PASSWORD)])
    assert code == 0, err
    code, err = _answer_prompts(env, ["-r", repo, "snapshots"], [("password for repository", "wrong one")])
    assert code == 11, err


def test_ctrl_c_exits_130_and_releases_the_lock(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    Repository.init(repo, PASSWORD, kdf=FAST_KDF)
    write(tmp_path / "src" / "weights.bin", os.urandom(48 << 20))  # incompressible: takes a while to store
    env = cli_env(tmp_path / "home")

    def locks() -> list[str]:
        return [p.name for p in (repo / "locks").iterdir() if not p.name.startswith(".")]

    # the upload limit keeps the backup running for seconds, so the signal surely lands mid-backup
    with subprocess.Popen([sys.executable, "-m", "weightvault", "-r", str(repo), "--limit-upload", "16M", "backup",
                           str(tmp_path / "src")],
                          env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          # a shell without job control starts background jobs with SIGINT ignored
                          # (and Python keeps SIG_IGN): give the child the default disposition
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        deadline = time.monotonic() + 60
        while not locks():  # the backup holds its lock: it is running
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"error: interrupted" in err and b"Traceback" not in err
    assert locks() == []  # released (a ".tmp-" file of an interrupted write may remain; it is ignored)
    assert json.loads(ok(wv(env, "-r", repo, "snapshots", "--json")).stdout) == []
    (rec,) = json.loads(ok(wv(env, "-r", repo, "ledger", "--op", "backup", "--json")).stdout)
    assert rec["ok"] is False and rec["detail"].startswith("interrupted") and rec["snapshots"] == []
    ok(wv(env, "-r", repo, "repair", "index"))
    (rec,) = json.loads(ok(wv(env, "-r", repo, "ledger", "--op", "repair-index", "--json")).stdout)
    assert rec["ok"] is True and "blobs indexed" in rec["detail"]
    bad = wv(env, "-r", repo, "ledger", "--op", "bakup")
    assert bad.returncode == 2 and "'bakup' is not one of" in bad.stderr


def test_init_delta_depth(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    ok(wv(env, "-r", tmp_path / "r0", "init", "--delta-depth", "0"))
    assert json.loads((tmp_path / "r0" / "config").read_text())["delta_max_depth"] == 0
    ok(wv(env, "-r", tmp_path / "r8", "init"))
    assert json.loads((tmp_path / "r8" / "config").read_text())["delta_max_depth"] == 8
    bad = wv(env, "-r", tmp_path / "r99", "init", "--delta-depth", "99")
    assert bad.returncode == 2 and "0<=x<=32" in bad.stderr.replace(" ", "")
    assert not (tmp_path / "r99").exists()


def test_a_repository_url_of_an_unknown_scheme_is_refused_not_made_a_directory(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", password=PASSWORD)
    work = tmp_path / "work"
    work.mkdir()
    for url in ("azure://bucket/repo", "gcs://bucket/repo", "file:///tmp/x", "S3x://b/r"):
        for args in (("init",), ("backup", str(tmp_path)), ("snapshots",)):
            r = wv(env, "-r", url, *args, cwd=work)
            assert r.returncode == 2 and "is not a storage this weightvault speaks" in r.stderr, (url, args, r.stderr)
            assert all(s in r.stderr for s in ("s3://", "az://", "gs://", "a local path"))
    assert list(work.iterdir()) == []  # nothing was created where the user did not mean
    ok(wv(env, "-r", "./azure://bucket/repo", "init", cwd=work))  # a directory really named so, when asked for
    assert (work / "azure:" / "bucket" / "repo" / "config").exists()
