"""``weightvault serve`` as an operator drives it: users, maintenance windows and break-glass on a
real server process, the audit log and its verification, and refusals at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from weightvault.backends.base import FileType
from weightvault.backends.http import HttpBackend
from weightvault.errors import AccessDeniedError
from weightvault.testing.repo_server import repo_server


def _hhmm(t: datetime) -> str:
    return t.strftime("%H:%M")


def test_users_from_the_cli_and_no_secret_in_listings(tmp_path: Path) -> None:
    with repo_server(tmp_path) as s:
        token = s.cli("user", "add", "ci@node-1", "--role", "runs=append", "--role", "*=read").stdout.strip()
        assert token.startswith("wvt_")
        b = HttpBackend(s.url("runs"), token=token, ca_file=str(s.ca))
        with pytest.raises(AccessDeniedError, match="only role admin"):
            b.create()
        listing = s.cli("user", "list", "--json").stdout
        assert json.loads(listing)[0]["roles"] == {"*": "read", "runs": "append"}
        assert token not in listing and token[13:] not in (s.state_dir / "users.json").read_text()
        s.cli("user", "add", "ops", "--role", "*=admin", "--password-stdin", stdin="hunter2 but longer\n")
        assert s.cli("user", "add", "ops", "--role", "*=admin", check=2).stderr.count("already exists") == 1
        assert "REPOSITORY=ROLE" in s.cli("user", "role", "ops", "--role", "runs=root", check=2).stderr
        new = s.cli("user", "token", "ci@node-1", "--revoke-all").stdout.strip()
        with pytest.raises(AccessDeniedError, match="invalid token"):
            list(b.list(FileType.SNAPSHOT))  # the running server read the changed file
        admin = HttpBackend(s.url("runs"), token=s.add_user("root", {"*": "admin"}), ca_file=str(s.ca))
        admin.create()
        assert list(HttpBackend(s.url("runs"), token=new, ca_file=str(s.ca)).list(FileType.SNAPSHOT)) == []
        s.cli("user", "remove", "ci@node-1")
        with pytest.raises(AccessDeniedError):
            list(HttpBackend(s.url("runs"), token=new, ca_file=str(s.ca)).list(FileType.SNAPSHOT))


def test_deletes_wait_for_the_window_or_break_glass_and_everything_is_audited(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    closed = f"daily {_hhmm(now + timedelta(hours=6))}-{_hhmm(now + timedelta(hours=7))} UTC"
    with repo_server(tmp_path, maintenance_windows=[closed]) as s:
        admin = HttpBackend(s.url("r"), token=s.add_user("admin", {"*": "admin"}), ca_file=str(s.ca))
        keeper = HttpBackend(s.url("r"), token=s.add_user("keeper", {"*": "maintain"}), ca_file=str(s.ca))
        admin.create()
        snap = os.urandom(32).hex()
        keeper.save(FileType.SNAPSHOT, snap, b"snapshot")  # creating is not risky
        with pytest.raises(AccessDeniedError, match="maintenance window") as e:
            keeper.remove(FileType.SNAPSHOT, snap)
        assert closed in str(e.value)
        with pytest.raises(AccessDeniedError, match="maintenance window"):
            admin.save(FileType.SNAPSHOT, snap, b"changed")  # an overwrite, even by an admin
        assert "not an admin" in s.cli("break-glass", "--by", "keeper", "--reason", "x", check=2).stderr
        out = s.cli("break-glass", "--by", "admin", "--reason", "INC-42 cleanup", "--for", "10min").stdout
        assert "break-glass window open until" in out
        keeper.remove(FileType.SNAPSHOT, snap)
        assert list(keeper.list(FileType.SNAPSHOT)) == []
        refused = [json.loads(x) for x in s.cli("audit", "--result", "refused", "--json").stdout.splitlines()]
        assert [(r["user"], r["op"], r["type"]) for r in refused] == [("keeper", "delete", "snapshots"),
                                                                     ("admin", "put", "snapshots")]
        assert all("maintenance window" in r["reason"] for r in refused)
        records = [json.loads(x) for x in s.cli("audit", "--json").stdout.splitlines()]
        assert any(r["op"] == "break-glass" and r["reason"] == "INC-42 cleanup" for r in records)
        deleted = [r for r in records if r["op"] == "delete" and r["result"] == "ok"]
        assert len(deleted) == 1 and "break-glass" in deleted[0]["window"]
        assert "keeper" in s.cli("audit", "--user", "keeper", "--since", "1h").stdout
        assert "chain intact" in s.cli("audit", "verify").stdout
    audit = tmp_path / "state" / "audit.jsonl"
    lines = audit.read_text().splitlines()
    rec = json.loads(lines[3])
    rec["user"] = "someone-else"
    lines[3] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    audit.write_text("\n".join(lines) + "\n")
    bad = subprocess.run([sys.executable, "-m", "weightvault", "serve", "--config", str(tmp_path / "server.toml"),
                          "audit", "verify"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 5 and "line 4" in bad.stderr


def test_inside_the_window_a_maintainer_deletes(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    window = f"daily {_hhmm(now - timedelta(hours=1))}-{_hhmm(now + timedelta(hours=1))} UTC"
    with repo_server(tmp_path, maintenance_windows=[window]) as s:
        admin = HttpBackend(s.url("r"), token=s.add_user("admin", {"*": "admin"}), ca_file=str(s.ca))
        admin.create()
        name = os.urandom(32).hex()
        admin.save(FileType.PACK, name, b"pack")
        admin.remove(FileType.PACK, name)
        assert list(admin.list(FileType.PACK)) == []


def _serve(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "server.toml"
    cfg.write_text(config)
    return subprocess.run([sys.executable, "-m", "weightvault", "serve", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60)


def test_plain_http_off_loopback_bad_tls_and_bad_config_are_refused(tmp_path: Path) -> None:
    r = _serve(tmp_path, '[server]\nlisten = "0.0.0.0:0"\nroot = "repos"\n')
    assert r.returncode == 2 and "refusing plain HTTP" in r.stderr and "--insecure-http" in r.stderr
    (tmp_path / "c.pem").write_text("not a certificate")
    r = _serve(tmp_path, '[server]\nlisten = "127.0.0.1:0"\nroot = "repos"\ntls_cert = "c.pem"\ntls_key = "c.pem"\n')
    assert r.returncode == 7 and "TLS certificate" in r.stderr
    r = _serve(tmp_path, '[server]\nlisten = "127.0.0.1:0"\n')
    assert r.returncode == 7 and "serves no repository" in r.stderr
    r = subprocess.run([sys.executable, "-m", "weightvault", "serve", "--config", str(tmp_path / "missing.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 7 and "no server configuration at" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "WEIGHTVAULT_SERVER_CONFIG"}
    r = subprocess.run([sys.executable, "-m", "weightvault", "serve", "user", "list"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 2 and "--config FILE" in r.stderr


def test_plain_http_on_loopback_works(tmp_path: Path) -> None:
    with repo_server(tmp_path, tls=False) as s:
        assert s.base.startswith("http://127.0.0.1:")
        b = HttpBackend(s.url("plain"), token=s.add_user("a", {"*": "admin"}))
        b.create()
        b.save(FileType.SNAPSHOT, os.urandom(32).hex(), b"x")
        assert len(list(b.list(FileType.SNAPSHOT))) == 1
