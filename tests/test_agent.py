"""Real ``weightvault watch`` / ``weightvault agent`` processes: checkpoints written beside them
become snapshots; SIGTERM in the middle of a backup stops the agent, and the next start finishes
the backup reusing its uploads; SIGHUP with a broken policy keeps the old one; one agent per
state directory; ``--once``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD, write
from test_cli import cli_env
from weightvault.api import Repository


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    return {**cli_env(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state")}


class AgentProc:
    """A weightvault agent process whose JSON log lines are collected."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._f = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "weightvault", *args, "--log-format", "json"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=self._f)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line being written, or not JSON (an error at start-up)
                out.append(json.loads(line))
        return out

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 60, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.events()):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log.read_text()[-3000:]
        raise AssertionError(f"timed out waiting for {what}; rc={self.proc.poll()} log:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._f.close()
        return rc


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def _backed_up(step: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda ev: any(e["event"] == "backup.success" and e.get("step") == str(step) for e in ev)


def _hf_checkpoint(root: Path, step: int, size: int = 50_000) -> None:
    d = root / f"checkpoint-{step}"
    write(d / "model.bin", os.urandom(size))
    write(d / "trainer_state.json", json.dumps({"global_step": step}).encode())


def test_watch_backs_up_each_checkpoint_and_stops_on_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "exp7"
    run.mkdir()
    a = AgentProc(["-r", str(tmp_path / "repo"), "watch", str(run), "--tag", "team=ml", "--quiet-for", "1s"], env,
                  tmp_path / "agent.log")
    try:
        a.wait_for(lambda ev: "agent.start" in _names(ev), what="agent.start")
        for step in (10, 20, 30):
            _hf_checkpoint(run, step)
            a.wait_for(_backed_up(step), what=f"backup of step {step}")
        write(tmp_path / "elsewhere" / "x", b"")  # no event for the agent
        second = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(tmp_path / "repo"), "watch", str(run),
                                 "--once"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 12 and "another agent" in second.stderr
    finally:
        assert a.stop() == 0
    names = _names(a.events())
    assert names[-1] == "agent.stop" and "agent.stopping" in names
    snaps = Repository.open(tmp_path / "repo", PASSWORD).snapshots(tags=["run=exp7"])
    assert sorted(next(t for t in s.tags if t.startswith("step=")) for s in snaps) == ["step=10", "step=20", "step=30"]
    assert all("team=ml" in s.tags for s in snaps)


def test_sigterm_mid_backup_then_restart_completes_it_reusing_uploads(env: dict[str, str], tmp_path: Path) -> None:
    from weightvault.backends.local import LocalBackend
    from weightvault.repository.repo import Repository as Engine

    shutil.rmtree(tmp_path / "repo")
    Engine.init(LocalBackend(tmp_path / "repo"), PASSWORD.encode(), kdf=FAST_KDF, pack_size=1024 * 1024)  # many packs
    run = tmp_path / "exp8"
    size = 40_000_000
    _hf_checkpoint(run, 100, size)  # random bytes: stored as they are, at 8 MB/s below (5 s)
    args = ["-r", str(tmp_path / "repo"), "--limit-upload", "8M", "watch", str(run)]
    a = AgentProc(args, env, tmp_path / "a1.log")
    data = tmp_path / "repo" / "data"

    def stored() -> int:  # complete packs only; a temp file may be renamed while we look
        total = 0
        for p in data.rglob("*"):
            if not p.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    total += p.stat().st_size if p.is_file() else 0
        return total

    try:
        a.wait_for(lambda ev: "handoff" in _names(ev), what="the hand-off")
        deadline = time.monotonic() + 60
        while stored() < size // 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored() >= size // 4 and "backup.success" not in _names(a.events())
    finally:
        assert a.stop() == 0
    assert any(e["event"] == "agent.stopping" and e.get("interrupting") for e in a.events())
    assert Repository.open(tmp_path / "repo", PASSWORD).snapshots() == []  # nothing half-done is listed
    assert not list(data.rglob(".tmp-*"))  # the pack in flight was not left behind half-made
    uploaded = stored()
    again = subprocess.run([sys.executable, "-m", "weightvault", *args, "--once", "--log-format", "json"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert '"backup.success"' in again.stderr
    (snap,) = Repository.open(tmp_path / "repo", PASSWORD).snapshots()
    assert "step=100" in snap.tags
    assert stored() < uploaded + 0.8 * size  # the packs uploaded before SIGTERM were adopted, not sent again


def test_sighup_with_a_broken_policy_keeps_the_old_one(env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "exp9"
    run.mkdir()
    policy = tmp_path / "policy.toml"
    good = f"""
[repositories.main]
url = "{tmp_path / 'repo'}"

[sources.exp9]
paths = ["{run}"]
repository = "main"
watch = true
quiet = "1s"
tags = ["from=policy"]

[classes.weights]
globs = ["*.bin"]
every = "1w"
keep_last = 3
"""
    policy.write_text(good)
    env = {**env, "WEIGHTVAULT_PASSWORD": PASSWORD}
    a = AgentProc(["agent", "--policy", str(policy), "--interval", "1h"], env, tmp_path / "agent.log")
    try:
        a.wait_for(lambda ev: "agent.start" in _names(ev), what="agent.start")
        policy.write_text(good.replace('watch = true', 'watch = "yes"'))
        a.proc.send_signal(signal.SIGHUP)
        a.wait_for(lambda ev: "policy.reload_failed" in _names(ev), what="the refused reload")
        failed = next(e for e in a.events() if e["event"] == "policy.reload_failed")
        assert "line 8: sources.exp9.watch" in failed["error"] and "must be true or false" in failed["error"]
        _hf_checkpoint(run, 1)  # the old policy still watches
        a.wait_for(_backed_up(1), what="the backup under the kept policy")
        policy.write_text(good.replace('watch = true', 'watch = false'))
        a.proc.send_signal(signal.SIGHUP)
        a.wait_for(lambda ev: "policy.reloaded" in _names(ev), what="the reload")
        assert next(e for e in a.events() if e["event"] == "policy.reloaded")["watched"] == []
    finally:
        assert a.stop(signal.SIGINT) == 0
    (snap,) = [s for s in Repository.open(tmp_path / "repo", PASSWORD).snapshots() if "step=1" in s.tags]
    assert {"run=exp9", "from=policy"} <= set(snap.tags)


def test_a_failed_precheck_defers_the_job_with_its_reason(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state")}
    run = tmp_path / "exp"
    _hf_checkpoint(run, 1)
    repo = tmp_path / "mnt" / "repo"  # a mount that is not there (yet)
    args = [sys.executable, "-m", "weightvault", "-r", str(repo), "watch", str(run), "--once", "--log-format", "json"]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 1
    (failed,) = [json.loads(ln) for ln in first.stderr.splitlines() if '"precheck_failed"' in ln]
    assert failed["reason"] == f"no repository at {repo}" and failed["retry_in_s"] == 60
    (job,) = json.loads(subprocess.run([sys.executable, "-m", "weightvault", "queue", "list", "--json"], env=env,
                                       capture_output=True, text=True, check=True).stdout)
    assert job["state"] == "queued" and job["error"] == f"precheck failed: no repository at {repo}"
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[repositories.main]\nurl = "{repo}"\n')
    shown = subprocess.run([sys.executable, "-m", "weightvault", "status", "--policy", str(policy)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert f"queue: job {job['id']} queued: {run / 'checkpoint-1'}: precheck failed: no repository" in shown.stdout
    Repository.init(repo, PASSWORD, kdf=FAST_KDF)  # the mount is back
    subprocess.run([sys.executable, "-m", "weightvault", "queue", "retry", str(job["id"])], env=env, check=True,
                   capture_output=True)
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert '"backup.success"' in second.stderr
    (snap,) = Repository.open(repo, PASSWORD).snapshots()
    assert "step=1" in snap.tags
