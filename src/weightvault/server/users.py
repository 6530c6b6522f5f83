"""The server's users: argon2id-hashed passwords, random API tokens, a role per repository.

``<state dir>/users.json`` (mode 0600, replaced atomically)::

    {"version": 1, "users": {"trainer": {"password": "$argon2id$...", "roles": {"runs": "append"},
                                         "tokens": [{"id": "3f9a1c2b", "sha256": "...", "created": "..."}]}}}

A role key is a repository name or ``*`` (every repository; a named entry wins). A token is
``wvt_<id>_<secret>`` (the secret 32 random bytes, URL-safe base64) and is shown once, when made;
only its SHA-256 is stored. Passwords are checked with argon2id (deliberately slow), so a
successful check is remembered in memory for ``CACHE_SECONDS`` under a keyed hash of the password;
a changed file (``serve user ...`` while the server runs) is re-read at the next request and
forgets every remembered check.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from weightvault.errors import ConfigFileError, UsageError
from weightvault.paths import atomic_write
from weightvault.server.rules import ROLES

__all__ = ["CACHE_SECONDS", "User", "UserStore", "check_user_name", "parse_role_grants"]

CACHE_SECONDS = 300.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_REPO = re.compile(r"^(\*|[a-z0-9][a-z0-9._-]{0,63})$")
_TOKEN = re.compile(r"^wvt_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (64 MiB, t=3)


@dataclass
class User:
    name: str
    password: str | None = None
    roles: dict[str, str] = field(default_factory=dict)
    tokens: list[dict[str, str]] = field(default_factory=list)

    def role_for(self, repo: str) -> str | None:
        return self.roles.get(repo) or self.roles.get("*")

    def to_json(self) -> dict[str, Any]:
        return {"password": self.password, "roles": dict(sorted(self.roles.items())), "tokens": self.tokens}


def check_user_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"invalid user name {name!r}",
                         hint="use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
                         " (e.g. trainer@node-3)")
    return name


def parse_role_grants(grants: tuple[str, ...]) -> dict[str, str]:
    """``("runs=append", "*=read")`` as a dict; UsageError naming a bad one."""
    out: dict[str, str] = {}
    for g in grants:
        repo, sep, role = g.partition("=")
        if not sep or not _REPO.match(repo) or role not in ROLES:
            raise UsageError(f"invalid role grant {g!r}",
                             hint=f"write REPOSITORY=ROLE (REPOSITORY a repository name or *), ROLE one of"
                             f" {', '.join(ROLES)}; e.g. --role runs=append")
        out[repo] = role
    return out


class UserStore:
    """The users file. Methods that change it re-read it first and write it whole, atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}
        self._cache: dict[tuple[str, bytes], float] = {}
        self._cache_key = secrets.token_bytes(32)

    # -- reading ---------------------------------------------------------------------------------
    def _load(self) -> dict[str, User]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._users, self._cache = None, {}, {}
            return self._users
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                doc = json.loads(self.path.read_bytes())
                users = {n: User(n, u.get("password"), dict(u.get("roles", {})), list(u.get("tokens", [])))
                         for n, u in doc["users"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigFileError(f"the users file {self.path} is not valid ({exc})",
                                      hint="restore it from a backup or recreate users with 'weightvault serve"
                                      " user add'") from None
            self._stamp, self._users, self._cache = stamp, users, {}
        return self._users

    def users(self) -> list[User]:
        with self._lock:
            return [self._load()[n] for n in sorted(self._load())]

    def get(self, name: str) -> User | None:
        with self._lock:
            return self._load().get(name)

    # -- authentication --------------------------------------------------------------------------
    def check_password(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else None (unknown users cost the same argon2 work)."""
        with self._lock:
            user = self._load().get(name)
            key = (name, hmac.digest(self._cache_key, password.encode(), "sha256"))
            if user is not None and self._cache.get(key, 0.0) > time.monotonic():
                return user
        stored = user.password if user is not None and user.password else _dummy()
        try:
            ok: bool = _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or user is None or not user.password:
            return None
        with self._lock:
            self._cache[key] = time.monotonic() + CACHE_SECONDS
        return user

    def check_token(self, token: str) -> User | None:
        m = _TOKEN.match(token)
        if not m:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            for user in self._load().values():
                for t in user.tokens:
                    if t.get("id") == m.group(1) and hmac.compare_digest(t.get("sha256", ""), digest):
                        return user
        return None

    # -- changes ---------------------------------------------------------------------------------
    def _save(self, users: dict[str, User]) -> None:
        doc = {"version": 1, "users": {n: users[n].to_json() for n in sorted(users)}}
        os.makedirs(self.path.parent, exist_ok=True)
        atomic_write(self.path, json.dumps(doc, indent=1).encode())
        self._stamp = None

    def add(self, name: str, roles: dict[str, str], password: str | None) -> User:
        with self._lock:
            users = dict(self._load())
            if check_user_name(name) in users:
                raise UsageError(f"user {name!r} already exists", hint="change it with 'serve user passwd' or"
                                 " 'serve user role', or remove it first")
            users[name] = User(name, _hasher.hash(password) if password else None, roles)
            self._save(users)
            return users[name]

    def remove(self, name: str) -> None:
        with self._lock:
            users = dict(self._load())
            if users.pop(name, None) is None:
                raise UsageError(f"no user {name!r}", hint="'weightvault serve user list' shows the users")
            self._save(users)

    def update(self, name: str, *, password: str | None = None, roles: dict[str, str] | None = None,
               new_token: bool = False, revoke_tokens: bool = False) -> str | None:
        """Change a user; returns the new token (shown once) when ``new_token``."""
        with self._lock:
            users = dict(self._load())
            user = users.get(name)
            if user is None:
                raise UsageError(f"no user {name!r}", hint="'weightvault serve user add' creates one")
            if password is not None:
                user.password = _hasher.hash(password)
            if roles is not None:
                user.roles = roles
            if revoke_tokens:
                user.tokens = []
            token = None
            if new_token:
                tid = secrets.token_hex(4)
                token = f"wvt_{tid}_{secrets.token_urlsafe(32)}"
                user.tokens.append({"id": tid, "sha256": hashlib.sha256(token.encode()).hexdigest(),
                                    "created": datetime.now(UTC).isoformat(timespec="seconds")})
            self._save(users)
            return token


@functools.cache
def _dummy() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))
