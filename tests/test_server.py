"""The repository server end to end: a real ``weightvault serve`` process over TLS on 127.0.0.1.

The backend conformance suite through it, backup / restore / check / forget / prune through it by
users of the matching roles, the role matrix on raw requests, the ransomware drill, concurrent
clients, limits and authentication."""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib3

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from weightvault.api import Repository
from weightvault.backends.base import Backend, FileType
from weightvault.backends.http import HttpBackend
from weightvault.errors import AccessDeniedError, BackendError, NoSpaceError, ObjectExistsError, ObjectNotFoundError
from weightvault.testing.backend_conformance import BackendConformance
from weightvault.testing.repo_server import RepoServer, repo_server

ROLES = ("read", "append", "maintain", "admin")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepoServer]:
    with repo_server(tmp_path_factory.mktemp("server"), max_object_size="32MiB", snapshot_rate="10/h") as s:
        yield s


@pytest.fixture(scope="module")
def tokens(srv: RepoServer) -> dict[str, str]:
    return {role: srv.add_user(f"{role}-user", {"*": role}) for role in ROLES}


def _name() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


def _client(srv: RepoServer, repo: str, token: str) -> HttpBackend:
    return HttpBackend(srv.url(repo), token=token, ca_file=str(srv.ca))


class TestServerConformance(BackendConformance):
    """The unchanged contract, through the server, as an admin (who may do everything)."""

    @pytest.fixture(autouse=True)
    def _server(self, srv: RepoServer, tokens: dict[str, str]) -> None:
        self.srv, self.token = srv, tokens["admin"]

    def make_backend(self, tmp_path: Path) -> Backend:
        return _client(self.srv, _name(), self.token)


# -- end to end through the CLI's and the API's paths --------------------------------------------
def _source(root: Path) -> Path:
    src = root / "run"
    write(src / "model.safetensors", os.urandom(2 * 1024 * 1024) + bytes(512 * 1024))
    write(src / "config.json", b'{"hidden": 384}')
    write(src / "logs" / "train.log", b"step 1 loss 0.9\n" * 1000)
    return src


AsRole = Callable[[str], None]


@pytest.fixture
def as_role(srv: RepoServer, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> AsRole:
    """Switch the credentials the API's clients use (the environment) to one of the role users."""
    monkeypatch.setenv("WEIGHTVAULT_SERVER_CA", str(srv.ca))

    def use(role: str) -> None:
        monkeypatch.setenv("WEIGHTVAULT_SERVER_TOKEN", tokens[role])
    return use


def test_backup_restore_check_forget_prune_by_role(srv: RepoServer, as_role: AsRole, tmp_path: Path) -> None:
    url = srv.url(_name())
    as_role("admin")
    Repository.init(url, PASSWORD, kdf=FAST_KDF)
    as_role("append")
    src = _source(tmp_path)
    repo = Repository.open(url, PASSWORD)
    first = repo.backup([src]).snapshot
    write(src / "config.json", b'{"hidden": 768}')
    second = repo.backup([src]).snapshot
    as_role("read")
    reader = Repository.open(url, PASSWORD)
    reader.restore(second.id, tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    assert reader.check(read_data=True).ok
    with pytest.raises(AccessDeniedError, match="may not create"):
        reader.backup([src])
    as_role("maintain")
    keeper = Repository.open(url, PASSWORD)
    keeper.forget([first.id])
    keeper.prune()
    assert [s.id for s in keeper.snapshots()] == [second.id]
    assert keeper.check(read_data=True).ok


def test_the_cli_backs_up_and_restores_through_the_server(srv: RepoServer, tokens: dict[str, str],
                                                          tmp_path: Path) -> None:
    import subprocess
    import sys

    url = srv.url(_name())
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"), WEIGHTVAULT_SERVER_CA=str(srv.ca))

    def wv(role: str, *args: str | Path, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "weightvault", "-r", url, *map(str, args)],
                              env={**env, "WEIGHTVAULT_SERVER_TOKEN": tokens[role]}, capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL)
        assert proc.returncode == code, proc.stdout + proc.stderr
        return proc

    wv("admin", "init")
    src = _source(tmp_path)
    wv("append", "backup", src)
    wv("read", "restore", "latest", "--target", tmp_path / "out")
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    refused = wv("append", "forget", "latest", code=23)
    assert "may not delete snapshots" in refused.stderr and "hint:" in refused.stderr
    bad = subprocess.run([sys.executable, "-m", "weightvault", "-r", url, "snapshots"], capture_output=True,
                         text=True, env={**env, "WEIGHTVAULT_SERVER_TOKEN": "wvt_00000000_" + "A" * 43}, timeout=60)
    assert bad.returncode == 23 and "invalid token" in bad.stderr


# -- the role matrix on raw requests -------------------------------------------------------------
_ALLOWED = {
    # (op, type) -> lowest role allowed; None: nobody below admin
    "create": {FileType.PACK: "append", FileType.INDEX: "append", FileType.SNAPSHOT: "append",
               FileType.LOCK: "read", FileType.LEDGER: "read", FileType.PLAN: "maintain",
               FileType.KEY: "admin", FileType.CONFIG: "admin"},
    "overwrite": {FileType.PACK: "maintain", FileType.INDEX: "maintain", FileType.SNAPSHOT: "maintain",
                  FileType.LOCK: "maintain", FileType.PLAN: "maintain", FileType.LEDGER: "admin",
                  FileType.KEY: "admin", FileType.CONFIG: "admin"},
}
_ALLOWED["delete"] = _ALLOWED["overwrite"]


def _n(ftype: FileType) -> str:
    return "config" if ftype is FileType.CONFIG else os.urandom(32).hex()


@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(srv: RepoServer, tokens: dict[str, str], role: str) -> None:
    repo = _name()
    admin = _client(srv, repo, tokens["admin"])
    admin.create()
    me = _client(srv, repo, tokens[role])
    for ftype in FileType:
        for op, lowest in _ALLOWED.items():
            name = _n(ftype)
            if ftype is FileType.CONFIG:
                admin.remove(ftype, name)
            if op != "create":
                admin.save(ftype, name, b"original")
            allowed = ROLES.index(role) >= ROLES.index(lowest[ftype])
            try:
                if op == "delete":
                    me.remove(ftype, name)
                else:
                    me.save(ftype, name, b"new bytes")
                got = True
            except AccessDeniedError:
                got = False
            assert got is allowed, (role, op, ftype)
            expected = (None if op == "delete" else b"new bytes") if allowed else \
                       (None if op == "create" else b"original")
            try:
                now = admin.load(ftype, name)
            except ObjectNotFoundError:
                now = None
            assert now == expected, (role, op, ftype)
        # reads: every role
        name = _n(ftype)
        admin.save(ftype, name, b"readable")
        assert me.load(ftype, name, 1, 3) == b"ead" and me.stat(ftype, name) == 8
        assert (name, 8) in list(me.list(ftype))


def test_append_may_resend_the_same_bytes_and_manage_only_its_own_locks(srv: RepoServer,
                                                                        tokens: dict[str, str]) -> None:
    repo = _name()
    _client(srv, repo, tokens["admin"]).create()
    a = _client(srv, repo, tokens["append"])
    other_token = srv.add_user(f"other-{uuid.uuid4().hex[:6]}", {repo: "append"})
    b = _client(srv, repo, other_token)
    pack = os.urandom(32).hex()
    a.save(FileType.PACK, pack, b"pack bytes")
    a.save(FileType.PACK, pack, b"pack bytes")  # a retried upload: same bytes, accepted
    with pytest.raises(AccessDeniedError, match="may not overwrite"):
        a.save(FileType.PACK, pack, b"other bytes")
    with pytest.raises(ObjectExistsError):
        a.save(FileType.PACK, pack, b"pack bytes", create_only=True)
    lock = os.urandom(16).hex()
    a.save(FileType.LOCK, lock, b"mine", create_only=True)
    a.save(FileType.LOCK, lock, b"mine, refreshed")
    with pytest.raises(AccessDeniedError, match="only the locks it created"):
        b.remove(FileType.LOCK, lock)
    with pytest.raises(AccessDeniedError, match="only the locks it created"):
        b.save(FileType.LOCK, lock, b"stolen")
    a.remove(FileType.LOCK, lock)
    assert list(a.list(FileType.LOCK)) == []


# -- the ransomware drill ------------------------------------------------------------------------
def test_ransomware_drill_an_append_client_with_the_password_cannot_destroy_backups(
        srv: RepoServer, tokens: dict[str, str], as_role: AsRole, tmp_path: Path) -> None:
    url, name = None, _name()
    url = srv.url(name)
    as_role("admin")
    Repository.init(url, PASSWORD, kdf=FAST_KDF)
    as_role("append")
    src = _source(tmp_path)
    repo = Repository.open(url, PASSWORD)
    snaps = [repo.backup([src]).snapshot]
    write(src / "model.safetensors", os.urandom(1024 * 1024))
    snaps.append(repo.backup([src]).snapshot)
    digest = tree_digest(src)
    attacker = Repository.open(url, PASSWORD)
    with pytest.raises(AccessDeniedError):
        attacker.forget([s.id for s in snaps])
    with pytest.raises(AccessDeniedError):
        attacker.prune()
    raw = _client(srv, name, tokens["append"])
    refused = 0
    for ftype in FileType:
        for obj, _size in list(raw.list(ftype)):
            with pytest.raises(AccessDeniedError):
                raw.remove(ftype, obj)
            with pytest.raises(AccessDeniedError):
                raw.save(ftype, obj, b"encrypted by ransomware")
            refused += 2
    assert refused >= 2 * (2 + 1 + 1 + 1)  # 2 snapshots, a key, the config, packs, index files
    flood: list[bool] = []
    for _ in range(12):  # a snapshot flood to push good ones out of a count-based retention
        try:
            attacker.backup([src])
            flood.append(True)
        except AccessDeniedError as exc:
            assert "snapshot_rate" in str(exc)
            flood.append(False)
    assert flood == [True] * 8 + [False] * 4  # 10 an hour, two of them the good backups
    refused += 4
    as_role("read")
    reader = Repository.open(url, PASSWORD)
    reader.restore(snaps[1].id, tmp_path / "after", verify=True)
    assert tree_digest(tmp_path / "after" / "run") == digest
    assert {s.id for s in snaps} <= {s.id for s in reader.snapshots()}
    assert reader.check(read_data=True).ok
    audit = [json.loads(line) for line in (srv.state_dir / "audit.jsonl").read_text().splitlines()]
    mine = [r for r in audit if r["repo"] == name and r["user"] == "append-user" and r["result"] == "refused"]
    assert len(mine) >= refused and all(r["reason"] for r in mine)
    assert sum(r["type"] == "snapshots" and "snapshot_rate" in r["reason"] for r in mine) == 4


# -- concurrency ---------------------------------------------------------------------------------
def test_eight_clients_back_up_at_once_then_everything_checks_and_restores(srv: RepoServer, as_role: AsRole,
                                                                           tmp_path: Path) -> None:
    url = srv.url(_name())
    as_role("admin")
    Repository.init(url, PASSWORD, kdf=FAST_KDF)
    as_role("append")
    shared = os.urandom(1024 * 1024)
    sources = []
    for i in range(8):
        d = tmp_path / f"node{i}"
        write(d / "shared.bin", shared)
        write(d / "own.bin", os.urandom(300_000))
        sources.append(d)
    errors: list[BaseException] = []
    ids: dict[int, str] = {}

    def run(i: int) -> None:
        try:
            ids[i] = Repository.open(url, PASSWORD).backup([sources[i]]).snapshot.id
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(ids) == 8
    as_role("read")
    reader = Repository.open(url, PASSWORD)
    assert reader.check(read_data=True).ok
    for i, sid in ids.items():
        reader.restore(sid, tmp_path / f"out{i}")
        assert tree_digest(tmp_path / f"out{i}" / f"node{i}") == tree_digest(sources[i])


# -- limits, names, authentication ---------------------------------------------------------------
def _raw(srv: RepoServer, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> urllib3.BaseHTTPResponse:
    pool = urllib3.PoolManager(ca_certs=str(srv.ca), retries=False)
    return pool.request(method, f"{srv.base}{path}", headers=headers or {}, body=body)


def test_names_sizes_and_types_are_validated(srv: RepoServer, tokens: dict[str, str]) -> None:
    repo = _name()
    admin = _client(srv, repo, tokens["admin"])
    admin.create()
    auth = {"authorization": f"Bearer {tokens['admin']}"}
    for path in (f"/{repo}/data/..%2F..%2Fetc", f"/{repo}/data/ABCDEF0123456789", f"/{repo}/data/{'a' * 65}",
                 f"/{repo}/config/other", f"/{repo}/data/.hidden0123456789ab", f"/{repo}/data/a/b"):
        r = _raw(srv, "PUT", path, auth, b"x")
        assert r.status in (400, 404), (path, r.status)
    assert _raw(srv, "GET", f"/{repo}/nosuchtype/", auth).status == 404
    assert _raw(srv, "GET", "/NOT_A_NAME/data/", auth).status == 404
    with pytest.raises(BackendError, match="max_object_size"):
        admin.save(FileType.PACK, os.urandom(32).hex(), bytes(33 * 1024 * 1024))
    assert not any(True for _ in admin.list(FileType.PACK))


def test_authentication_is_required_except_healthz(srv: RepoServer, tokens: dict[str, str]) -> None:
    ctx = ssl.create_default_context(cafile=str(srv.ca))
    with urllib.request.urlopen(f"{srv.base}/healthz", context=ctx, timeout=10) as r:
        assert r.read() == b"ok\n"
    assert _raw(srv, "GET", "/metrics").status == 401
    assert _raw(srv, "GET", "/anything/data/").status == 401
    forged = {"authorization": "Bearer wvt_" + tokens["read"][4:12] + "_" + "B" * 43}
    assert _raw(srv, "GET", "/anything/data/", forged).status == 401
    m = _raw(srv, "GET", "/metrics", {"authorization": f"Bearer {tokens['read']}"})
    assert m.status == 200 and b"weightvault_server_requests_total" in m.data
    assert b"weightvault_server_auth_failures_total" in m.data


def test_failed_logins_are_rate_limited_per_user(tmp_path: Path) -> None:
    with repo_server(tmp_path, login_failures=3) as s:
        s.add_user("victim", {"*": "read"}, password="right password")
        good = {"authorization": "Basic " + base64.b64encode(b"victim:right password").decode()}
        bad = {"authorization": "Basic " + base64.b64encode(b"victim:guess").decode()}
        assert _raw(s, "GET", "/metrics", good).status == 200
        statuses = [_raw(s, "GET", "/metrics", bad).status for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        r = _raw(s, "GET", "/metrics", good)  # the right password too, until the minute has passed
        assert r.status == 429 and int(r.headers["retry-after"]) > 0


def test_quota_refuses_uploads_beyond_it(tmp_path: Path) -> None:
    with repo_server(tmp_path, quota="64KiB") as s:
        token = s.add_user("admin", {"*": "admin"})
        b = _client(s, "q", token)
        b.create()
        b.save(FileType.PACK, os.urandom(32).hex(), bytes(40_000))
        with pytest.raises(NoSpaceError, match="quota"):
            b.save(FileType.PACK, os.urandom(32).hex(), bytes(40_000))
        b2 = _client(s, "q2", token)
        b2.create()
        outcomes: list[bool] = []

        def put() -> None:  # eight at once against a quota that holds one
            try:
                _client(s, "q2", token).save(FileType.PACK, os.urandom(32).hex(), bytes(40_000))
                outcomes.append(True)
            except NoSpaceError:
                outcomes.append(False)

        threads = [threading.Thread(target=put) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == [False] * 7 + [True]
        assert sum(size for _, size in b2.list(FileType.PACK)) == 40_000
        (victim, _), = b2.list(FileType.PACK)
        clients = [_client(s, "q2", token) for _ in range(8)]
        for c in clients:
            c.stat(FileType.PACK, victim)  # connected (TLS done) before the race
        start = threading.Barrier(8)

        def remove(c: HttpBackend) -> None:
            start.wait()
            c.remove(FileType.PACK, victim)

        # eight removals of one object at once give its bytes back once
        removers = [threading.Thread(target=remove, args=(c,)) for c in clients]
        for t in removers:
            t.start()
        for t in removers:
            t.join()
        b2.save(FileType.PACK, os.urandom(32).hex(), bytes(40_000))
        with pytest.raises(NoSpaceError, match="quota"):
            b2.save(FileType.PACK, os.urandom(32).hex(), bytes(40_000))


def test_removing_an_absent_object_is_a_no_op_for_any_role(srv: RepoServer, tokens: dict[str, str]) -> None:
    """A retried removal of a client's own lock (the first one went through) must not be refused."""
    repo = _name()
    _client(srv, repo, tokens["admin"]).create()
    a = _client(srv, repo, tokens["append"])
    lock = os.urandom(16).hex()
    a.save(FileType.LOCK, lock, b"mine", create_only=True)
    a.remove(FileType.LOCK, lock)
    a.remove(FileType.LOCK, lock)  # again: nothing there, nothing refused
    a.remove(FileType.SNAPSHOT, os.urandom(32).hex())
    snap = os.urandom(32).hex()
    _client(srv, repo, tokens["admin"]).save(FileType.SNAPSHOT, snap, b"kept")
    with pytest.raises(AccessDeniedError):
        a.remove(FileType.SNAPSHOT, snap)  # one that is there still needs the role
    assert _client(srv, repo, tokens["read"]).load(FileType.SNAPSHOT, snap) == b"kept"


def test_refusals_come_before_anything_is_read_kept_or_revealed(srv: RepoServer, tokens: dict[str, str],
                                                                 as_role: AsRole) -> None:
    from weightvault.errors import RepositoryExistsError

    repo = _name()
    admin = _client(srv, repo, tokens["admin"])
    admin.create()
    admin.save(FileType.CONFIG, "config", b"a config")
    with pytest.raises(RepositoryExistsError):  # a second init is 409, not an I/O error
        _init_twice(srv, repo, as_role)
    pack = os.urandom(32).hex()
    admin.save(FileType.PACK, pack, b"p" * 100)
    outsider = _client(srv, repo, srv.add_user(f"outsider-{uuid.uuid4().hex[:6]}", {"elsewhere": "admin"}))
    with pytest.raises(AccessDeniedError, match="no role"):
        outsider.save(FileType.PACK, pack, b"p" * 100, create_only=True)  # 403, not 412: existence stays hidden
    with pytest.raises(AccessDeniedError, match="may not create"):
        _client(srv, repo, tokens["read"]).save(FileType.PACK, os.urandom(32).hex(), bytes(1 << 20))
    auth = {"authorization": f"Bearer {tokens['read']}"}
    for rng, status in (("bytes=10-5", 416), ("bytes=200-", 416), ("bytes=" + "9" * 50 + "-", 416),
                        ("bytes=90-500", 206), ("bytes=0-0", 206)):
        r = _raw(srv, "GET", f"/{repo}/data/{pack}", {**auth, "range": rng})
        assert r.status == status, (rng, r.status)
    assert len(_raw(srv, "GET", f"/{repo}/data/{pack}", {**auth, "range": "bytes=90-500"}).data) == 10
    assert _raw(srv, "PATCH", f"/{repo}/data/{pack}", auth).status == 405
    assert _raw(srv, "GET", f"/{repo}/data/{pack[:8]}%0a{pack[8:24]}", auth).status == 400
    leaked = "wvt_" + tokens["admin"][4:12] + "_" + "C" * 43
    sneaky = {"authorization": "Basic " + base64.b64encode(f"{leaked}:x".encode()).decode()}
    assert _raw(srv, "GET", f"/{repo}/data/", sneaky).status == 401
    audit = (srv.state_dir / "audit.jsonl").read_text()
    assert leaked not in audit and tokens["admin"] not in audit and tokens["read"] not in audit
    records = [json.loads(x) for x in audit.splitlines()]
    assert any(r["op"] != "login" and r["status"] == 405 and r["repo"] == repo for r in records)


def _init_twice(srv: RepoServer, repo: str, as_role: AsRole) -> None:
    as_role("admin")
    from weightvault.backends.factory import open_backend

    open_backend(srv.url(repo)).create()
