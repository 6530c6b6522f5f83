"""Who is looking at the dashboard: a one-time start token, session cookies, CSRF tokens, and the
security headers every answer carries.

``weightvault ui`` prints ``http://127.0.0.1:PORT/?token=T``. The first request carrying ``T``
(compared in constant time) is answered with a session cookie (``HttpOnly``, ``SameSite=Strict``,
``Path=/``) and a redirect to the same page without the token; ``T`` is then spent, so a URL left
in a shell history or a proxy log opens nothing. Every page needs the session; every POST also
needs the session's CSRF token in its form (``csrf``), and a POST whose ``Origin`` is another
site is refused whatever it carries. Sessions live in the process's memory and end with it (or
after ``SESSION_SECONDS`` idle).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COOKIE", "SECURITY_HEADERS", "SESSION_SECONDS", "Session", "Sessions"]

COOKIE = "wv_session"
SESSION_SECONDS = 12 * 3600.0
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                               " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # never sent off-site; "no-referrer" would make the Origin of forms "null"
    "cache-control": "no-store",
}


@dataclass
class Session:
    """``role`` applies to every repository unless ``roles`` names one (the repository server's
    users have a role per repository); ``repos``: the repositories this session unlocked (inside
    ``weightvault serve``, where each user opens their own with the repository's password)."""

    id: str
    user: str
    role: str | None  # read < append < maintain < admin (the repository server's roles)
    roles: dict[str, str] = field(default_factory=dict)
    repos: dict[str, Any] = field(default_factory=dict)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    seen: float = field(default_factory=time.monotonic)


class Sessions:
    """The start token and the sessions it (or a login) opened."""

    def __init__(self, start_token: str | None, *, user: str = "", role: str | None = None) -> None:
        self._token = start_token
        self._user, self._role = user, role
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def exchange(self, token: str) -> Session | None:
        """A new session for the start token, which is spent; None for any other value."""
        with self._lock:
            if self._token is None or not hmac.compare_digest(token.encode(), self._token.encode()):
                return None
            self._token = None
            return self._open(self._user, self._role)

    def open(self, user: str, roles: dict[str, str]) -> Session:
        """A session for a user who logged in, with a role per repository."""
        with self._lock:
            s = self._open(user, None)
            s.roles = dict(roles)
            return s

    def close(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def _open(self, user: str, role: str | None) -> Session:
        s = Session(secrets.token_urlsafe(32), user, role)
        self._sessions[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session of cookie value ``sid`` (refreshing its idle time), else None."""
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            for key in [k for k, v in self._sessions.items() if now - v.seen > SESSION_SECONDS]:
                del self._sessions[key]
            s = self._sessions.get(sid)
            if s is not None:
                s.seen = now
            return s

    @staticmethod
    def csrf_ok(session: Session, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), session.csrf.encode())
