"""The dashboard as a Starlette application (docs/DASHBOARD.md).

    GET  /healthz                          ok, without a session
    GET  /static/{file}                    the stylesheet and the one script (shipped in the package)
    GET  /?token=T                         exchanges the one-time start token for a session cookie
    GET  /  /runs  /storage  /activity     the pages (``pages``)
    GET  /snapshots/{repo}/{id}[/file|/download]?path=P
    GET  /diff/{repo}?a=ID&b=ID
    GET  /actions/{kind}  POST /actions/{kind}   confirm, then start (``actions``)
    GET  /jobs/{id}  /jobs/{id}/events     a started operation, and its progress as server-sent events

Everything but ``/healthz`` and ``/static`` needs a session (401 otherwise); a POST also needs
the session's CSRF token and, when the browser sends an ``Origin``, this site's. Every answer
carries the security headers of ``auth.SECURITY_HEADERS`` (a Content-Security-Policy without
inline script among them).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from weightvault.errors import WeightvaultError
from weightvault.web import actions, pages
from weightvault.web.auth import COOKIE, SECURITY_HEADERS, SESSION_SECONDS, Session
from weightvault.web.site import HERE, Denied, Site

__all__ = ["make_app"]

log = logging.getLogger(__name__)
Page = Callable[[Site, Session, Request], Any]


def _session(site: Site, request: Request) -> Session | Response:
    """The request's session, or the answer that replaces the page: a redirect that sets the cookie
    (the start token, spent), or 401."""
    token = request.query_params.get("token")
    if token:
        s = site.sessions.exchange(token)
        if s is None:
            return site.error(None, 401, "this start token is not valid (it is spent once a browser used it)",
                              "open the dashboard in the browser that used the link, or restart `weightvault ui`"
                              " for a new one")
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        query = "&".join(f"{k}={v}" for k, v in params)
        return _cookie(RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303,
                                        headers=SECURITY_HEADERS), request, s)
    s = site.sessions.get(request.cookies.get(COOKIE))
    if s is None and site.server is not None:
        if request.method == "GET":
            return RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
        return site.error(None, 401, "no session: log in first", "the dashboard's login page is /login")
    if s is None:
        return site.error(None, 401, "no session: open the dashboard with the link `weightvault ui` printed",
                          "the link carries a one-time token; the session it opens lasts until the dashboard stops")
    return s


def _cookie(resp: Response, request: Request, s: Session) -> Response:
    resp.set_cookie(COOKIE, s.id, max_age=int(SESSION_SECONDS), path="/", httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")
    return resp


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # not sent by this browser: the CSRF token alone decides
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _wrap(site: Site, page: Page) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        got = _session(site, request)
        if isinstance(got, Response):
            return got
        if request.method == "POST" and not _same_origin(request):
            return site.error(got, 403, "a form from another site was refused", "use the dashboard's own pages")
        try:
            if asyncio.iscoroutinefunction(page):
                result: Response = await page(site, got, request)
            else:
                result = await run_in_threadpool(page, site, got, request)
            return result
        except Denied as d:
            return site.error(got, d.status, d.message, d.hint)
        except WeightvaultError as exc:
            return site.error(got, 400, exc.message, exc.hint or "")
        except Exception as exc:  # a bug: a page that says so, the traceback in the log
            log.exception("dashboard page %s failed", request.url.path)
            return site.error(got, 500, f"internal error: {type(exc).__name__}", "the dashboard's log has details")
    return endpoint


def _job_page(site: Site, session: Session, request: Request) -> Response:
    job = site.jobs.get(request.path_params["job"])
    if job is None or (site.server is not None and job.user != session.user):
        raise Denied(404, "no such operation (operations are kept while the dashboard runs)")
    return site.render("job.html", session, title=job.title, page="", job=job.view())


async def _job_events(site: Site, session: Session, request: Request) -> Response:
    job = site.jobs.get(request.path_params["job"])
    if job is None or (site.server is not None and job.user != session.user):
        raise Denied(404, "no such operation")

    async def stream() -> AsyncIterator[bytes]:
        while True:
            done = job.done.is_set()
            yield f"data: {json.dumps(job.view())}\n\n".encode()
            if done or await request.is_disconnected():
                return
            await asyncio.sleep(0.5)
    headers = {**SECURITY_HEADERS, "x-accel-buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def _login(request: Request, site: Site) -> Response:
    """Inside ``weightvault serve``: the server's user name and password give a session with that
    user's roles (the server's failed-login limit applies, and the attempt is audited)."""
    if site.server is None:
        return site.error(None, 404, "this dashboard has no login: open it with the link `weightvault ui` printed")
    if request.method == "GET":
        return site.render("login.html", None, title="Log in", page="", message="")
    if not _same_origin(request):
        return site.error(None, 403, "a form from another site was refused", "use the dashboard's own pages")
    form = await request.form(max_files=0, max_fields=8)
    addr = request.client.host if request.client else "-"
    got = await run_in_threadpool(site.server.login, str(form.get("user") or ""), str(form.get("password") or ""),
                                  addr)
    if isinstance(got, str):
        return site.render("login.html", None, 401, title="Log in", page="", message=got)
    name, roles = got
    return _cookie(RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS), request,
                   site.sessions.open(name, roles))


async def _unlock(site: Site, session: Session, request: Request) -> Response:
    """Open one repository for this session with its password (kept in this process's memory,
    in the session only, until logout or expiry)."""
    if site.server is None:
        raise Denied(404, "nothing to unlock: this dashboard opened its repositories when it started")
    form = await request.form(max_files=0, max_fields=8)
    if not site.sessions.csrf_ok(session, str(form.get("csrf") or "") or None):
        raise Denied(403, "this form's CSRF token is missing or not this session's", "reload the page and retry")
    repo, addr = str(form.get("repo") or ""), request.client.host if request.client else "-"
    session.repos[repo] = await run_in_threadpool(site.server.open, session.user, repo,
                                                  str(form.get("password") or ""), addr)
    return RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)


async def _logout(site: Site, session: Session, request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=4)
    if not site.sessions.csrf_ok(session, str(form.get("csrf") or "") or None):
        raise Denied(403, "this form's CSRF token is missing or not this session's", "reload the page and retry")
    site.sessions.close(session.id)
    resp = RedirectResponse("/login" if site.server is not None else "/", status_code=303, headers=SECURITY_HEADERS)
    resp.delete_cookie(COOKIE, path="/")
    return resp


def make_app(site: Site) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def route(path: str, page: Page, methods: tuple[str, ...] = ("GET",)) -> Route:
        return Route(path, _wrap(site, page), methods=list(methods))

    async def login(request: Request) -> Response:
        return await _login(request, site)

    routes = [Route("/healthz", healthz), Route("/login", login, methods=["GET", "POST"]),
              route("/unlock", _unlock, ("POST",)), route("/logout", _logout, ("POST",)),
              Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
              route("/", pages.overview), route("/runs", pages.runs), route("/storage", pages.storage),
              route("/activity", pages.activity),
              route("/snapshots/{repo}/{sid}", pages.snapshot),
              route("/snapshots/{repo}/{sid}/file", pages.file_tensors),
              route("/snapshots/{repo}/{sid}/download", pages.download), route("/diff/{repo}", pages.diff),
              route("/actions/{kind}", actions.confirm), route("/actions/{kind}", actions.start, ("POST",)),
              route("/jobs/{job}", _job_page), route("/jobs/{job}/events", _job_events)]
    return Starlette(routes=routes)
