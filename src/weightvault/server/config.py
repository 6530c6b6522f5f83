"""``server.toml``: what ``weightvault serve`` serves, where, and under which limits.

::

    [server]
    listen = "0.0.0.0:8443"
    tls_cert = "cert.pem"            # PEM; relative paths are relative to this file
    tls_key = "key.pem"
    state_dir = "state"              # users.json, audit.jsonl, lock owners, break-glass.json
    root = "repos"                   # repository NAME lives in root/NAME (made by an admin's init)
    max_object_size = "2GiB"         # larger uploads are refused (413)
    request_timeout = "300s"         # a request body must arrive within this
    maintenance_windows = ["Mon-Fri 09:00-18:00 Europe/Berlin"]
    login_failures = 10              # failed logins per user and per address per minute, then 429
    snapshot_rate = "120/h"          # new snapshots per append user and repository per hour ("off": no limit)
    private_repos = "append"         # optional: each user's role on the repository named like them

    [dashboard]                      # optional: the web dashboard for the server's users (docs/DASHBOARD.md)
    listen = "0.0.0.0:9443"          # its own port, TLS with the server's certificate
    restore_root = "/srv/restores"   # restores from the page go under this directory only
    backup_roots = ["/data/runs"]    # the only paths a backup from the page may read (default: none)

    [repositories.prod]              # optional: a repository somewhere else, by name
    location = "s3://bucket/prefix"  # any weightvault location (a directory, s3://)
    quota = "10TiB"                  # stored bytes allowed (507 beyond); also valid under [server]

With ``private_repos`` a user whose name is a valid repository name holds that role on the
repository of the same name (a grant in users.json naming the repository wins). ``snapshot_rate``
applies to users whose role on the repository is ``append`` (maintain and admin, e.g. ``copy``,
are not limited); it is counted in memory, so a restart starts the count again.

A repository name is 1-64 of ``a-z 0-9 . _ -`` starting with a letter or digit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightvault import api
from weightvault.errors import ConfigFileError, UsageError
from weightvault.server.rules import ROLES
from weightvault.server.windows import Window, parse_window

__all__ = ["REPO_NAME", "DashboardConfig", "RepoConfig", "ServerConfig", "load_config"]

REPO_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SERVER_KEYS = {"listen", "tls_cert", "tls_key", "state_dir", "root", "max_object_size", "request_timeout",
                "maintenance_windows", "login_failures", "quota", "snapshot_rate", "private_repos"}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(h|hour|min|minute)\s*$")
DEFAULT_SNAPSHOT_RATE = 120


@dataclass(frozen=True)
class RepoConfig:
    name: str
    location: str
    quota: int | None = None


@dataclass(frozen=True)
class DashboardConfig:
    host: str
    port: int
    restore_root: Path | None = None
    backup_roots: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    state_dir: Path
    root: Path | None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_object_size: int = 2 << 30
    request_timeout: float = 300.0
    windows: tuple[Window, ...] = ()
    login_failures: int = 10
    quota: int | None = None
    repositories: dict[str, RepoConfig] = field(default_factory=dict)
    snapshot_rate: int | None = DEFAULT_SNAPSHOT_RATE  # per hour; None: no limit
    private_role: str | None = None
    dashboard: DashboardConfig | None = None

    def repository(self, name: str) -> RepoConfig | None:
        """The repository ``name`` serves, or None (unknown, or an invalid name)."""
        if not REPO_NAME.match(name):
            return None
        if name in self.repositories:
            return self.repositories[name]
        if self.root is None:
            return None
        return RepoConfig(name, str(self.root / name), self.quota)


def _size(value: Any, key: str, path: Path) -> int:
    try:
        return api.parse_rate(str(value)) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigFileError(f"{path}: {key} = {value!r} is not a size",
                              hint="write e.g. \"2GiB\" or \"500M\"") from None


def _rate(value: Any, path: Path) -> int | None:
    if value in ("off", False):
        return None
    m = _RATE.match(str(value))
    if isinstance(value, bool) or not m:
        raise ConfigFileError(f"{path}: snapshot_rate = {value!r} is not a rate",
                              hint='write e.g. "120/h" or "5/min", or "off" for no limit')
    n = int(m.group(1))
    return n * 60 if m.group(2).startswith("min") else n


def _private(value: Any, path: Path) -> str | None:
    if value is False:
        return None
    if value not in ROLES:
        raise ConfigFileError(f"{path}: private_repos = {value!r} is not a role",
                              hint=f"one of {', '.join(ROLES)}, or false")
    return str(value)


def _listen(text: str, path: Path) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigFileError(f"{path}: listen = {text!r} is not HOST:PORT", hint="e.g. listen = \"0.0.0.0:8443\"")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the operator asked for every address


def _dashboard(d: Any, path: Path) -> DashboardConfig | None:
    if d is None:
        return None
    if not isinstance(d, dict) or "listen" not in d or set(d) - {"listen", "restore_root", "backup_roots"}:
        raise ConfigFileError(f"{path}: [dashboard] needs listen and knows only listen, restore_root, backup_roots",
                              hint='e.g. [dashboard] listen = "127.0.0.1:9443"')
    host, port = _listen(d["listen"], path)
    roots = d.get("backup_roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise ConfigFileError(f"{path}: [dashboard] backup_roots must be a list of paths")
    restore = (path.parent / str(d["restore_root"])).resolve() if "restore_root" in d else None
    return DashboardConfig(host, port, restore, tuple((path.parent / r).resolve() for r in roots))


def load_config(path: Path) -> ServerConfig:
    """Read and check ``path``; ConfigFileError (exit 7) naming what is wrong."""
    doc = api.read_toml_file(path, "server configuration",
                             "write one (docs/SERVER.md has an example) and pass it with --config")
    s = doc.get("server")
    if not isinstance(s, dict):
        raise ConfigFileError(f"{path} has no [server] table", hint="docs/SERVER.md shows the keys")
    unknown = set(s) - _SERVER_KEYS
    if unknown:
        raise ConfigFileError(f"{path}: unknown key(s) in [server]: {', '.join(sorted(unknown))}",
                              hint=f"known keys: {', '.join(sorted(_SERVER_KEYS))}")
    base = path.parent

    def rel(key: str) -> Path | None:
        return (base / str(s[key])).resolve() if key in s else None

    host, port = _listen(s.get("listen", "127.0.0.1:8443"), path)
    cert, key = rel("tls_cert"), rel("tls_key")
    if (cert is None) != (key is None):
        raise ConfigFileError(f"{path}: tls_cert and tls_key go together", hint="give both, or neither for plain HTTP")
    try:
        timeout = api.parse_interval(str(s.get("request_timeout", "300s"))).total_seconds()
        windows = tuple(parse_window(w) for w in s.get("maintenance_windows", []))
    except UsageError as exc:
        raise ConfigFileError(f"{path}: {exc.message}", hint=exc.hint) from None
    quota = _size(s["quota"], "quota", path) if "quota" in s else None
    repos: dict[str, RepoConfig] = {}
    for name, r in (doc.get("repositories") or {}).items():
        if not REPO_NAME.match(name) or not isinstance(r, dict) or "location" not in r:
            raise ConfigFileError(f"{path}: [repositories.{name}] needs a valid name and a location",
                                  hint="names are a-z, 0-9, '.', '_', '-'; e.g. location = \"/srv/wv/prod\"")
        loc = str(r["location"])
        if "://" not in loc:
            loc = str((base / loc).resolve())
        repos[name] = RepoConfig(name, loc, _size(r["quota"], "quota", path) if "quota" in r else quota)
    root = rel("root")
    if root is None and not repos:
        raise ConfigFileError(f"{path} serves no repository", hint="set root = \"DIR\" or add [repositories.NAME]")
    state = rel("state_dir") or (base / "state").resolve()
    return ServerConfig(host, port, state, root, cert, key, _size(s.get("max_object_size", 2 << 30),
                        "max_object_size", path), timeout, windows, int(s.get("login_failures", 10)), quota, repos,
                        _rate(s.get("snapshot_rate", f"{DEFAULT_SNAPSHOT_RATE}/h"), path),
                        _private(s.get("private_repos", False), path), _dashboard(doc.get("dashboard"), path))
