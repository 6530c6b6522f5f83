"""Notifications against real local servers: an HTTP server that records webhooks and
Healthchecks pings (one endpoint fails twice, to exercise retries; one always fails), a real SMTP
server (aiosmtpd), a command; then a real agent process whose policy notifies a webhook. Secrets
in URLs never reach the log."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD
from test_agent import AgentProc, _backed_up, _hf_checkpoint
from test_cli import cli_env
from weightvault.agent.events import EventLog
from weightvault.agent.notify import Notifier
from weightvault.api import Repository, parse_policy


class Recorder(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: list[tuple[str, bytes]] = []
        self.flaky = 0  # /flaky answers 500 this many times first

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        fail = path.startswith("/down") or (path.startswith("/flaky") and self.server.flaky > 0)
        if path.startswith("/flaky") and self.server.flaky > 0:
            self.server.flaky -= 1
        self.server.hits.append((self.path, body))
        self.send_response(500 if fail else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http() -> Iterator[Recorder]:
    srv = Recorder()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _policy(extra: str) -> str:
    return f'[repositories.main]\nurl = "/nonexistent"\n{extra}'


def test_webhooks_pings_retries_and_secrets(http: Recorder) -> None:
    http.flaky = 2
    spec = parse_policy(_policy(f"""
[[notify]]
on = ["backup.error"]
webhook = "{http.url}/flaky?token=s3cr3t"
format = "slack"
retries = 3

[[notify]]
on = ["backup.*"]
ping = "{http.url}/hc/abc"

[[notify]]
on = ["*.error"]
webhook = "{http.url}/down?token=s3cr3t"
retries = 1

[[notify]]
on = ["prune.*"]
webhook_env = "HOOK_URL"
"""))
    out = io.StringIO()
    log = EventLog(out, fmt="json")
    sleeps: list[float] = []
    n = Notifier(spec.notify, log, env={"HOOK_URL": f"{http.url}/fromenv"}, sleep=sleeps.append)
    log.listeners.append(n)
    log.emit("backup.start", source="exp")
    log.emit("backup.success", source="exp", snapshot="1a2b3c4d")
    log.emit("backup.error", "error", source="exp", error=f"boom at {http.url}/x?token=s3cr3t")
    log.emit("prune.success", repository="main")
    log.emit("check.success")  # nobody wants it
    n.close()
    paths = [p for p, _ in http.hits]
    assert paths.count("/flaky?token=s3cr3t") == 3  # two 500s, then delivered
    assert sleeps[:2] == [1.0, 2.0]  # backoff between attempts
    assert [p for p in paths if p.startswith("/hc/")] == ["/hc/abc/start", "/hc/abc", "/hc/abc/fail"]
    assert paths.count("/down?token=s3cr3t") == 2 and "/fromenv" in paths
    slack = json.loads(next(b for p, b in http.hits if p.startswith("/flaky")))
    assert set(slack) == {"text"} and slack["text"].startswith("weightvault backup.error source=exp: boom")
    assert "s3cr3t" not in slack["text"]  # the error's URL was redacted before anything saw it
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    failed = [e for e in lines if e["event"] == "notify.failed"]
    assert [(e["notifier"], e["kind"], e["attempts"]) for e in failed] == [(3, "webhook", 2)]
    assert "s3cr3t" not in out.getvalue() and n.sent == 5 and n.failed == 1


def test_email_over_a_real_smtp_server_and_a_command(tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    got: list[Any] = []

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            got.append(envelope)
            return "250 OK"

    import socket

    with socket.socket() as probe:  # a free port (aiosmtpd's start-up check cannot use port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        out_file = tmp_path / "cmd.json"
        spec = parse_policy(_policy(f"""
[[notify]]
on = ["rpo_breach"]
email = "oncall@example.com"
smtp = "127.0.0.1:{port}"
from = "wv@example.com"
starttls = false

[[notify]]
on = ["rpo_breach"]
command = ["{sys.executable}", "-c", "import os, sys; open(sys.argv[1], 'w').write(os.environ['WV_EVENT_JSON'])",
           "{out_file}"]
"""))
        log = EventLog(io.StringIO())
        n = Notifier(spec.notify, log)
        log.listeners.append(n)
        log.emit("rpo_breach", "error", source="exp7", repository="main", age_s=7300, rpo_s=3600)
        n.close()
    finally:
        ctl.stop()
    (mail,) = got
    assert mail.mail_from == "wv@example.com" and mail.rcpt_tos == ["oncall@example.com"]
    text = mail.content.decode()
    assert "Subject: [weightvault] rpo_breach exp7" in text and '"age_s": 7300' in text
    assert json.loads(out_file.read_text())["source"] == "exp7"


def test_an_agent_notifies_a_webhook_of_each_backup(http: Recorder, tmp_path: Path) -> None:
    Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    env = {**cli_env(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state"), "WEIGHTVAULT_PASSWORD": PASSWORD,
           "HOOK": f"{http.url}/hook?key=hidden"}
    run = tmp_path / "exp"
    run.mkdir()
    policy = tmp_path / "policy.toml"
    policy.write_text(f"""
[repositories.main]
url = "{tmp_path / 'repo'}"

[sources.exp]
paths = ["{run}"]
repository = "main"
watch = true

[classes.all]
globs = ["*"]
every = "1w"
keep_last = 5

[[notify]]
on = ["backup.success", "backup.error"]
webhook_env = "HOOK"
""")
    a = AgentProc(["agent", "--policy", str(policy), "--interval", "1h"], env, tmp_path / "agent.log")
    try:
        a.wait_for(lambda ev: any(e["event"] == "agent.start" for e in ev), what="agent.start")
        _hf_checkpoint(run, 3)
        a.wait_for(_backed_up(3), what="the backup")
        deadline = time.monotonic() + 20
        while not any(p.startswith("/hook") for p, _ in http.hits) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert a.stop() == 0
    bodies = [json.loads(b) for p, b in http.hits if p.startswith("/hook")]
    assert any(b["event"] == "backup.success" and b["step"] == "3" and b["source"] == "exp" for b in bodies)
    assert "hidden" not in (tmp_path / "agent.log").read_text()
