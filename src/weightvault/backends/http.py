"""The client of the repository server (``weightvault serve``): ``https://HOST:PORT/NAME``.

Speaks the server's object protocol (docs/SERVER.md) over one urllib3 connection pool (HTTP/1.1
keep-alive, connections reused across threads). Credentials, first found wins:
``$WEIGHTVAULT_SERVER_TOKEN`` (an API token, sent as a bearer token), ``$WEIGHTVAULT_SERVER_USER``
with ``$WEIGHTVAULT_SERVER_PASSWORD`` (basic auth), or the credentials file
(``$WEIGHTVAULT_SERVER_CREDENTIALS``, else ``$XDG_CONFIG_HOME/weightvault/server-credentials.toml``)
with a table per server URL (``["https://host:8443"]`` with ``token = "..."``). A private CA's
certificate is given with ``$WEIGHTVAULT_SERVER_CA`` (a PEM file); otherwise the system's CAs.

Answers map to the backend errors: 401 and 403 raise ``AccessDeniedError`` naming the server's
rule, 404 ``ObjectNotFoundError``, 409 ``RepositoryExistsError``, 412 ``ObjectExistsError``, 413
``BackendError`` (over the server's size limit), 507 ``NoSpaceError`` (quota), 408/429/5xx and
dropped connections ``TransientBackendError`` (the retry wrapper backs off). A server that never
answered (refused connection, unknown host) fails at once.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3

from weightvault.backends.base import FileType, NoColdStorage
from weightvault.errors import (
    AccessDeniedError,
    BackendError,
    NoSpaceError,
    ObjectExistsError,
    ObjectNotFoundError,
    RepositoryExistsError,
    TransientBackendError,
    UsageError,
)
from weightvault.paths import config_home

__all__ = ["HttpBackend", "is_server_url"]


def is_server_url(location: str) -> bool:
    return location.startswith(("https://", "http://"))


def _credentials(base: str) -> dict[str, str]:
    if os.environ.get("WEIGHTVAULT_SERVER_TOKEN"):
        return {"authorization": f"Bearer {os.environ['WEIGHTVAULT_SERVER_TOKEN'].strip()}"}
    user, password = os.environ.get("WEIGHTVAULT_SERVER_USER"), os.environ.get("WEIGHTVAULT_SERVER_PASSWORD")
    if user and password is not None:
        return urllib3.make_headers(basic_auth=f"{user}:{password}")
    path = Path(os.environ.get("WEIGHTVAULT_SERVER_CREDENTIALS") or config_home() / "server-credentials.toml")
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the server credentials file {path}: {exc}") from None
    entry = doc.get(base) or doc.get(base.rstrip("/"))
    if isinstance(entry, dict) and entry.get("token"):
        return {"authorization": f"Bearer {str(entry['token']).strip()}"}
    if isinstance(entry, dict) and entry.get("user") and "password" in entry:
        return urllib3.make_headers(basic_auth=f"{entry['user']}:{entry['password']}")
    return {}


class HttpBackend(NoColdStorage):
    """See the module docstring. Thread-safe."""

    def __init__(self, url: str, *, max_connections: int = 8, token: str | None = None,
                 ca_file: str | None = None) -> None:
        """``token`` and ``ca_file`` override the environment (see the module docstring)."""
        parts = urlsplit(url)
        repo = parts.path.strip("/")
        if parts.scheme not in ("https", "http") or not parts.hostname or not repo or "/" in repo:
            raise UsageError(f"invalid server repository URL {url!r}", hint="write https://HOST:PORT/NAME")
        self.base = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self.repo = repo
        self._url = f"{self.base}/{quote(repo)}"
        self._headers = {"authorization": f"Bearer {token}"} if token else _credentials(self.base)
        ca = ca_file or os.environ.get("WEIGHTVAULT_SERVER_CA")
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=max_connections, block=True, retries=False,
                                         timeout=urllib3.Timeout(connect=10.0, read=300.0), ca_certs=ca or None)
        self.reached = False

    @property
    def location(self) -> str:
        return self._url

    @property
    def supports_retention(self) -> bool:
        return False

    # -- the wire --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, what: str, *, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        try:
            resp = self._pool.request(method, f"{self._url}/{path}", body=body,
                                      headers={**self._headers, **(headers or {})}, preload_content=True)
        except urllib3.exceptions.SSLError as exc:
            raise BackendError(f"TLS with {self.base} failed: {exc}", hint="if the server uses a private CA, set"
                               " $WEIGHTVAULT_SERVER_CA to its certificate (PEM)") from None
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.NameResolutionError) as exc:
            if not self.reached:
                raise BackendError(f"cannot reach the repository server {self.base}: {exc}",
                                   hint="check the URL and that 'weightvault serve' runs there") from None
            raise TransientBackendError(f"connection to {self.base} failed for {what}: {exc}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise TransientBackendError(f"request to {self.base} for {what} failed: {exc}") from None
        self.reached = True
        if resp.status >= 300:
            self._raise(resp, what)
        return resp

    def _raise(self, resp: urllib3.BaseHTTPResponse, what: str) -> None:
        reason, rule = resp.headers.get("x-weightvault-error", ""), resp.headers.get("x-weightvault-rule", "")
        if not reason and resp.data:
            try:
                doc: Any = json.loads(resp.data)
                reason, rule = str(doc.get("error", "")), str(doc.get("rule", ""))
            except (ValueError, AttributeError):
                reason = resp.data[:200].decode(errors="replace")
        s = resp.status
        msg = f"the server refused {what}: {reason}" if reason else f"the server answered {s} for {what}"
        if s == 401:
            raise AccessDeniedError(msg, hint="set $WEIGHTVAULT_SERVER_TOKEN to a token from 'weightvault serve user"
                                    " token', or the credentials file (docs/SERVER.md)")
        if s == 403:
            raise AccessDeniedError(msg + (f" [rule: {rule}]" if rule and rule not in reason else ""),
                                    hint="ask the server's admin for a role that allows it, or run it inside the"
                                    " maintenance window")
        if s == 404:
            raise ObjectNotFoundError(f"{what} not found" + (f" ({reason})" if "repository" in reason else ""))
        if s == 409:
            raise RepositoryExistsError(f"a repository already exists at {self._url}")
        if s == 412:
            raise ObjectExistsError(f"{what} already exists")
        if s == 413:
            raise BackendError(msg, hint="raise the server's max_object_size, or use smaller packs")
        if s == 507:
            raise NoSpaceError(msg, hint="prune old snapshots or ask the server's admin to raise the quota")
        if s in (408, 429) or (s >= 500 and s != 500):
            raise TransientBackendError(msg)
        raise BackendError(msg)

    @staticmethod
    def _path(ftype: FileType, name: str) -> str:
        return f"{ftype.value}/{quote(name, safe='')}"

    # -- the Backend protocol ----------------------------------------------------------------------
    def create(self) -> None:
        self._request("POST", "?create=true", "creating the repository")

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        self._request("PUT", self._path(ftype, name), f"{ftype.value}/{name}", body=bytes(data),
                      headers={"content-type": "application/octet-stream",
                               **({"if-none-match": "*"} if create_only else {})})

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            self.stat(ftype, name)
            return b""
        headers = {}
        if offset or length is not None:
            headers["range"] = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        data = self._request("GET", self._path(ftype, name), f"{ftype.value}/{name}", headers=headers).data
        if length is not None and len(data) != length:
            raise BackendError(f"short read of {ftype.value}/{name}: {len(data)} of {length} bytes at {offset}")
        return bytes(data)

    def stat(self, ftype: FileType, name: str) -> int:
        resp = self._request("HEAD", self._path(ftype, name), f"{ftype.value}/{name}")
        return int(resp.headers.get("content-length", "0"))

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        items = json.loads(self._request("GET", f"{ftype.value}/", f"the {ftype.value} listing").data)
        for name, size in items:
            yield str(name), int(size)

    def remove(self, ftype: FileType, name: str) -> None:
        self._request("DELETE", self._path(ftype, name), f"{ftype.value}/{name}")

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        raise BackendError(f"retention is not supported by the repository server at {self.base} (its roles keep"
                           " backups from deletion instead)")

    def remove_temp(self, min_age: float) -> int:
        doc = json.loads(self._request("POST", f"_clean?min_age={min_age:g}", "removing temporary objects").data)
        return int(doc["removed"])

    def free_space(self) -> int | None:
        doc = json.loads(self._request("GET", "_space", "the free space").data)
        return None if doc.get("free") is None else int(doc["free"])

    def total_space(self) -> int | None:
        doc = json.loads(self._request("GET", "_space", "the total space").data)
        return None if doc.get("total") is None else int(doc["total"])
