"""Authentication for the repository server: who is asking, and brute-force limits.

A request authenticates with ``Authorization: Bearer wvt_...`` (an API token) or ``Basic`` (user
and password). Failed attempts are counted per user name and per source address over the last
minute; at ``limit`` failures either one is refused with 429 before any password is checked, until
the minute since its oldest counted failure has passed.
"""

from __future__ import annotations

import base64
import binascii
import collections
import threading
import time
from dataclasses import dataclass

from weightvault.server.users import User, UserStore

__all__ = ["AuthResult", "Guard"]

WINDOW = 60.0


@dataclass(frozen=True)
class AuthResult:
    user: User | None
    name: str | None  # the claimed user name (for the audit log), even when refused
    status: int = 200  # 401 or 429 when user is None
    reason: str = ""
    retry_after: int = 0


class Guard:
    def __init__(self, users: UserStore, limit: int) -> None:
        self.users = users
        self.limit = limit
        self._fails: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> collections.deque[float]:
        q = self._fails.setdefault(key, collections.deque())
        while q and q[0] <= now - WINDOW:
            q.popleft()
        return q

    def _blocked(self, keys: list[str], now: float) -> int:
        with self._lock:
            waits = [int(q[0] + WINDOW - now) + 1 for k in keys if len(q := self._recent(k, now)) >= self.limit]
        return max(waits, default=0)

    def _failed(self, keys: list[str], now: float) -> None:
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)
            if len(self._fails) > 100_000:  # bound memory under a flood of names: forget idle keys
                for k in [k for k, q in self._fails.items() if not q]:
                    del self._fails[k]

    def authenticate(self, header: str | None, addr: str) -> AuthResult:
        """The user ``header`` proves, or why not (401: missing or wrong; 429: too many failures)."""
        if not header:
            return AuthResult(None, None, 401, "no credentials (send a bearer token or basic auth)")
        scheme, _, value = header.partition(" ")
        name: str | None = None
        password = token = None
        if scheme.lower() == "bearer":
            token = value.strip()
        elif scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return AuthResult(None, None, 401, "malformed basic credentials")
        else:
            return AuthResult(None, None, 401, "unsupported authorization scheme (send Bearer or Basic)")
        now = time.monotonic()
        keys = [f"addr:{addr}"] + ([f"user:{name}"] if name else [])
        wait = self._blocked(keys, now)
        if wait:
            return AuthResult(None, name, 429, f"too many failed logins from {addr}"
                              + (f" or for user {name}" if name else "") + f"; retry in {wait} s", wait)
        user = self.users.check_token(token) if token is not None else self.users.check_password(name or "",
                                                                                                   password or "")
        if user is None:
            self._failed(keys, now)
            return AuthResult(None, name, 401, "invalid token" if token is not None else "wrong user name or password")
        return AuthResult(user, user.name)
