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
        resp = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303,
                                headers=SECURITY_HEADERS)
        resp.set_cookie(COOKIE, s.id, max_age=int(SESSION_SECONDS), path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp
    s = site.sessions.get(request.cookies.get(COOKIE))
    if s is None:
        return site.error(None, 401, "no session: open the dashboard with the link `weightvault ui` printed",
                          "the link carries a one-time token; the session it opens lasts until the dashboard stops")
    return s


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
    if job is None:
        raise Denied(404, "no such operation (operations are kept while the dashboard runs)")
    return site.render("job.html", session, title=job.title, page="", job=job.view())


async def _job_events(site: Site, session: Session, request: Request) -> Response:
    job = site.jobs.get(request.path_params["job"])
    if job is None:
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


def make_app(site: Site) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def route(path: str, page: Page, methods: tuple[str, ...] = ("GET",)) -> Route:
        return Route(path, _wrap(site, page), methods=list(methods))

    routes = [Route("/healthz", healthz),
              Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
              route("/", pages.overview), route("/runs", pages.runs), route("/storage", pages.storage),
              route("/activity", pages.activity),
              route("/snapshots/{repo}/{sid}", pages.snapshot),
              route("/snapshots/{repo}/{sid}/file", pages.file_tensors),
              route("/snapshots/{repo}/{sid}/download", pages.download), route("/diff/{repo}", pages.diff),
              route("/actions/{kind}", actions.confirm), route("/actions/{kind}", actions.start, ("POST",)),
              route("/jobs/{job}", _job_page), route("/jobs/{job}/events", _job_events)]
    return Starlette(routes=routes)
