"""The repository server's limits on a real process: per-user private repositories, and nothing
served while the audit log cannot be written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import urllib3

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from weightvault.api import Repository
from weightvault.backends.base import FileType
from weightvault.backends.http import HttpBackend
from weightvault.errors import AccessDeniedError
from weightvault.testing.repo_server import RepoServer, repo_server


def _raw(srv: RepoServer, method: str, path: str, token: str | None = None,
         body: bytes | None = None) -> urllib3.BaseHTTPResponse:
    pool = urllib3.PoolManager(ca_certs=str(srv.ca), retries=False)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return pool.request(method, f"{srv.base}{path}", headers=headers, body=body)


def test_private_repos_give_each_user_their_own_repository_only(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with repo_server(tmp_path / "srv", private_repos="append") as srv:
        admin = srv.add_user("admin", {"*": "admin"})
        alice, bob = srv.add_user("alice", {}), srv.add_user("bob", {})
        monkeypatch.setenv("WEIGHTVAULT_SERVER_CA", str(srv.ca))
        for name in ("alice", "bob"):
            monkeypatch.setenv("WEIGHTVAULT_SERVER_TOKEN", admin)
            Repository.init(srv.url(name), PASSWORD, kdf=FAST_KDF)
        src = tmp_path / "run"
        write(src / "model.safetensors", os.urandom(200_000))
        monkeypatch.setenv("WEIGHTVAULT_SERVER_TOKEN", alice)
        snap = Repository.open(srv.url("alice"), PASSWORD).backup([src]).snapshot
        with pytest.raises(AccessDeniedError, match="no role on repository bob"):
            Repository.open(srv.url("bob"), PASSWORD)
        own = HttpBackend(srv.url("alice"), token=alice, ca_file=str(srv.ca))
        with pytest.raises(AccessDeniedError, match="may not delete"):  # append: still no deletes
            own.remove(FileType.SNAPSHOT, snap.id)
        assert _raw(srv, "GET", "/bob/snapshots/", bob).status == 200
        assert _raw(srv, "GET", "/bob/snapshots/", alice).status == 403
        Repository.open(srv.url("alice"), PASSWORD).restore(snap.id, tmp_path / "out", verify=True)
        assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)


def test_nothing_is_served_while_the_audit_log_cannot_be_written(tmp_path: Path) -> None:
    with repo_server(tmp_path / "srv") as srv:
        token = srv.add_user("admin", {"*": "admin"})
        b = HttpBackend(srv.url("r"), token=token, ca_file=str(srv.ca))
        b.create()
        log = srv.state_dir / "audit.jsonl"
        assert _raw(srv, "GET", "/r/data/", token).status == 200
        log.rename(log.with_suffix(".kept"))
        log.mkdir()  # a real fault: the log's path cannot be opened for writing
        first = _raw(srv, "PUT", f"/r/data/{'a' * 64}", token, b"packed")
        assert first.status == 503 and "audit log cannot be written" in first.json()["error"]
        second = _raw(srv, "PUT", f"/r/data/{'b' * 64}", token, b"packed")
        assert second.status == 503 and second.json()["rule"] == "audit"
        assert _raw(srv, "GET", "/healthz").status == 503
        data = srv.state_dir.parent / "repos" / "r" / "data"
        assert (data / "aa" / ("a" * 64)).exists()  # in flight when the log failed: kept, its record logged
        assert not (data / "bb" / ("b" * 64)).exists()  # refused before anything was stored
        log.rmdir()
        log.with_suffix(".kept").rename(log)
        assert _raw(srv, "GET", "/healthz").status == 200
        assert _raw(srv, "PUT", f"/r/data/{'b' * 64}", token, b"packed").status == 201
        records = [json.loads(line) for line in log.read_text().splitlines()]
        resumed = [r for r in records if r["op"] == "audit-resumed"]
        assert len(resumed) == 1 and "refused meanwhile" in resumed[0]["reason"]
        assert records[-1]["name"] == "b" * 64 and records[-1]["status"] == 201
        verify = srv.cli("audit", "verify")
        assert "4 records, chain intact" in verify.stdout  # init, list, resumed, the put
        assert "a" * 64 in (srv.state_dir.parent / "server.log").read_text()  # the lost record, on stderr
