"""Google Cloud Storage through the official client (``google-cloud-storage``, the ``gcs`` extra).

A repository lives under ``gs://BUCKET/PREFIX``; objects are named exactly as in the local layout.
Credentials are Google's Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS`` naming
a service-account JSON file, ``gcloud auth application-default login``, or the metadata server).
The endpoint is ``endpoint`` (``StorageOptions.gcs_endpoint``), else ``$WEIGHTVAULT_GCS_ENDPOINT``,
else ``$STORAGE_EMULATOR_HOST``, else Google; an ``http://`` endpoint (an emulator) is used
without credentials.

Why this library and not obstore (which serves ``az://``): obstore's GCS client could not be
tested against any GCS emulator installable here (its PUT needs an ``ETag`` header that
gcp-storage-emulator does not send), and nothing is shipped untested (docs/CLOUD.md).

Contract notes (``backends/base.py``):

* ``save`` is one upload (a single request up to 8 MiB, a resumable upload above it); either is
  atomic: the object appears when the upload is finalized. ``create_only`` checks that the name
  is free, then uploads with ``ifGenerationMatch=0``, a precondition Google enforces (two
  writers racing: one wins, the other gets 412). The emulator used in the tests ignores
  preconditions, so there only the check stands (docs/CLOUD.md).
* Temporary objects: none; an interrupted resumable upload is a session, not an object, and
  expires after a week.
* Retention: not supported yet (``supports_retention`` False; docs/CLOUD.md says why).
* Errors: ``TransientBackendError`` for 408, 429, 5xx, timeouts and connection errors (the
  library's own retries are off, ``backends/retry.py`` retries and counts); ``BackendError``
  with a hint for a missing bucket, denied access, missing credentials or an endpoint that never
  answered; ``ObjectNotFoundError`` for a missing object.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from weightvault.backends.base import FileType, NoColdStorage
from weightvault.backends.naming import PrefixedNames
from weightvault.errors import BackendError, ObjectExistsError, ObjectNotFoundError, TransientBackendError, UsageError

__all__ = ["GcsBackend", "gcs_endpoint", "parse_gs_url"]

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_CRED_HINT = ("set GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON file, or run"
              " `gcloud auth application-default login` (docs/CLOUD.md)")
_TIMEOUT = (10.0, 120.0)  # connect, read


def parse_gs_url(url: str) -> tuple[str, str]:
    """``gs://bucket/some/prefix`` -> ("bucket", "some/prefix"); UsageError if malformed."""
    if not url.startswith("gs://"):
        raise UsageError(f"{url!r} is not a gs:// URL")
    bucket, _, prefix = url[5:].partition("/")
    prefix = prefix.rstrip("/")
    if not bucket or len(bucket) < 3 or not all(c.islower() or c.isdigit() or c in "-_." for c in bucket):
        raise UsageError(f"{url!r}: {bucket!r} is not a bucket name",
                         hint="3-63 lower-case letters, digits, '-', '_' and '.': gs://BUCKET/PREFIX")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise UsageError(f"{url!r} has an empty, '.' or '..' prefix component", hint="use gs://BUCKET/a/b")
    return bucket, prefix


def gcs_endpoint(endpoint: str | None = None) -> str | None:
    """The endpoint to use (see the module's docstring), or None for Google's."""
    chosen = endpoint or os.environ.get("WEIGHTVAULT_GCS_ENDPOINT") or os.environ.get("STORAGE_EMULATOR_HOST")
    return chosen.rstrip("/") if chosen else None


class GcsBackend(NoColdStorage, PrefixedNames):
    """Objects under ``gs://bucket/prefix``. Thread-safe: one client per thread (the library's
    HTTP session is not meant to be shared)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None,
                 max_concurrency: int = 8) -> None:
        try:
            from google.api_core import exceptions as gexc
            from google.cloud import storage
        except ImportError as exc:
            raise UsageError("gs:// repositories need the Google Cloud Storage client",
                             hint="pip install 'weightvault[gcs]' (google-cloud-storage)") from exc
        self._storage, self._gexc = storage, gexc
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = gcs_endpoint(endpoint)
        self.max_concurrency = max_concurrency
        self.reached = False
        self._local = threading.local()
        self._client()  # credentials are looked up now: a missing one is said before any work

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import google.auth.exceptions

            kwargs: dict[str, Any] = {}
            if self.endpoint:
                kwargs["client_options"] = {"api_endpoint": self.endpoint}
                if self.endpoint.startswith("http://"):  # an emulator: no credentials
                    from google.auth.credentials import AnonymousCredentials

                    kwargs.update(credentials=AnonymousCredentials(), project="<none>")  # type: ignore[no-untyped-call]
            try:
                client = self._storage.Client(**kwargs)
            except google.auth.exceptions.GoogleAuthError as exc:
                raise BackendError(f"no Google Cloud credentials for {self.location}: {exc}", hint=_CRED_HINT) from exc
            if getattr(client, "_bucket_metadata_cache", None) is not None:
                # google-cloud-storage >= 3.5 fetches each bucket's metadata in a background thread
                # per request (for tracing attributes): extra requests, and threads that outlive
                # this backend retrying for two minutes against an endpoint that may be gone. The
                # client checks the attribute before each use; None turns the fetches off.
                client._bucket_metadata_cache = None
            self._local.client = client
            self._local.bucket = client.bucket(self.bucket_name)
        return client

    def _blob(self, key: str) -> Any:
        self._client()
        return self._local.bucket.blob(key)

    @property
    def location(self) -> str:
        url = f"gs://{self.bucket_name}" + (f"/{self.prefix}" if self.prefix else "")
        return f"{url} at {self.endpoint}" if self.endpoint else url

    def _error(self, exc: Exception, what: str, *, bucket_call: bool = False) -> BackendError:
        """Classify a google-cloud-storage / requests exception for the object ``what``."""
        import google.auth.exceptions
        import requests

        where = f"{what} in {self.location}"
        g = self._gexc
        if isinstance(exc, g.GoogleAPICallError):
            self.reached = True
            status = int(exc.code or 0)
            if status == 404 and (bucket_call or "bucket" in str(exc.message).lower()):
                return BackendError(f"bucket {self.bucket_name!r} does not exist ({where})",
                                    hint="create the bucket first (weightvault never creates one), or check the URL")
            if status == 404:
                return ObjectNotFoundError(f"{where} not found")
            if status in (401, 403):
                return BackendError(f"access denied to {where} ({status}: {exc.message})", hint=_CRED_HINT)
            if status in _TRANSIENT_STATUS:
                return TransientBackendError(f"{where}: {status} (transient)")
            return BackendError(f"{where}: {status}: {exc.message}")
        if isinstance(exc, google.auth.exceptions.GoogleAuthError):
            return BackendError(f"Google Cloud credentials failed for {where}: {exc}", hint=_CRED_HINT)
        if isinstance(exc, requests.exceptions.ConnectionError) and not self.reached:
            return BackendError(f"cannot connect to the GCS endpoint {self.endpoint or 'storage.googleapis.com'}"
                                f" (for {self.location}): {type(exc).__name__}",
                                hint="check $WEIGHTVAULT_GCS_ENDPOINT / $STORAGE_EMULATOR_HOST and that the service"
                                " is reachable from here")
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            requests.exceptions.ChunkedEncodingError)):
            return TransientBackendError(f"{where}: {type(exc).__name__} (transient)")
        raise exc

    # -- the Backend protocol --------------------------------------------------------------------
    def create(self) -> None:
        """Check that the bucket is reachable and the prefix holds no repository yet."""
        if any(True for _ in self.list(FileType.CONFIG)):
            raise ObjectExistsError(f"{self.location} already holds a repository")

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        key, what = self._key(ftype, name), f"{ftype.value}/{name}"
        if create_only:
            try:
                self.stat(ftype, name)
            except ObjectNotFoundError:
                pass
            else:
                raise ObjectExistsError(f"{what} already exists in {self.location}")
        try:
            self._blob(key).upload_from_string(data, content_type="application/octet-stream",
                                               if_generation_match=0 if create_only else None,
                                               timeout=_TIMEOUT, checksum=None, retry=None)
        except self._gexc.PreconditionFailed as exc:
            raise ObjectExistsError(f"{what} already exists in {self.location}") from exc
        except Exception as exc:
            raise self._error(exc, what) from exc
        self.reached = True

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key, what = self._key(ftype, name), f"{ftype.value}/{name}"
        if offset < 0 or (length is not None and length < 0):
            raise ObjectNotFoundError(f"{what}: invalid range {offset}+{length}")
        end: int | None = None if length is None else offset + length
        if length == 0:
            self.stat(ftype, name)  # a missing object must still raise
            return b""
        try:
            data: bytes = self._blob(key).download_as_bytes(
                start=offset if offset else None, end=None if end is None else end - 1, raw_download=True,
                checksum=None, timeout=_TIMEOUT, retry=None)
        except self._gexc.RequestRangeNotSatisfiable as exc:  # the start lies at or past the end
            if length is None and offset == self.stat(ftype, name):  # (a HEAD only on this path)
                return b""
            raise ObjectNotFoundError(f"{what}: range {offset}+{length} past its end") from exc
        except Exception as exc:
            raise self._error(exc, what) from exc
        self.reached = True
        if end is not None and len(data) != end - offset:
            raise ObjectNotFoundError(f"{what}: range {offset}+{length} past its end ({len(data)} bytes read)")
        return data

    def stat(self, ftype: FileType, name: str) -> int:
        key, what = self._key(ftype, name), f"{ftype.value}/{name}"
        self._client()
        try:
            blob = self._local.bucket.get_blob(key, timeout=_TIMEOUT, retry=None)
        except Exception as exc:
            raise self._error(exc, what) from exc
        self.reached = True
        if blob is None:
            raise ObjectNotFoundError(f"{what} in {self.location} not found")
        return int(blob.size or 0)

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        prefix = self._key(ftype, "config") if ftype is FileType.CONFIG else self._dir(ftype)
        client = self._client()
        try:
            for blob in client.list_blobs(self.bucket_name, prefix=prefix, timeout=_TIMEOUT, retry=None):
                key = str(blob.name)
                if ftype is FileType.CONFIG:
                    if key == prefix:
                        yield "config", int(blob.size or 0)
                    continue
                name = key.rsplit("/", 1)[-1]
                if name and not name.startswith("."):
                    yield name, int(blob.size or 0)
        except Exception as exc:
            raise self._error(exc, f"{ftype.value}/", bucket_call=True) from exc
        self.reached = True

    def remove(self, ftype: FileType, name: str) -> None:
        key, what = self._key(ftype, name), f"{ftype.value}/{name}"
        try:
            self._blob(key).delete(timeout=_TIMEOUT, retry=None)
        except self._gexc.NotFound:
            self.reached = True
        except Exception as exc:
            raise self._error(exc, what) from exc

    @property
    def supports_retention(self) -> bool:
        return False

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        raise BackendError(f"retention is not supported by {self.location}",
                           hint="use a bucket retention policy or Bucket Lock for immutability (docs/CLOUD.md)")

    def remove_temp(self, min_age: float) -> int:
        """0: an interrupted upload leaves a resumable session, never an object."""
        return 0

    def free_space(self) -> int | None:
        return None

    def total_space(self) -> int | None:
        return None
