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
    server: Any = None  # inside ``weightvault serve``: its login / roles / open hooks (server.dashboard)
    restore_root: Path | None = None  # inside serve: restores go under this directory only
    backup_roots: tuple[Path, ...] = ()  # inside serve: the only paths a backup from the page may read

    def __post_init__(self) -> None:
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        self.templates.globals.update(age=age_text, size=lambda n: human_bytes(n or 0))

    def visible(self, session: Session) -> dict[str, api.Repository]:
        """The open repositories this session sees: its own unlocked ones inside the server."""
        return session.repos if self.server is not None else self.repos

    def repo(self, session: Session, name: str) -> api.Repository:
        r = self.visible(session).get(name)
        if r is None:
            hint = ("unlock it with its password on the overview" if self.server is not None and name in session.roles
                    else "the overview lists the repositories shown")
            raise Denied(404, f"no open repository named {name!r} here", hint)
        return r

    def role(self, session: Session, repo: str) -> str | None:
        return session.roles.get(repo) if session.role is None else session.role

    def render(self, template: str, session: Session | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        def can(role: str, repo: str = "") -> bool:
            have = self.role(session, repo) if session is not None else None
            return have is not None and ROLES.index(have) >= ROLES.index(role)

        body = self.templates.get_template(template).render(session=session, can=can, in_server=self.server is not None,
                                                            **ctx)
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def error(self, session: Session | None, status: int, message: str, hint: str = "") -> HTMLResponse:
        return self.render("error.html", session, status, title="Refused" if status in (401, 403) else "Error",
                           page="", message=message, hint=hint)

    def require(self, session: Session, repo: str, role: str, what: str) -> None:
        """Denied (403) unless the session's role on ``repo`` is at least ``role``."""
        have = self.role(session, repo)
        if have is None or ROLES.index(have) < ROLES.index(role):
            raise Denied(403, f"{what} on {repo or 'a repository'} needs role {role}; {session.user} has"
                         f" {have or 'none'}", "ask an admin for the role, or use the CLI where you have it")

    @staticmethod
    def failure(exc: WeightvaultError) -> Denied:
        status = 404 if type(exc).__name__ in ("SnapshotNotFoundError", "RepositoryNotFoundError") else 400
        return Denied(status, exc.message, exc.hint or "")
