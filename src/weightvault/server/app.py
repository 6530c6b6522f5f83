"""The repository server's HTTP protocol (docs/SERVER.md), as a Starlette application.

Every request but ``GET /healthz`` is authenticated (``guard``), decided (``rules.decide``, then
the maintenance window for a risky one), carried out on the repository's backend in a worker
thread, counted (``/metrics``) and audited (``audit``) before its answer is sent. The server never
holds a repository password and never sees plaintext: it stores the bytes clients send.

    GET    /healthz                       no authentication
    GET    /metrics                       Prometheus text (any authenticated user)
    POST   /{repo}/?create=true           create the repository's directories (admin)
    GET    /{repo}/_space                 {"free": N|null, "total": N|null}
    POST   /{repo}/_clean?min_age=S       remove temporary objects older than S seconds (maintain)
    GET    /{repo}/{type}/                [[name, size], ...]
    HEAD   /{repo}/{type}/{name}          Content-Length: the size
    GET    /{repo}/{type}/{name}          the object; ``Range: bytes=A-B`` for a part
    PUT    /{repo}/{type}/{name}          store; ``If-None-Match: *`` makes it create-only (412 if taken)
    DELETE /{repo}/{type}/{name}
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from weightvault.backends.base import Backend
from weightvault.errors import (
    NoSpaceError,
    ObjectExistsError,
    ObjectNotFoundError,
    RepositoryExistsError,
    TransientBackendError,
    WeightvaultError,
)
from weightvault.server.objects import authorise, delete, may_upload, object_type, put
from weightvault.server.rules import Op
from weightvault.server.state import Call, Refused, ServerState
from weightvault.server.users import User

__all__ = ["make_app"]

log = logging.getLogger(__name__)
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


async def _body(request: Request, st: ServerState, keep: bool = True) -> bytes:
    """The request body, at most ``max_object_size`` bytes (413 beyond: the rest is read and
    dropped, so the client hears the answer instead of a reset connection) within
    ``request_timeout`` (408). ``keep`` False reads and drops it all (a refused upload)."""
    limit = st.config.max_object_size if keep else -1
    parts: list[bytes] = []
    got = 0

    async def read() -> None:
        nonlocal got
        async for chunk in request.stream():
            got += len(chunk)
            if got <= limit:
                parts.append(chunk)
            elif parts:
                parts.clear()  # over the limit: keep reading, keep nothing

    try:
        await asyncio.wait_for(read(), st.config.request_timeout)
    except TimeoutError:
        raise Refused(408, f"the request body did not arrive within {st.config.request_timeout:g} s") from None
    if got > limit >= 0:
        raise Refused(413, f"object of {got} bytes is over the server's max_object_size ({limit} bytes)")
    return b"".join(parts)


def _ranged(request: Request, size: int) -> tuple[int, int | None]:
    """(offset, length) of the ``Range`` header against an object of ``size`` bytes: ``bytes=A-B``
    (B clamped to the end, as HTTP does) or ``bytes=A-``; 416 if malformed or starting past the end."""
    header = request.headers.get("range")
    if not header:
        return 0, None
    m = _RANGE.match(header.strip())
    if not m or len(header) > 60 or (m.group(2) and int(m.group(2)) < int(m.group(1))) or int(m.group(1)) >= size:
        raise Refused(416, f"unsatisfiable Range {header[:60]!r} for an object of {size} bytes (send bytes=START-END)")
    start = int(m.group(1))
    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    return start, end - start + 1


async def _object_call(request: Request, st: ServerState, call: Call, user: User, b: Backend, tname: str,
                       name: str) -> Response:
    method = request.method
    if not name:
        if method != "GET":
            raise Refused(405, f"{method} of a type listing is not part of the protocol")
        ftype = object_type(call, tname, "config" if tname == "config" else "0" * 16)
        call.op, call.name = "list", None
        authorise(st, call, user, Op.LIST, ftype)
        if not st.created(call.repo or ""):
            return JSONResponse([])  # nothing is stored there yet
        items = await run_in_threadpool(lambda: sorted(b.list(ftype)))
        return JSONResponse(items)
    ftype = object_type(call, tname, name)
    if method in ("GET", "HEAD"):
        call.op = "stat" if method == "HEAD" else "read"
        authorise(st, call, user, Op.STAT if method == "HEAD" else Op.READ, ftype)
        if not st.created(call.repo or ""):
            raise ObjectNotFoundError(f"{tname}/{name} not found (repository {call.repo!r} does not exist yet)")
        if method == "HEAD":
            size = await run_in_threadpool(b.stat, ftype, name)
            return Response(headers={"content-length": str(size)})
        if request.headers.get("range"):
            offset, length = _ranged(request, await run_in_threadpool(b.stat, ftype, name))
        else:
            offset, length = 0, None
        data = await run_in_threadpool(b.load, ftype, name, offset, length)
        call.nbytes = len(data)
        return Response(data, status_code=206 if request.headers.get("range") else 200,
                        media_type="application/octet-stream")
    if method == "PUT":
        call.op = "put"
        refusal = may_upload(st, call, user, ftype)
        data = await _body(request, st, keep=refusal is None)
        if refusal is not None:
            raise refusal
        st.require_created(call.repo or "")
        call.nbytes = len(data)
        create_only = request.headers.get("if-none-match", "").strip() == "*"
        status = await run_in_threadpool(put, st, call, user, b, ftype, data, create_only)
        return Response(status_code=status)
    if method == "DELETE":
        call.op = "delete"
        st.require_created(call.repo or "")
        await run_in_threadpool(delete, st, call, user, b, ftype)
        return Response(status_code=204)
    raise Refused(405, f"method {method} is not part of the protocol")


async def _repo_call(request: Request, st: ServerState, call: Call, user: User, rest: str) -> Response:
    assert call.repo is not None
    if rest == "" and request.method == "POST" and request.query_params.get("create") == "true":
        call.op = "init"
        b = st.backend(call.repo)
        authorise(st, call, user, Op.INIT, None)
        await run_in_threadpool(b.create)
        return Response(status_code=201)
    b = st.backend(call.repo)
    if rest == "_space" and request.method == "GET":
        call.op = "space"
        authorise(st, call, user, Op.SPACE, None)
        st.require_created(call.repo)
        free, total = await run_in_threadpool(lambda: (b.free_space(), b.total_space()))
        return JSONResponse({"free": free, "total": total})
    if rest == "_clean" and request.method == "POST":
        call.op = "clean"
        authorise(st, call, user, Op.CLEAN, None)
        st.require_created(call.repo)
        try:
            min_age = float(request.query_params.get("min_age", "3600"))
        except ValueError:
            raise Refused(400, "min_age must be a number of seconds") from None
        n = await run_in_threadpool(b.remove_temp, max(min_age, 0.0))
        return JSONResponse({"removed": n})
    tname, _, name = rest.partition("/")
    if "/" in name or name.startswith("."):
        raise Refused(400, f"invalid object path {rest[:80]!r}")
    return await _object_call(request, st, call, user, b, tname, name)


def _audit_down(st: ServerState) -> Response:
    reason = (f"the server's audit log cannot be written ({st.audit_down}); no request is served until it can"
              " (the operator frees space or fixes the state directory); retry later")
    return JSONResponse({"error": reason, "rule": "audit"}, status_code=503,
                        headers={"x-weightvault-error": _header(reason), "x-weightvault-rule": "audit",
                                 "retry-after": "30"})


def _error_status(exc: WeightvaultError) -> tuple[int, str]:
    if isinstance(exc, ObjectNotFoundError):
        return 404, "ok"  # served: the answer is "not there"
    if isinstance(exc, ObjectExistsError):
        return 412, "ok"
    if isinstance(exc, RepositoryExistsError):
        return 409, "refused"
    if isinstance(exc, NoSpaceError):
        return 507, "error"
    if isinstance(exc, TransientBackendError):
        return 503, "error"
    return 500, "error"


def _header(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode()[:500]


def make_app(st: ServerState) -> Starlette:
    async def healthz(request: Request) -> Response:
        if st.audit_down is not None and not await run_in_threadpool(st.resume_audit):
            return PlainTextResponse(f"audit log not writable: {st.audit_down}\n", status_code=503)
        return PlainTextResponse("ok\n")

    async def handle(request: Request) -> Response:
        if st.audit_down is not None and not await run_in_threadpool(st.resume_audit):
            return _audit_down(st)  # nothing is served that could not be audited
        t0 = time.perf_counter()
        call = Call(addr=request.client.host if request.client else "-")
        rule = ""
        try:
            resp = await _authenticated(request, st, call)
            status, result, reason = resp.status_code, "ok", ""
        except Refused as r:
            status, result, reason, rule = r.status, r.result, r.reason, r.rule
            resp = JSONResponse({"error": r.reason, "rule": r.rule}, status_code=r.status, headers=r.headers)
        except (WeightvaultError, OSError) as exc:
            status, result = _error_status(exc) if isinstance(exc, WeightvaultError) else (500, "error")
            reason = getattr(exc, "message", None) or str(exc)
            resp = JSONResponse({"error": reason, "rule": ""}, status_code=status)
        except Exception as exc:  # a bug: answered and audited, never a silent drop
            log.exception("internal error handling %s %s", request.method, request.url.path)
            status, result, reason = 500, "error", f"internal error ({type(exc).__name__})"
            resp = JSONResponse({"error": reason, "rule": ""}, status_code=500)
        if status >= 400:  # also in headers: the answer to a HEAD has no body
            resp.headers["x-weightvault-error"] = _header(reason)
            resp.headers["x-weightvault-rule"] = _header(rule)
        if request.method == "HEAD":
            resp.body = b""
        if not await run_in_threadpool(st.record, call, status, result, reason, time.perf_counter() - t0):
            return _audit_down(st)  # answered 503, and nothing more is served until the log is writable
        return resp

    async def unrouted(request: Request, exc: Exception) -> Response:
        return await handle(request)  # a method or path no route takes: authenticated and audited too

    routes = [Route("/healthz", healthz, methods=["GET"]),
              Route("/{path:path}", handle, methods=["GET", "HEAD", "PUT", "POST", "DELETE"])]
    return Starlette(routes=routes, exception_handlers={404: unrouted, 405: unrouted})


async def _authenticated(request: Request, st: ServerState, call: Call) -> Response:
    auth = await run_in_threadpool(st.guard.authenticate, request.headers.get("authorization"), call.addr)
    # a refused login is recorded under its claimed name only if that user exists: a token or a
    # password typed into the name field must not reach the audit log or the metrics
    call.user = auth.name if auth.user is not None or (auth.name and st.users.get(auth.name)) else None
    if auth.user is None:
        st.metrics.auth_failure(auth.status)
        headers = {"retry-after": str(auth.retry_after)} if auth.retry_after else {"www-authenticate":
                                                                                  'Basic realm="weightvault"'}
        call.op = "login"
        raise Refused(auth.status, auth.reason, rule="authentication", headers=headers)
    path = str(request.scope["path"]).lstrip("/")  # as received (decoded), not re-parsed
    if path == "metrics":
        call.op = "metrics"
        return Response(st.metrics.render(), media_type=st.metrics.content_type)
    repo, _, rest = path.partition("/")
    call.repo = repo[:64]
    return await _repo_call(request, st, call, auth.user, rest)

