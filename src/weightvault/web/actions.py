"""The dashboard's actions: back up a source now, restore a snapshot (or one file) to a path on the
host, run a drill, verify a sample, prune. ``GET /actions/KIND`` shows what will happen and asks for
confirmation; ``POST /actions/KIND`` (session + CSRF token) checks the role and starts a job
whose work is the same ``weightvault.api`` call the CLI makes, then redirects to its page.

Roles (the repository server's): ``append`` may back up; ``maintain`` may also restore, drill,
verify and prune. Inside ``weightvault serve`` a restore goes under ``restore_root`` only and a
backup reads only paths under ``backup_roots``, and the server's rules and windows apply to every
storage call the operation makes (``server.dashboard``). A restore target must be an absolute
path; the restore itself never writes outside it and, like the CLI's default, refuses before
writing anything if a file there differs (``overwrite`` says otherwise only when asked).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from weightvault import api
from weightvault.errors import UsageError, ValidationFailedError
from weightvault.web.auth import SECURITY_HEADERS, Session
from weightvault.web.charts import human_bytes
from weightvault.web.site import Denied, Site

__all__ = ["NEEDS", "confirm", "start"]

NEEDS = {"backup": "append", "restore": "maintain", "drill": "maintain", "verify": "maintain",
         "prune": "maintain"}
_LEVELS = [("0", "no validation"), ("1", "1 integrity"), ("2", "2 format"), ("3", "3 structure")]


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: str  # text, textarea, checkbox, select, hidden
    value: Any = ""
    options: tuple[tuple[str, str], ...] = ()
    required: bool = False


def _kind(request: Request) -> str:
    kind = str(request.path_params["kind"])
    if kind not in NEEDS:
        raise Denied(404, f"no action {kind!r}", f"actions: {', '.join(NEEDS)}")
    return kind


def confirm(site: Site, session: Session, request: Request) -> Response:
    kind = _kind(request)
    q = request.query_params
    name = q.get("repo") or next(iter(site.visible(session)), "")
    site.require(session, name, NEEDS[kind], kind)
    site.repo(session, name)
    if kind == "backup":
        fields = [Field("paths", "Paths (one per line)", "textarea", q.get("paths", ""), required=True),
                  Field("tags", "Tags (k=v, space-separated)", "text", q.get("tags", ""))]
        explain = f"Back up these paths into repository {name} now, as `weightvault backup` would."
    elif kind == "restore":
        fields = [Field("snapshot", "Snapshot", "hidden", q.get("snapshot", "latest")),
                  Field("target", "Restore into (an absolute path on this host)", "text", q.get("target", ""),
                        required=True),
                  Field("include", "Only this file or folder (optional)", "text", q.get("include", "")),
                  Field("verify", "Verify every file after writing it", "checkbox", True),
                  Field("level", "Then validate the models at level", "select", "2", tuple(_LEVELS)),
                  Field("overwrite", "Files that exist there", "select", "error",
                        (("error", "refuse if one differs (default)"), ("never", "keep them"),
                         ("if-changed", "replace those that differ"), ("always", "replace")))]
        explain = f"Restore a snapshot of repository {name} to a directory on the host running the dashboard."
    elif kind == "drill":
        fields = [Field("level", "Validate at level", "select", "3", tuple(_LEVELS[1:]))]
        explain = (f"Restore the newest snapshot holding a model of {name} into a temporary directory, validate it,"
                   " record the RTO in the ledger, and remove the copy.")
    elif kind == "prune":
        fields = []
        explain = (f"Remove the data of {name} that no snapshot needs any more (two-phase: packs other clients may"
                   " still use are only condemned). Inside the repository server, only in a maintenance window.")
    else:
        fields = [Field("snapshot", "Snapshot", "text", q.get("snapshot", "latest")),
                  Field("sample", "Share of files to read (percent)", "text", q.get("sample", "10"))]
        explain = f"Re-read part of a snapshot of {name}: every blob authenticated and every file's hash checked."
    return site.render("confirm.html", session, title=f"{kind.capitalize()} — confirm", page="", kind=kind, repo=name,
                       fields=fields, explain=explain, button=f"Start {kind}")


def _level(form: FormData, default: str) -> int:
    text = str(form.get("level") or default)
    if text not in {v for v, _ in _LEVELS}:
        raise Denied(400, f"validation level {text!r} is not one of 0..3")
    return int(text)


def _inside(path: str, root: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _restore_work(site: Site, repo: api.Repository,
                  form: FormData) -> tuple[str, Callable[[api.ProgressCallback], Any]]:
    snapshot, target = str(form.get("snapshot") or "latest"), str(form.get("target") or "").strip()
    if not os.path.isabs(target):
        raise Denied(400, f"restore target {target!r} is not an absolute path",
                     "give the full path of a directory on the host running the dashboard, e.g. /tmp/restore")
    if site.restore_root is not None and not _inside(target, site.restore_root):
        raise Denied(403, f"restore target {target} is outside {site.restore_root}, where this server's dashboard"
                     " restores", f"pick a directory under {site.restore_root} (the server's [dashboard] restore_root)")
    include = str(form.get("include") or "").strip()
    verify, level = form.get("verify") == "1", _level(form, "0")
    overwrite = str(form.get("overwrite") or "error")

    def work(progress: api.ProgressCallback) -> tuple[str, dict[str, Any] | None]:
        res = repo.restore(snapshot, target, includes=[include] if include else [], overwrite=overwrite,
                           verify=verify, progress=progress)
        text = f"restored {res.files} files ({human_bytes(res.bytes)}) to {target}"
        text += f", {res.verified} verified" if verify else ""
        record = _last_record(repo, "restore")
        if level:
            report = repo.validate(snapshot, target, level=level)
            if not report.ok:
                problems = "; ".join(p for f in report.failed for p in f.problems)[:2000]
                raise ValidationFailedError(f"{text}, but validation at level {level} failed: {problems}",
                                            hint="the restored files are left there for you to inspect")
            text += f"; validated at level {level}: ok"
        return text, record
    return f"Restore {snapshot[:8]} to {target}", work


def _last_record(repo: api.Repository, op: str) -> dict[str, Any] | None:
    records = repo.ledger(op=op)
    return records[-1] if records else None


def _backup_paths(site: Site, form: FormData) -> list[str]:
    paths = [p.strip() for p in str(form.get("paths") or "").splitlines() if p.strip()]
    if not paths or not all(os.path.isabs(p) for p in paths):
        raise Denied(400, "back up needs absolute paths, one per line", "e.g. /data/runs/exp7")
    if site.server is not None and not all(any(_inside(p, r) for r in site.backup_roots) for p in paths):
        roots = ", ".join(str(r) for r in site.backup_roots) or "none configured"
        raise Denied(403, f"this server's dashboard backs up only paths under its backup_roots ({roots})",
                     "back up from the machine that holds the data (weightvault -r https://... backup), or ask"
                     " the admin to add a backup_roots entry under [dashboard]")
    return paths


def _work(site: Site, kind: str, repo: api.Repository,
          form: FormData) -> tuple[str, Callable[[api.ProgressCallback], Any]]:
    if kind == "restore":
        return _restore_work(site, repo, form)
    if kind == "prune":
        def prune(progress: api.ProgressCallback) -> tuple[str, dict[str, Any] | None]:
            res = repo.prune()
            return (f"pruned: {res.deleted_packs} packs ({human_bytes(res.deleted_bytes)}) deleted,"
                    f" {res.pending_packs} waiting for running clients", _last_record(repo, "prune"))
        return "Prune", prune
    if kind == "backup":
        paths = _backup_paths(site, form)
        tags = str(form.get("tags") or "").split()

        def backup(progress: api.ProgressCallback) -> tuple[str, dict[str, Any] | None]:
            res = repo.backup(paths, tags=tags, progress=progress)
            errors = f", {len(res.errors)} unreadable" if res.errors else ""
            return f"snapshot {res.snapshot.short_id} saved{errors}", _last_record(repo, "backup")
        return f"Back up {', '.join(paths)}", backup
    if kind == "drill":
        level = _level(form, "3")

        def drill(progress: api.ProgressCallback) -> tuple[str, dict[str, Any] | None]:
            res = repo.drill(level=level, progress=progress)
            if not res.ok:
                raise ValidationFailedError(f"drill of {res.snapshot[:8]} failed: {res.error}")
            return (f"drill of {res.snapshot[:8]} passed at level {level}: RTO {res.rto_s:.1f} s, {res.files} files",
                    _last_record(repo, "drill"))
        return "Restore drill", drill
    snapshot = str(form.get("snapshot") or "latest")
    try:
        sample = float(str(form.get("sample") or "10")) / 100
    except ValueError:
        raise Denied(400, "the sample must be a percentage, e.g. 10") from None
    if not 0 < sample <= 1:
        raise Denied(400, f"sample {sample * 100:g} % is not in (0, 100]")

    def verify(progress: api.ProgressCallback) -> tuple[str, dict[str, Any] | None]:
        res = repo.verify(snapshot, sample=None if sample >= 1 else sample, progress=progress)
        if not res.ok:
            raise ValidationFailedError(f"verify of {res.snapshot[:8]} found {len(res.damaged)} damaged file(s): "
                                        + "; ".join(f"{p}: {w}" for p, w in res.damaged[:20]))
        return f"verified {res.files} files ({human_bytes(res.bytes)}) of {res.snapshot[:8]}: ok", _last_record(
            repo, "verify")
    return f"Verify {snapshot[:8]}", verify


async def start(site: Site, session: Session, request: Request) -> Response:
    kind = _kind(request)
    form = await request.form(max_files=0, max_fields=32)
    name = str(form.get("repo") or "")
    site.require(session, name, NEEDS[kind], kind)
    if not site.sessions.csrf_ok(session, str(form.get("csrf") or "") or None):
        raise Denied(403, "this form's CSRF token is missing or not this session's",
                     "reload the page you came from and submit it again")
    repo = site.repo(session, name)
    try:
        title, work = _work(site, kind, repo, form)
    except UsageError as exc:
        raise site.failure(exc) from None
    job = site.jobs.start(kind, title, session.user, name, work)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303, headers=SECURITY_HEADERS)
