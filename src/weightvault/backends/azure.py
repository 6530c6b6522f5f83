"""Azure Blob Storage through obstore (Rust's ``object_store``; the GIL is released during I/O).

A repository lives under ``az://CONTAINER/PREFIX``; objects are named exactly as in the local
layout (``config``, ``keys/<name>``, ``data/<XX>/<pack id>``, ...). Credentials come from the
environment (``azure_settings``): a connection string (``AZURE_STORAGE_CONNECTION_STRING``), an
account and key or SAS (``AZURE_STORAGE_ACCOUNT``/``AZURE_STORAGE_KEY``/``AZURE_STORAGE_SAS_TOKEN``
as the Azure CLI names them, restic's ``AZURE_ACCOUNT_NAME``/``AZURE_ACCOUNT_KEY``/
``AZURE_ACCOUNT_SAS``, or obstore's ``AZURE_STORAGE_ACCOUNT_NAME``/``..._KEY``), else what obstore
finds itself (managed identity, workload identity, ``az login`` with ``AZURE_USE_AZURE_CLI``).
The endpoint is ``endpoint`` (``StorageOptions.azure_endpoint``), else
``$WEIGHTVAULT_AZURE_ENDPOINT``, else the connection string's ``BlobEndpoint``, else
``https://ACCOUNT.blob.core.windows.net``.

Contract notes (``backends/base.py``):

* ``save`` is one Put Blob (atomic: the blob appears complete or not at all), or for objects of
  ``multipart_threshold`` bytes or more staged blocks committed by one Put Block List (also
  atomic). ``create_only`` is a conditional put (``If-None-Match: *``), enforced by the store.
* Temporary objects: none that ``remove_temp`` could reach. Blocks staged by an interrupted
  upload are invisible, uncommitted, and discarded by Azure after 7 days.
* Access tiers: with ``access_tier`` (Hot, Cool, Cold, Archive) data packs are written in that
  tier (the ``x-ms-access-tier`` of Put Blob). An archived blob reads as ColdDataError
  (``BlobArchived``); ``thaw`` rehydrates it to Cool (``backends/azure_tiers.py``).
* Retention: not supported here (``supports_retention`` False). Azure's immutability is a
  container- or version-level policy set by the account's administrator (docs/CLOUD.md).
* Errors are classified from the HTTP status and the Azure error code: ``TransientBackendError``
  for 408, 429, 5xx, timeouts and dropped connections (``backends/retry.py`` retries them; the
  library's own retries are off so every retry is counted); ``BackendError`` with a hint for a
  missing container, denied access and an endpoint that never answered; ``ObjectNotFoundError``
  for a missing blob.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import AzureStore

from weightvault.backends.base import FileType, saving_data_pack
from weightvault.backends.factory import AZURE_TIERS
from weightvault.backends.naming import PrefixedNames
from weightvault.errors import (
    BackendError,
    ColdDataError,
    ObjectExistsError,
    ObjectNotFoundError,
    TransientBackendError,
    UsageError,
)

__all__ = ["AzureBackend", "AzureSettings", "azure_settings", "parse_az_url"]

_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")  # Azure's container naming rule
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_DENIED_CODES = {"AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
                 "InsufficientAccountPermissions", "AccountIsDisabled"}
_CRED_HINT = ("set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or"
              " AZURE_STORAGE_SAS_TOKEN (docs/CLOUD.md)")


def parse_az_url(url: str) -> tuple[str, str]:
    """``az://container/some/prefix`` -> ("container", "some/prefix"); UsageError if malformed."""
    if not url.startswith("az://"):
        raise UsageError(f"{url!r} is not an az:// URL")
    container, _, prefix = url[5:].partition("/")
    prefix = prefix.rstrip("/")
    if not _CONTAINER.match(container):
        raise UsageError(f"{url!r}: {container!r} is not an Azure container name",
                         hint="3-63 lower-case letters, digits and single hyphens: az://CONTAINER/PREFIX")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise UsageError(f"{url!r} has an empty, '.' or '..' prefix component", hint="use az://CONTAINER/a/b")
    return container, prefix


@dataclass(frozen=True)
class AzureSettings:
    """Where and as whom to connect; ``secrets`` never reaches a message or a log."""

    account: str | None
    endpoint: str | None
    secrets: Mapping[str, str]  # obstore config keys: access_key or sas_key

    def __repr__(self) -> str:  # no secret in a traceback or a log line
        return f"AzureSettings(account={self.account!r}, endpoint={self.endpoint!r}, secrets=<{len(self.secrets)}>)"


def _connection_string(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def azure_settings(endpoint: str | None = None, env: Mapping[str, str] | None = None) -> AzureSettings:
    """The account, endpoint and secret to use, from ``endpoint`` and the environment (see the
    module's docstring for the order); UsageError for a connection string without an account."""
    env = os.environ if env is None else env
    secrets: dict[str, str] = {}
    account = None
    cs_endpoint = None
    if cs := env.get("AZURE_STORAGE_CONNECTION_STRING"):
        parts = _connection_string(cs)
        account = parts.get("AccountName")
        if not account:
            raise UsageError("AZURE_STORAGE_CONNECTION_STRING names no AccountName",
                             hint="copy the whole connection string from the storage account's Access keys page")
        if parts.get("AccountKey"):
            secrets["access_key"] = parts["AccountKey"]
        if parts.get("SharedAccessSignature"):
            secrets["sas_key"] = parts["SharedAccessSignature"]
        cs_endpoint = parts.get("BlobEndpoint")
        if not cs_endpoint and parts.get("EndpointSuffix"):
            proto = parts.get("DefaultEndpointsProtocol", "https")
            cs_endpoint = f"{proto}://{account}.blob.{parts['EndpointSuffix']}"
    account = account or env.get("AZURE_STORAGE_ACCOUNT") or env.get("AZURE_ACCOUNT_NAME") \
        or env.get("AZURE_STORAGE_ACCOUNT_NAME")
    for key, names in (("access_key", ("AZURE_STORAGE_KEY", "AZURE_ACCOUNT_KEY", "AZURE_STORAGE_ACCOUNT_KEY")),
                       ("sas_key", ("AZURE_STORAGE_SAS_TOKEN", "AZURE_ACCOUNT_SAS", "AZURE_STORAGE_SAS_KEY"))):
        if key not in secrets and (value := next((env[n] for n in names if env.get(n)), None)):
            secrets[key] = value.lstrip("?") if key == "sas_key" else value
    chosen = endpoint or env.get("WEIGHTVAULT_AZURE_ENDPOINT") or cs_endpoint or env.get("AZURE_STORAGE_ENDPOINT")
    return AzureSettings(account or None, chosen.rstrip("/") if chosen else None, secrets)


class AzureBackend(PrefixedNames):
    """Blobs under ``az://container/prefix``. Thread-safe (obstore's store is)."""

    def __init__(self, container: str, prefix: str = "", *, settings: AzureSettings | None = None,
                 multipart_threshold: int = 256 * 1024 * 1024, access_tier: str | None = None) -> None:
        if access_tier is not None and access_tier not in AZURE_TIERS:
            raise UsageError(f"unknown Azure access tier {access_tier!r}", hint=f"use one of {', '.join(AZURE_TIERS)}")
        self.access_tier = access_tier  # of data packs only; everything else takes the account's default
        self._tiers: Any = None  # azure_tiers.TierClient, made on the first thaw
        self.container = container
        self.prefix = prefix.strip("/")
        self.settings = settings or azure_settings()
        self.multipart_threshold = multipart_threshold
        self.reached = False  # the endpoint answered at least once (any HTTP status)
        config: dict[str, Any] = dict(self.settings.secrets)
        if self.settings.account:
            config["account_name"] = self.settings.account
        if self.settings.endpoint:
            config["endpoint"] = self.settings.endpoint
        client = {"allow_http": bool(self.settings.endpoint and self.settings.endpoint.startswith("http://")),
                  "connect_timeout": "10s", "timeout": "120s"}
        retry = {"max_retries": 0, "retry_timeout": timedelta(seconds=1)}  # retries are the wrapper's job
        try:
            self.store = AzureStore(container, config=config, client_options=client,  # type: ignore[arg-type]
                                    retry_config=retry)  # type: ignore[arg-type]
        except BaseError as exc:
            raise BackendError(f"cannot use az://{container}: {_first_line(exc)}", hint=_CRED_HINT) from exc

    @property
    def location(self) -> str:
        url = f"az://{self.container}" + (f"/{self.prefix}" if self.prefix else "")
        return f"{url} at {self.settings.endpoint}" if self.settings.endpoint else url

    def _error(self, exc: Exception, what: str) -> BackendError:
        """Classify an obstore exception for the object ``what``."""
        where = f"{what} in {self.location}"
        text = str(exc)
        status_m, code_m = _STATUS.search(text), _CODE.search(text)
        status, code = (int(status_m.group(1)) if status_m else 0), (code_m.group(1) if code_m else "")
        if status:
            self.reached = True
        if code == "BlobArchived":
            return ColdDataError(f"{where} is in the Archive tier",
                                 hint="request its rehydration first: `weightvault restore --thaw ...` (costs money"
                                 " and hours; docs/CLOUD.md)")
        if code == "ContainerNotFound":
            return BackendError(f"container {self.container!r} does not exist ({where})",
                                hint="create the container first (weightvault never creates one), or check the URL")
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError, PermissionError)) or status == 403 \
                or code in _DENIED_CODES:
            return BackendError(f"access denied to {where} ({code or status or type(exc).__name__})", hint=_CRED_HINT)
        if isinstance(exc, (NotFoundError, FileNotFoundError)) or status == 404:  # obstore raises the builtin
            return ObjectNotFoundError(f"{where} not found")
        if status in _TRANSIENT_STATUS:
            return TransientBackendError(f"{where}: {code or status} (transient)")
        if status:
            return BackendError(f"{where}: {code or status}: {_first_line(exc)}")
        if not self.reached and "error sending request" in text:
            return BackendError(f"cannot connect to the Azure endpoint for {self.location}: {_first_line(exc)}",
                                hint="check $WEIGHTVAULT_AZURE_ENDPOINT (or the connection string's BlobEndpoint)"
                                " and that the service is reachable from here")
        if isinstance(exc, BaseError):  # no HTTP answer: a dropped connection, a timeout
            return TransientBackendError(f"{where}: {_first_line(exc)} (transient)")
        raise exc

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            out = fn(self.store, *args, **kwargs)
        except Exception as exc:
            raise self._error(exc, what) from exc
        self.reached = True
        return out

    # -- the Backend protocol --------------------------------------------------------------------
    def create(self) -> None:
        """Check that the container is reachable and the prefix holds no repository yet."""
        try:  # a listing names a missing container (a HEAD of a blob cannot: it has no body)
            next(iter(obstore.list(self.store, self.prefix or None, chunk_size=1)), None)
        except Exception as exc:
            raise self._error(exc, "container") from exc
        if any(True for _ in self.list(FileType.CONFIG)):
            raise ObjectExistsError(f"{self.location} already holds a repository")

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        key, what = self._key(ftype, name), f"{ftype.value}/{name}"
        tier = {"Storage-Class": self.access_tier} if (
            self.access_tier and ftype is FileType.PACK and saving_data_pack()) else None
        try:
            obstore.put(self.store, key, data, mode="create" if create_only else "overwrite",
                        use_multipart=len(data) >= self.multipart_threshold, attributes=tier)
        except (AlreadyExistsError, PreconditionError) as exc:
            self.reached = True
            raise ObjectExistsError(f"{what} already exists in {self.location}") from exc
        except Exception as exc:
            raise self._error(exc, what) from exc
        self.reached = True

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key, what = self._key(ftype, name), f"{ftype.value}/{name}"
        if offset < 0 or (length is not None and length < 0):
            raise ObjectNotFoundError(f"{what}: invalid range {offset}+{length}")
        if length == 0:
            self.stat(ftype, name)  # a missing object must still raise
            return b""
        if offset == 0 and length is None:
            return bytes(self._call(what, obstore.get, key).bytes())
        try:  # one request; a HEAD only where the start lies at or past the end
            if length is None:
                data = bytes(obstore.get(self.store, key, options={"range": {"offset": offset}}).bytes())
            else:
                data = bytes(obstore.get_range(self.store, key, start=offset, end=offset + length))
        except Exception as exc:
            text = str(exc)
            if "Wanted range" not in text and "status code: 416" not in text:  # not about the range
                raise self._error(exc, what) from exc
            size = self.stat(ftype, name)
            if length is None and offset == size:
                return b""
            raise ObjectNotFoundError(f"{what}: range {offset}+{length} past its end ({size} bytes)") from exc
        self.reached = True
        if length is not None and len(data) != length:
            raise ObjectNotFoundError(f"{what}: range {offset}+{length} past its end ({len(data)} bytes read)")
        return data

    def stat(self, ftype: FileType, name: str) -> int:
        meta = self._call(f"{ftype.value}/{name}", obstore.head, self._key(ftype, name))
        return int(meta["size"])

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        if ftype is FileType.CONFIG:  # object_store lists below a path, never the path itself
            with contextlib.suppress(ObjectNotFoundError):
                yield "config", self.stat(ftype, "config")
            return
        prefix = self._dir(ftype)
        try:
            for batch in obstore.list(self.store, prefix):
                for obj in batch:
                    name = str(obj["path"]).rsplit("/", 1)[-1]
                    if name and not name.startswith("."):
                        yield name, int(obj["size"])
        except Exception as exc:
            raise self._error(exc, f"{ftype.value}/") from exc
        self.reached = True

    def remove(self, ftype: FileType, name: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            self._call(f"{ftype.value}/{name}", obstore.delete, self._key(ftype, name))

    @property
    def supports_retention(self) -> bool:
        return False

    @property
    def supports_cold(self) -> bool:
        return True  # any blob may have been archived (by this repository's tier or by someone else)

    def thaw(self, ftype: FileType, name: str, days: int, tier: str) -> str:
        """Rehydrate an archived blob to Cool (``backends/azure_tiers.py``; ``days`` does not apply:
        the blob itself moves)."""
        from weightvault.backends.azure_tiers import TierClient

        if self._tiers is None:
            s = self.settings
            self._tiers = TierClient(s.account, s.endpoint, dict(s.secrets), self.container)
        state, exc = self._tiers.thaw(self._key(ftype, name), tier)
        if exc is not None:
            status = int(getattr(exc, "status_code", 0) or 0)
            code = str(getattr(exc, "error_code", "") or "")
            raise self._error(_Answer(f"status code: {status} <Code>{code}</Code>"), f"{ftype.value}/{name}")
        return str(state)

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        raise BackendError(f"retention is not supported by {self.location}",
                           hint="Azure's immutability is a container or version-level WORM policy set by the"
                           " account's administrator (docs/CLOUD.md)")

    def remove_temp(self, min_age: float) -> int:
        """0: an interrupted upload leaves only uncommitted blocks, which Azure discards itself."""
        return 0

    def free_space(self) -> int | None:
        return None

    def total_space(self) -> int | None:
        return None


class _Answer(Exception):
    """An HTTP answer of azure-storage-blob, rephrased for ``AzureBackend._error``."""


_QUERY = re.compile(r"\?[^\s]*")


def _first_line(exc: BaseException) -> str:
    """The first line of the library's message, with every URL's query removed (a SAS token
    travels in the query string and must never reach a message)."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return _QUERY.sub("?...", line)
