"""The dashboard inside ``weightvault serve``: the server's users log in, unlock repositories with
their passwords, and every storage call is decided, windowed and audited by the server's own
rules. A real server process over TLS with a real (tiny) fine-tuning run, driven over HTTPS."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import urllib3

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from weightvault.api import Repository
from weightvault.backends.base import FileType
from weightvault.errors import AccessDeniedError
from weightvault.server.config import load_config
from weightvault.server.dashboard import UserBackend
from weightvault.server.state import ServerState
from weightvault.testing.dashboard import make_training_run
from weightvault.testing.repo_server import RepoServer, repo_server

USERS = {"reader": "read", "writer": "append", "keeper": "maintain"}


def _closed_window() -> str:
    """A maintenance window that is not open now (three days from today, one minute long)."""
    day = (datetime.now(UTC) + timedelta(days=3)).strftime("%a")
    return f"{day} 03:00-03:01 UTC"


@dataclass
class World:
    srv: RepoServer
    root: Path
    snaps: list[Any]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("srvdash")
    (root / "restores").mkdir()
    write(root / "data" / "new-run" / "model.bin", b"w" * 5000)
    with repo_server(root, maintenance_windows=[_closed_window()],
                     dashboard={"restore_root": str(root / "restores"), "backup_roots": [str(root / "data")]}) as srv:
        admin = srv.add_user("admin", {"*": "admin"})
        srv.add_user("boss", {"*": "admin"}, password="boss password")
        for name, role in USERS.items():
            srv.add_user(name, {"runs": role}, password=f"{name} password")
        os.environ["WEIGHTVAULT_SERVER_TOKEN"], os.environ["WEIGHTVAULT_SERVER_CA"] = admin, str(srv.ca)
        try:
            repo = Repository.init(srv.url("runs"), PASSWORD, kdf=FAST_KDF)
            snaps = make_training_run(root / "run", repo, steps=3)
        finally:
            del os.environ["WEIGHTVAULT_SERVER_TOKEN"], os.environ["WEIGHTVAULT_SERVER_CA"]
        yield World(srv, root, snaps)


class Browser:
    """A client of the dashboard holding its session cookie."""

    def __init__(self, w: World) -> None:
        assert w.srv.dashboard is not None
        self.base = w.srv.dashboard
        self.pool = urllib3.PoolManager(ca_certs=str(w.srv.ca), retries=False)
        self.cookie = ""

    def get(self, path: str) -> urllib3.BaseHTTPResponse:
        return self.pool.request("GET", self.base + path, headers={"cookie": self.cookie}, redirect=False)

    def post(self, path: str, fields: dict[str, str]) -> urllib3.BaseHTTPResponse:
        return self.pool.request("POST", self.base + path, fields=fields, encode_multipart=False, redirect=False,
                                 headers={"cookie": self.cookie, "origin": self.base})

    def csrf(self) -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', self.get("/").data.decode())
        assert m is not None
        return m.group(1)

    def login(self, user: str, password: str) -> urllib3.BaseHTTPResponse:
        r = self.post("/login", {"user": user, "password": password})
        if r.status == 303:
            self.cookie = r.headers["set-cookie"].split(";", 1)[0]
        return r

    def unlock(self) -> urllib3.BaseHTTPResponse:
        return self.post("/unlock", {"csrf": self.csrf(), "repo": "runs", "password": PASSWORD})

    def run(self, kind: str, fields: dict[str, str]) -> dict[str, Any]:
        r = self.post(f"/actions/{kind}", {"csrf": self.csrf(), "repo": "runs", **fields})
        assert r.status == 303, (r.status, r.data[:400])
        events = self.pool.request("GET", self.base + r.headers["location"] + "/events",
                                   headers={"cookie": self.cookie}, timeout=urllib3.Timeout(total=120))
        last: dict[str, Any] = json.loads(events.data.decode().strip().splitlines()[-1][6:])
        return last


def test_login_unlock_and_pages_as_a_reader(world: World) -> None:
    b = Browser(world)
    first = b.get("/")
    assert first.status == 303 and first.headers["location"] == "/login"
    assert b.login("reader", "wrong").status == 401
    assert b.login("reader", "reader password").status == 303
    page = b.get("/").data.decode()
    assert "Repositories to unlock" in page and "runs (read)" in page and "Log out" in page
    bad = b.post("/unlock", {"csrf": b.csrf(), "repo": "runs", "password": "not it"})
    assert bad.status == 400 and b"password" in bad.data.lower()
    assert b.unlock().status == 303
    runs = b.get("/runs").data.decode()
    assert runs.count('class="point" data-series="loss"') == 3
    snap = world.snaps[-1]
    got = b.get(f"/snapshots/runs/{snap.id}/download?path=checkpoint-6/model.safetensors")
    assert got.status == 200 and got.data == (world.root / "run" / "checkpoint-6" / "model.safetensors").read_bytes()
    for kind in ("restore", "backup", "prune", "drill"):
        assert b.get(f"/actions/{kind}?repo=runs").status == 403, kind
    audit = [json.loads(line) for line in (world.srv.state_dir / "audit.jsonl").read_text().splitlines()]
    mine = [r for r in audit if r["user"] == "reader" and str(r["addr"]).startswith("dashboard:")]
    assert {r["op"] for r in mine} >= {"login", "read", "list"}
    assert any(r["op"] == "login" and r["result"] == "refused" for r in audit if r["addr"].startswith("dashboard:"))


def test_a_maintainer_restores_under_the_restore_root_and_prunes(world: World) -> None:
    b = Browser(world)
    assert b.login("keeper", "keeper password").status == 303 and b.unlock().status == 303
    snap = world.snaps[1]
    outside = b.post("/actions/restore", {"csrf": b.csrf(), "repo": "runs", "snapshot": snap.id,
                                          "target": str(world.root / "elsewhere"), "level": "0"})
    assert outside.status == 403 and b"restore_root" in outside.data
    target = world.root / "restores" / "keeper"
    job = b.run("restore", {"snapshot": snap.id, "target": str(target), "verify": "1", "level": "3"})
    assert job["state"] == "ok", job
    assert tree_digest(target / "checkpoint-4") == tree_digest(world.root / "run" / "checkpoint-4")
    pruned = b.run("prune", {})  # nothing to delete: no risky call, so the closed window does not matter
    assert pruned["state"] == "ok" and "0 packs" in pruned["result"], pruned


def test_a_writer_backs_up_only_under_the_backup_roots(world: World) -> None:
    b = Browser(world)
    assert b.login("writer", "writer password").status == 303 and b.unlock().status == 303
    denied = b.post("/actions/backup", {"csrf": b.csrf(), "repo": "runs", "paths": "/etc"})
    assert denied.status == 403 and b"backup_roots" in denied.data
    job = b.run("backup", {"paths": str(world.root / "data" / "new-run"), "tags": "run=new"})
    assert job["state"] == "ok" and "saved" in job["result"], job
    assert b.get("/actions/restore?repo=runs").status == 403  # append does not restore from the page


def test_every_storage_call_of_the_dashboard_is_the_servers_decision(world: World) -> None:
    st = ServerState(load_config(world.srv.config))
    reader = UserBackend(st, "runs", "reader", "127.0.0.9")
    assert any(True for _ in reader.list(FileType.SNAPSHOT))
    with pytest.raises(AccessDeniedError, match="may not create"):
        reader.save(FileType.PACK, "ab" * 32, b"x")
    (sid, _), *_ = reader.list(FileType.SNAPSHOT)
    keeper = UserBackend(st, "runs", "keeper", "127.0.0.9")
    with pytest.raises(AccessDeniedError, match="maintenance window"):  # what a prune or forget from the page meets
        keeper.remove(FileType.SNAPSHOT, sid)
    assert keeper.stat(FileType.SNAPSHOT, sid) > 0
    with pytest.raises(AccessDeniedError, match="no longer exists"):
        UserBackend(st, "runs", "ghost", "127.0.0.9").stat(FileType.CONFIG, "config")
    audit = (world.srv.state_dir / "audit.jsonl").read_text()
    assert '"addr":"dashboard:127.0.0.9"' in audit and "maintenance window" in audit


def test_admins_see_the_servers_audit_log_on_the_activity_page(world: World) -> None:
    reader = Browser(world)
    reader.login("reader", "reader password")
    assert "audit log" not in reader.get("/activity").data.decode()
    assert Browser(world).login("nobody", "x").status == 401
    boss = Browser(world)
    assert boss.login("boss", "boss password").status == 303
    page = boss.get("/activity").data.decode()
    assert "The server's audit log" in page and '<table class="audit">' in page
    readers = boss.get("/activity?audit_user=reader").data.decode()
    assert "<td>login</td>" in readers and "<td>boss</td>" not in readers[readers.index('<table class="audit">'):]
    refused = boss.get("/activity?audit_result=refused").data.decode()
    rows = refused[refused.index('<table class="audit">'):]
    assert '<tr class="refused">' in rows and '<tr class="ok">' not in rows
