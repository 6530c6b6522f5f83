"""The agent's metrics scraped over HTTP from a real ``weightvault watch`` process and parsed with
the Prometheus text parser; the textfile of a ``--once`` policy run; a non-loopback listener
needs a bearer token."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FAST_KDF, PASSWORD, write
from test_agent import AgentProc, _backed_up, _hf_checkpoint
from test_cli import cli_env
from weightvault.api import Repository


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
        return r.status, r.read()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    return {**cli_env(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state")}


def test_metrics_over_http_and_as_a_textfile(env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "exp"
    run.mkdir()
    port = _port()
    a = AgentProc(["-r", str(tmp_path / "repo"), "watch", str(run), "--metrics-listen", f"127.0.0.1:{port}",
                   "--metrics-textfile", str(tmp_path / "prom")], env, tmp_path / "agent.log")
    try:
        a.wait_for(lambda ev: any(e["event"] == "metrics.listening" for e in ev), what="the listener")
        _hf_checkpoint(run, 5)
        a.wait_for(_backed_up(5), what="the backup")
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, b"ok\n")
        deadline = time.monotonic() + 30
        while True:  # the queue gauges are updated at the end of the turn that ran the backup
            text = _get(f"http://127.0.0.1:{port}/metrics")[1].decode()
            if 'weightvault_queue_jobs{state="done"} 1.0' in text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        assert a.stop() == 0
    m = _samples(text)
    src = (("repository", str(tmp_path / "repo")), ("source", "exp"))
    assert m[("weightvault_agent_up", ())] == 1
    assert m[("weightvault_backup_timestamp_seconds", src)] > time.time() - 120
    assert m[("weightvault_backup_files", src)] == 2 and m[("weightvault_backup_success", src)] == 1
    assert m[("weightvault_backup_lag_seconds", src)] >= 0
    assert m[("weightvault_queue_jobs", (("state", "done"),))] == 1
    assert m[("weightvault_queue_jobs", (("state", "queued"),))] == 0
    after = _samples((tmp_path / "prom" / "weightvault.prom").read_text())  # written as the agent stopped
    assert after[("weightvault_agent_up", ())] == 0 and after[("weightvault_backup_files", src)] == 2


def test_a_once_policy_run_writes_rpo_metrics(env: dict[str, str], tmp_path: Path) -> None:
    write(tmp_path / "run" / "model.bin", b"weights")
    (tmp_path / "policy.toml").write_text(f"""
[repositories.main]
url = "{tmp_path / 'repo'}"

[sources.exp]
paths = ["{tmp_path / 'run'}"]
repository = "main"
rpo = "1h"

[classes.weights]
globs = ["*.bin"]
every = "1h"
keep_last = 2
""")
    out = subprocess.run([sys.executable, "-m", "weightvault", "agent", "--policy", str(tmp_path / "policy.toml"),
                          "--once", "--metrics-textfile", str(tmp_path / "prom"), "--log-format", "json"],
                         env={**env, "WEIGHTVAULT_PASSWORD": PASSWORD}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    events = [json.loads(ln)["event"] for ln in out.stderr.splitlines() if ln.startswith("{")]
    assert "backup.success" in events
    m = _samples((tmp_path / "prom" / "weightvault.prom").read_text())
    labels = (("class", "weights"), ("repository", "main"), ("source", "exp"))
    assert m[("weightvault_rpo_seconds", labels)] == 3600 and m[("weightvault_rpo_breached", labels)] == 0
    assert m[("weightvault_rpo_age_seconds", labels)] < 120
    assert m[("weightvault_backup_timestamp_seconds", (("repository", "main"), ("source", "exp")))] > time.time() - 120


def test_a_listener_beyond_loopback_needs_a_token(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    args = [sys.executable, "-m", "weightvault", "-r", str(tmp_path / "repo"), "watch", str(tmp_path / "run"), "--once"]
    refused = subprocess.run([*args, "--metrics-listen", "0.0.0.0:0"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "WEIGHTVAULT_METRICS_TOKEN" in refused.stderr
    port = _port()
    # with the token set every listener requires it; tests listen on 127.0.0.1 only
    a = AgentProc(["-r", str(tmp_path / "repo"), "watch", str(tmp_path / "run"), "--metrics-listen",
                   f"127.0.0.1:{port}"], {**env, "WEIGHTVAULT_METRICS_TOKEN": "t0ken"}, tmp_path / "agent.log")
    try:
        a.wait_for(lambda ev: any(e["event"] == "metrics.listening" for e in ev), what="the listener")
        with pytest.raises(urllib.error.HTTPError) as denied:
            _get(f"http://127.0.0.1:{port}/metrics")
        denied.value.close()
        assert denied.value.code == 401
        authorized = _get(f"http://127.0.0.1:{port}/metrics", {"Authorization": "Bearer t0ken"})
        assert authorized[0] == 200 and b"weightvault_agent_up 1.0" in authorized[1]
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        assert a.stop() == 0
    assert "t0ken" not in (tmp_path / "agent.log").read_text()
