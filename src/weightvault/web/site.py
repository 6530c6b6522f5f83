"""What the dashboard serves and shares between requests: the open repositories, the policy, the
sessions and the jobs; plus rendering (Jinja2, autoescaped) and the role check for actions."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.responses import HTMLResponse

from weightvault import api
from weightvault.errors import WeightvaultError
from weightvault.web.auth import SECURITY_HEADERS, Session, Sessions
from weightvault.web.charts import human_bytes
from weightvault.web.jobs import Jobs

__all__ = ["ROLES", "Denied", "Site", "age_text"]

ROLES = ("read", "append", "maintain", "admin")
HERE = Path(__file__).resolve().parent


class Denied(Exception):
    """An answer other than the page: ``status`` with ``message`` (and a hint) in the error page."""

    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


def age_text(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "never"
    if seconds < 0:  # a snapshot newer than the clock (``--now`` in the past, or a skewed host)
        return "in the future"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d {(s % 86400) // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {(s % 3600) // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s"


@dataclass
class Site:
    """``repos``: the repositories shown, by name, opened once and shared by every request (a
    ``Repository`` serves threads; each call takes the lock it needs). ``policy``: when given,
    the overview shows its recovery points (``api.policy_status``) through ``fleet``."""

    repos: dict[str, api.Repository]
    sessions: Sessions
    policy: api.PolicySpec | None = None
    fleet: api.Fleet | None = None
    jobs: Jobs = field(default_factory=Jobs)
    now: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        self.templates.globals.update(age=age_text, size=lambda n: human_bytes(n or 0))

    def repo(self, name: str) -> api.Repository:
        r = self.repos.get(name)
        if r is None:
            raise Denied(404, f"no repository named {name!r} here", "the overview lists the repositories shown")
        return r

    def render(self, template: str, session: Session | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        def can(role: str) -> bool:
            return session is not None and ROLES.index(session.role) >= ROLES.index(role)

        body = self.templates.get_template(template).render(session=session, can=can, **ctx)
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def error(self, session: Session | None, status: int, message: str, hint: str = "") -> HTMLResponse:
        return self.render("error.html", session, status, title="Refused" if status in (401, 403) else "Error",
                           page="", message=message, hint=hint)

    @staticmethod
    def require(session: Session, role: str, what: str) -> None:
        """Denied (403) unless the session's role is at least ``role``."""
        if ROLES.index(session.role) < ROLES.index(role):
            raise Denied(403, f"{what} needs role {role}; {session.user} has {session.role}",
                         "ask an admin for the role, or run the same command with the CLI where you have it")

    @staticmethod
    def failure(exc: WeightvaultError) -> Denied:
        status = 404 if type(exc).__name__ in ("SnapshotNotFoundError", "RepositoryNotFoundError") else 400
        return Denied(status, exc.message, exc.hint or "")
