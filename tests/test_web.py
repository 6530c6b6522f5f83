"""The dashboard over real HTTP: a real ``weightvault ui`` process on a repository holding a real
(tiny) fine-tuning run and a policy, driven with urllib3. Sessions, CSRF, roles, what each page
shows, and actions that land on disk."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import urllib3

from conftest import PASSWORD, tree_digest, write
from webworld import World, build_world
from weightvault.api import Repository
from weightvault.testing.dashboard import Dashboard, dashboard


@dataclass
class Client:
    ui: Dashboard
    pool: urllib3.PoolManager
    cookie_header: str

    def get(self, path: str, **kw: Any) -> urllib3.BaseHTTPResponse:
        return self.pool.request("GET", self.ui.base + path, **kw)

    def text(self, path: str) -> str:
        r = self.get(path)
        assert r.status == 200, (path, r.status, r.data[:500])
        return r.data.decode()

    def post(self, path: str, fields: dict[str, str], **headers: str) -> urllib3.BaseHTTPResponse:
        return self.pool.request("POST", self.ui.base + path, fields=fields, encode_multipart=False,
                                 headers={**self.pool.headers, **headers}, redirect=False)

    def csrf(self, path: str) -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', self.text(path))
        assert m is not None
        return m.group(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[Client]:
    later = (world.t0 + timedelta(minutes=50)).isoformat()
    with dashboard(["ui", "--policy", str(world.policy), "--now", later], world.env, world.root) as ui:
        pool = urllib3.PoolManager(retries=False)
        first = pool.request("GET", ui.url, redirect=False)
        assert first.status == 303 and first.headers["location"] == "/"
        cookie = first.headers["set-cookie"]
        pool.headers = {"cookie": cookie.split(";", 1)[0]}
        yield Client(ui, pool, cookie)


def test_every_page_needs_the_session_and_the_start_token_works_once(client: Client) -> None:
    anon = urllib3.PoolManager(retries=False)
    assert anon.request("GET", client.ui.base + "/healthz").data == b"ok\n"
    for path in ("/", "/runs", "/storage", "/activity", f"/snapshots/main/{'0' * 64}", "/actions/restore"):
        r = anon.request("GET", client.ui.base + path, redirect=False)
        assert r.status == 401 and b"no session" in r.data, path
    assert anon.request("GET", client.ui.url, redirect=False).status == 401  # spent by the client fixture
    forged = anon.request("GET", client.ui.base + "/", headers={"cookie": "wv_session=guess"})
    assert forged.status == 401
    assert "HttpOnly" in client.cookie_header and "SameSite=strict" in client.cookie_header.replace("Strict", "strict")
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"


def test_overview_colours_each_source_against_its_rpo(client: Client) -> None:
    page = client.text("/")
    for source, colour in (("fresh", "green"), ("aging", "amber"), ("late", "red")):
        m = re.search(rf'<tr class="state-(\w+)" data-source="{source}"', page)
        assert m is not None and m.group(1) == colour, (source, page[:2000])
    assert "run tiny" in page  # the training run's checkpoints are one source


def test_runs_chart_has_one_point_per_checkpoint(client: Client, world: World) -> None:
    page = client.text("/runs")
    section = page[page.index('data-run="tiny"'):]
    section = section[:section.index("</section>")]
    assert section.count('class="point" data-series="loss"') == len(world.snaps) == 5
    for snap in world.snaps:
        assert snap.id in section


def test_tensor_diff_lists_the_fine_tuned_tensors(client: Client, world: World) -> None:
    a, b = world.snaps[0], world.snaps[1]
    page = client.text(f"/diff/main?a={a.id}&b={b.id}")
    row = page[page.index("checkpoint-4/model.safetensors"):]
    row = row[:row.index("</tr>")]
    changed = set(re.findall(r'<li class="tensor">([^<\s]+)', row))
    assert "2.weight" in changed and "0.weight" not in changed  # the frozen layer did not change
    for name in changed - {"2.weight", "2.bias"}:  # a small tensor stored with a changed one is flagged
        assert f"{name} <small>(or a small tensor stored with it)" in row
    assert "compared with checkpoint-2/model.safetensors" in row
    assert "optimizer.pt" in page and "stored added" in page


def test_a_files_tensors_and_its_download(client: Client, world: World) -> None:
    snap = world.snaps[-1]
    path = "checkpoint-10/model.safetensors"
    page = client.text(f"/snapshots/main/{snap.id}/file?path={path}")
    assert "format safetensors" in page and page.count("<td>F32</td>") == 4
    assert "<td>256 × 256</td>" in page and "<td>256</td>" in page
    got = client.get(f"/snapshots/main/{snap.id}/download?path={path}")
    assert got.status == 200 and got.data == (world.run / path).read_bytes()
    assert "attachment" in got.headers["content-disposition"]
    missing = client.get(f"/snapshots/main/{snap.id}/download?path=nope")
    assert missing.status == 404
    tree = client.text(f"/snapshots/main/{snap.id}?path=checkpoint-10")
    assert "optimizer.pt" in tree and "trainer_state.json" in tree


def _wait(client: Client, location: str) -> dict[str, Any]:
    stream = client.get(location + "/events", timeout=urllib3.Timeout(total=120))  # ends when the job does
    events = [json.loads(line[6:]) for line in stream.data.decode().splitlines() if line.startswith("data: ")]
    assert events and events[-1]["state"] != "running"
    last: dict[str, Any] = events[-1]
    return last


def test_restore_started_from_the_page_lands_byte_identical(client: Client, world: World) -> None:
    snap = world.snaps[2]
    path = f"/actions/restore?repo=main&snapshot={snap.id}"
    token = client.csrf(path)
    target = world.root / "restored"
    fields = {"repo": "main", "snapshot": snap.id, "target": str(target), "verify": "1", "level": "3",
              "overwrite": "error"}
    assert client.post("/actions/restore", fields).status == 403  # no CSRF token
    assert client.post("/actions/restore", {**fields, "csrf": "x" * 32}).status == 403
    assert client.post("/actions/restore", {**fields, "csrf": token}, origin="http://evil.example").status == 403
    relative = client.post("/actions/restore", {**fields, "csrf": token, "target": "restored"})
    assert relative.status == 400 and b"not an absolute path" in relative.data
    assert not target.exists()
    started = client.post("/actions/restore", {**fields, "csrf": token})
    assert started.status == 303
    job = _wait(client, started.headers["location"])
    assert job["state"] == "ok", job
    assert "validated at level 3: ok" in job["result"] and job["record"]["op"] == "restore"
    assert tree_digest(target / "checkpoint-6") == tree_digest(world.run / "checkpoint-6")
    (target / "checkpoint-6" / "trainer_state.json").write_text("{}")  # changed since
    again = _wait(client, client.post("/actions/restore", {**fields, "csrf": token}).headers["location"])
    assert again["state"] == "failed", again  # the CLI's default: refuse to replace a file that differs
    assert (target / "checkpoint-6" / "trainer_state.json").read_text() == "{}"
    page = client.text(started.headers["location"])
    assert "ok" in page and '"op": "restore"' in page


def test_storage_and_activity(client: Client) -> None:
    storage = client.text("/storage")
    assert "Deduplicated" in storage and 'class="chart"' in storage
    assert 'data-format=".txt"' in storage  # the newest snapshot (a policy source's notes) by format
    assert "hot tier, site dc1" in storage
    activity = client.text("/activity?repo=main&op=backup")
    assert activity.count("<td>backup</td>") >= 8 and "<td>restore</td>" not in activity


def test_html_in_names_and_tags_is_escaped(client: Client, world: World) -> None:
    src = world.root / "<img src=x onerror=alert(1)>"
    write(src / "a.txt", b"x")
    snap = Repository.open(world.repo, PASSWORD).backup([src], tags=["note=<script>alert(1)</script>"]).snapshot
    page = client.text(f"/snapshots/main/{snap.id}")
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page


def test_a_read_only_dashboard_shows_but_refuses_every_action(world: World) -> None:
    with dashboard(["-r", str(world.repo), "ui", "--read-only"], {**world.env, "WEIGHTVAULT_PASSWORD": PASSWORD},
                   world.root) as ui:
        pool = ui.session()
        snap = world.snaps[0]
        page = pool.request("GET", f"{ui.base}/snapshots/repo/{snap.id}?path=checkpoint-2").data.decode()
        assert "tensors" in page and "download" in page and "Restore…" not in page
        for kind in ("backup", "restore", "drill", "verify"):
            r = pool.request("GET", f"{ui.base}/actions/{kind}?repo=repo")
            assert r.status == 403 and b"needs role" in r.data, kind
        r = pool.request("POST", f"{ui.base}/actions/drill", fields={"repo": "repo", "csrf": "x"},
                         encode_multipart=False, headers=pool.headers)
        assert r.status == 403 and b"needs role maintain" in r.data  # the role decides before anything else
