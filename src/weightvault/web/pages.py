"""The dashboard's pages (GET): overview, runs, snapshot browser, a file's tensors, download,
checkpoint diff, storage and activity. Each reads through ``weightvault.api`` only."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from weightvault import api
from weightvault.errors import WeightvaultError
from weightvault.web import views
from weightvault.web.auth import SECURITY_HEADERS, Session
from weightvault.web.charts import Series, line_chart
from weightvault.web.site import Denied, Site

__all__ = ["activity", "diff", "download", "file_tensors", "overview", "runs", "snapshot", "storage"]

_DOWNLOAD_CHUNK = 4 << 20


def _names(site: Site, session: Session, request: Request) -> list[str]:
    """The repositories a page shows: ``?repo=NAME`` or all this session sees."""
    wanted = request.query_params.get("repo")
    if wanted:
        site.repo(session, wanted)
        return [wanted]
    return list(site.visible(session))


def overview(site: Site, session: Session, request: Request) -> Response:
    now = (site.now or views.now_utc)()
    repos, problems = [], {}
    for name in _names(site, session, request):
        try:
            repos.append((name, views.overview_rows(name, site.repo(session, name), now)))
        except WeightvaultError as exc:  # one unreachable repository does not hide the others
            repos.append((name, []))
            problems[name] = exc.message
    policy_rows = []
    if site.policy is not None and site.fleet is not None:
        try:
            lines = api.policy_status(site.policy, now=now, fleet=site.fleet)
            immutable = {n for n in {ln.repository for ln in lines} if _append_only(site, n)}
            policy_rows = views.policy_rows(lines, immutable)
        except WeightvaultError as exc:
            problems["policy"] = exc.message
    locked = [r for r in session.roles if r not in session.repos] if site.server is not None else []
    jobs = [j for j in site.jobs.all() if site.server is None or j.user == session.user][:10]
    return site.render("overview.html", session, title="Overview", page="overview", repos=repos,
                       problems=problems, policy_rows=policy_rows, jobs=jobs, locked=locked)


def _append_only(site: Site, name: str) -> bool:
    try:
        return site.fleet is not None and site.fleet[name].append_only
    except WeightvaultError:
        return False


def runs(site: Site, session: Session, request: Request) -> Response:
    repos, charts = [], {}
    for name in _names(site, session, request):
        found = views.runs(site.repo(session, name).snapshots())
        repos.append((name, found))
        for run in found:
            series = [Series(s, [(c.step, c.values[s]) for c in run.checkpoints
                                 if c.step is not None and s in c.values]) for s in run.series_names]
            charts[(name, run.name)] = line_chart([s for s in series if s.points], x_label="step",
                                                  y_label=", ".join(run.series_names) or "value")
    return site.render("runs.html", session, title="Runs", page="runs", repos=repos, charts=charts)


def _snap(site: Site, session: Session, request: Request) -> tuple[str, api.Repository, api.Snapshot]:
    name = request.path_params["repo"]
    repo = site.repo(session, name)
    try:
        return name, repo, repo.find_snapshot(request.path_params["sid"])
    except WeightvaultError as exc:
        raise site.failure(exc) from None


def snapshot(site: Site, session: Session, request: Request) -> Response:
    name, repo, snap = _snap(site, session, request)
    prefix = request.query_params.get("path", "").strip("/")
    nodes = repo.ls(snap.id, prefix or None)
    sizes: dict[str, int] = {}
    entries: dict[str, dict[str, Any]] = {}
    base = (prefix + "/") if prefix else ""
    for n in nodes:
        path = os.fsdecode(n.path)
        if path == prefix or not path.startswith(base):
            continue
        child = path[len(base):].split("/", 1)[0]
        sizes[child] = sizes.get(child, 0) + (n.size if n.type == "file" else 0)
        if "/" not in path[len(base):]:
            entries[child] = {"name": child, "path": path, "type": n.type}
    rows = [{**e, "size": sizes.get(k, 0)} for k, e in sorted(entries.items(), key=lambda kv: (kv[1]["type"] != "dir",
                                                                                                 kv[0]))]
    parts = prefix.split("/") if prefix else []
    crumbs = [(p, "/".join(parts[:i + 1])) for i, p in enumerate(parts)]
    others = [s for s in reversed(repo.snapshots()) if s.id != snap.id]
    return site.render("snapshot.html", session, title=f"Snapshot {snap.short_id}", page="", repo=name, snap=snap,
                       entries=rows, crumbs=crumbs, others=others)


def file_tensors(site: Site, session: Session, request: Request) -> Response:
    name, repo, snap = _snap(site, session, request)
    path = request.query_params.get("path", "")
    try:
        table = repo.tensors(snap.id, path)
    except WeightvaultError as exc:
        raise site.failure(exc) from None
    return site.render("file.html", session, title=os.path.basename(path) or path, page="", repo=name, snap=snap,
                       table=table)


def download(site: Site, session: Session, request: Request) -> Response:
    """One file of a snapshot, streamed from the repository (each blob authenticated as it loads)."""
    _name, repo, snap = _snap(site, session, request)
    path = request.query_params.get("path", "").strip("/")
    node = next((n for n in repo.ls(snap.id, path) if os.fsdecode(n.path) == path), None)
    if node is None or node.type != "file":
        raise Denied(404, f"snapshot {snap.short_id} has no file {path!r}", "the snapshot browser lists its files")

    def chunks() -> Iterator[bytes]:
        with repo.open_files(snap.id) as files:
            offset = 0
            while offset < node.size:
                data = files.read(path, offset, min(_DOWNLOAD_CHUNK, node.size - offset))
                if not data:
                    break
                offset += len(data)
                yield data

    quoted = urllib.parse.quote(os.path.basename(path))
    headers = {**SECURITY_HEADERS, "content-length": str(node.size),
               "content-disposition": f"attachment; filename*=UTF-8''{quoted}"}
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


def diff(site: Site, session: Session, request: Request) -> Response:
    name = request.path_params["repo"]
    repo = site.repo(session, name)
    a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
    if not a or not b:
        raise Denied(400, "a diff needs two snapshots: ?a=ID&b=ID", "pick them on the runs page or a snapshot's page")
    try:
        sa, sb = repo.find_snapshot(a), repo.find_snapshot(b)
        d = repo.tensor_diff(sa.id, sb.id)
    except WeightvaultError as exc:
        raise site.failure(exc) from None
    return site.render("diff.html", session, title=f"Diff {sa.short_id} → {sb.short_id}", page="", repo=name, a=sa,
                       b=sb, d=d)


def storage(site: Site, session: Session, request: Request) -> Response:
    repos = []
    for name in _names(site, session, request):
        repo = site.repo(session, name)
        snaps = repo.snapshots()  # oldest first
        raw, stored = views.storage_series(snaps)
        chart = line_chart([Series("raw bytes of the snapshot", raw), Series("stored bytes added (total)", stored)],
                           x_label="snapshot", y_label="bytes", y_format="bytes")
        formats = views.by_format(repo.ls(snaps[-1].id), repo.layouts(snaps[-1].id)) if snaps else []
        spec = site.policy.repositories.get(name) if site.policy is not None else None
        tier = f"{spec.tier} tier, site {spec.site}" if spec is not None else None
        repos.append((name, repo.stats(), chart, formats, tier, snaps[-1] if snaps else None))
    return site.render("storage.html", session, title="Storage", page="storage", repos=repos)


def activity(site: Site, session: Session, request: Request) -> Response:
    names = list(site.visible(session))
    repo = request.query_params.get("repo") or (names[0] if names else "")
    op = request.query_params.get("op") or None
    result = request.query_params.get("result") or None
    records = views.activity(site.repo(session, repo).ledger(), op=op, result=result) if repo else []
    audit = None
    if site.server is not None:  # the server's audit log, for an admin (of these repositories, or of all)
        who = request.query_params.get("audit_user") or None
        outcome = request.query_params.get("audit_result") or None
        audit = site.server.audit(session.user, user=who, result=outcome)
    jobs = [j for j in site.jobs.all() if site.server is None or j.user == session.user]
    return site.render("activity.html", session, title="Activity", page="activity", names=names, repo=repo, op=op,
                       result=result, records=records, audit=audit,
                       audit_user=request.query_params.get("audit_user", ""),
                       audit_result=request.query_params.get("audit_result", ""), jobs=jobs)
