"""S3-compatible object storage (AWS S3, MinIO, Ceph RGW) through boto3.

A repository lives under ``s3://BUCKET/PREFIX``; objects are named exactly as in the local layout
(``config``, ``keys/<name>``, ``data/<XX>/<pack id>``, ``index/<name>``, ``snapshots/<name>``,
``locks/<name>``). Credentials, region and profile come from the usual AWS sources (environment
variables, ``~/.aws/config`` and ``credentials``, instance roles); the endpoint from
``endpoint_url`` (``--s3-endpoint``), else ``$AWS_ENDPOINT_URL``, else AWS.

Contract notes (``backends/base.py``):

* ``save`` is atomic: a PUT, or a multipart upload for objects of ``multipart_threshold`` bytes
  or more, is invisible until complete. Durability is the store's. ``create_only`` uses a
  conditional PUT (``If-None-Match: *``); a store that does not support it is detected at the
  first use and then an existence check precedes the PUT (racy; ``conditional_create`` says which).
* Temporary objects: a multipart upload interrupted by a crash or kill stays in the bucket,
  invisible and billed, until aborted; ``remove_temp`` aborts those under the prefix. A plain
  PUT leaves nothing behind.
* Errors are classified: ``TransientBackendError`` for throttling, 5xx, timeouts and connection
  resets (retry them: ``backends/retry.py``); ``BackendError`` with a hint for permanent ones
  (access denied, no such bucket); ``ObjectNotFoundError`` for a missing key. botocore's own
  retries are off, so each call is one request and every retry is counted by the wrapper.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from weightvault.backends.base import FileType, saving_data_pack
from weightvault.backends.factory import S3_COLD_CLASSES as COLD_CLASSES
from weightvault.backends.factory import S3_STORAGE_CLASSES as STORAGE_CLASSES
from weightvault.backends.naming import PrefixedNames
from weightvault.errors import (
    BackendError,
    ColdDataError,
    ObjectExistsError,
    ObjectNotFoundError,
    TransientBackendError,
    UsageError,
)

__all__ = ["COLD_CLASSES", "STORAGE_CLASSES", "S3Backend", "parse_s3_url"]

log = logging.getLogger(__name__)

_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
    "OperationAborted",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix"); UsageError if malformed."""
    if not url.startswith("s3://"):
        raise UsageError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[5:].partition("/")
    prefix = prefix.rstrip("/")
    if not bucket:
        raise UsageError(f"{url!r} has no bucket name", hint="use s3://BUCKET or s3://BUCKET/PREFIX")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise UsageError(f"{url!r} has an empty, '.' or '..' prefix component", hint="use s3://BUCKET/a/b")
    return bucket, prefix


def _code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(err.get("Code", "")), status


def _denied(exc: Exception) -> bool:
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    code, status = _code(exc)
    return code == "AccessDenied" or status == 403


class S3Backend(PrefixedNames):
    """Objects under ``s3://bucket/prefix``. Thread-safe (one boto3 client, which is)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        max_concurrency: int = 8,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunk: int = 16 * 1024 * 1024,
        client: Any = None,
        object_lock_mode: str | None = None,
        storage_class: str | None = None,
    ) -> None:
        if object_lock_mode not in (None, "GOVERNANCE", "COMPLIANCE"):
            raise BackendError(f"unknown S3 Object Lock mode {object_lock_mode!r}", hint="use GOVERNANCE or COMPLIANCE")
        if storage_class is not None and storage_class not in STORAGE_CLASSES:
            raise UsageError(f"unknown S3 storage class {storage_class!r}",
                             hint=f"use one of {', '.join(STORAGE_CLASSES)}")
        self.storage_class = storage_class  # of data packs only; everything else stays STANDARD
        self.object_lock_mode = object_lock_mode
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        if client is None:
            session = boto3.session.Session(profile_name=profile, region_name=region)
            cfg = botocore.config.Config(
                retries={"max_attempts": 1, "mode": "standard"},  # retries are the wrapper's job
                max_pool_connections=max(10, 2 * max_concurrency),
                connect_timeout=10,
                read_timeout=60,
            )
            client = session.client("s3", endpoint_url=endpoint_url, config=cfg)
        self.client = client
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunk,
            max_concurrency=max_concurrency,
            use_threads=max_concurrency > 1,
        )
        self.conditional_create: bool | None = None  # unknown until the first create_only save
        self._cc_lock = threading.Lock()
        self.reached = False  # the endpoint answered at least once (any HTTP response)
        events = getattr(getattr(client, "meta", None), "events", None)
        if events is not None:
            events.register("after-call.s3", self._answered)

    def _answered(self, **_kwargs: object) -> None:
        self.reached = True

    @property
    def location(self) -> str:
        url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        return f"{url} at {self.endpoint_url}" if self.endpoint_url else url

    def _error(self, exc: Exception, what: str) -> BackendError:
        """Classify a boto3/botocore exception for the object ``what``."""
        where = f"{what} in {self.location}"
        if isinstance(exc, botocore.exceptions.ClientError):
            code, status = _code(exc)
            if code == "InvalidObjectState":
                return ColdDataError(f"{where} is in an offline storage class (GLACIER or DEEP_ARCHIVE) and not"
                                     " restored", hint="request its restore first: `weightvault restore --thaw ...`"
                                     " (docs/CLOUD.md: costs money and hours)")
            if code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
                return ObjectNotFoundError(f"{where} not found")
            if code == "NoSuchBucket":
                return BackendError(f"bucket {self.bucket!r} does not exist ({where})",
                                    hint="create the bucket first, or check the URL and --s3-endpoint")
            if code in ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                        "ExpiredToken", "InvalidToken") or status == 403:
                return BackendError(f"access denied to {where} ({code or status})",
                                    hint="check the credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE) and the IAM policy"
                                    " (docs/S3.md lists the permissions)")
            if code in _TRANSIENT_CODES or status in (429, 500, 502, 503, 504):
                return TransientBackendError(f"{where}: {code or status} (transient)")
            return BackendError(f"{where}: {code or status}: {exc}")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return BackendError(f"no S3 credentials for {where}",
                                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
        if isinstance(exc, botocore.exceptions.EndpointConnectionError) and not self.reached:
            # never answered: a wrong endpoint or a server that is not running, not a blip; fail now
            endpoint = self.endpoint_url or self.client.meta.endpoint_url
            return BackendError(f"cannot connect to the S3 endpoint {endpoint} (for {self.location}): {exc}",
                                hint="check --s3-endpoint / $WEIGHTVAULT_S3_ENDPOINT and that the server is running"
                                " and reachable from here")
        if isinstance(exc, (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError)):
            return TransientBackendError(f"{where}: {type(exc).__name__}: {exc} (transient)")
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return BackendError(f"{where}: {exc}")
        raise exc

    # -- the Backend protocol --------------------------------------------------------------------
    def create(self) -> None:
        """Check that the bucket is reachable and the prefix holds no repository yet."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            err = self._error(exc, "bucket")
            if isinstance(err, ObjectNotFoundError):
                raise BackendError(f"bucket {self.bucket!r} does not exist at {self.location}",
                                   hint="create the bucket first (weightvault never creates buckets)") from exc
            raise err from exc
        if any(True for _ in self.list(FileType.CONFIG)):
            raise ObjectExistsError(f"{self.location} already holds a repository")

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        key = self._key(ftype, name)
        what = f"{ftype.value}/{name}"
        if create_only:
            self._save_create_only(key, what, data)
            return
        extra = {"StorageClass": self.storage_class} if (
            self.storage_class and ftype is FileType.PACK and saving_data_pack()) else {}
        try:
            if len(data) >= self.transfer.multipart_threshold:
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, key, Config=self.transfer, ExtraArgs=extra)
            else:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except Exception as exc:
            raise self._error(exc, what) from exc

    def _save_create_only(self, key: str, what: str, data: bytes) -> None:
        if self.conditional_create is not False:
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
                self._set_conditional(True)
                return
            except botocore.exceptions.ClientError as exc:
                code, status = _code(exc)
                if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise ObjectExistsError(f"{what} already exists in {self.location}") from exc
                if status != 501 and code not in ("NotImplemented", "InvalidArgument"):
                    raise self._error(exc, what) from exc
                self._set_conditional(False)
            except Exception as exc:
                raise self._error(exc, what) from exc
        try:  # no conditional PUT on this store: check, then write (a narrow race remains)
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            err = self._error(exc, what)
            if not isinstance(err, ObjectNotFoundError):
                raise err from exc
        else:
            raise ObjectExistsError(f"{what} already exists in {self.location}")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:
            raise self._error(exc, what) from exc

    def _set_conditional(self, value: bool) -> None:
        with self._cc_lock:
            self.conditional_create = value

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        what = f"{ftype.value}/{name}"
        if offset < 0 or (length is not None and length < 0):
            raise ObjectNotFoundError(f"{what}: invalid range {offset}+{length}")
        if length == 0:
            self.stat(ftype, name)  # a missing object must still raise
            return b""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(ftype, name)}
        if offset or length is not None:
            kwargs["Range"] = f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))
        try:
            resp = self.client.get_object(**kwargs)
            data: bytes = resp["Body"].read()
        except botocore.exceptions.ClientError as exc:
            code, status = _code(exc)
            if status == 416 or code == "InvalidRange":
                if offset == 0 and length is None:
                    return b""
                raise ObjectNotFoundError(f"{what}: range {offset}+{length} past its end") from exc
            raise self._error(exc, what) from exc
        except Exception as exc:
            raise self._error(exc, what) from exc
        if length is not None and len(data) != length:
            raise ObjectNotFoundError(f"{what}: range {offset}+{length} past its end ({len(data)} bytes read)")
        return data

    def stat(self, ftype: FileType, name: str) -> int:
        what = f"{ftype.value}/{name}"
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(ftype, name))["ContentLength"])
        except Exception as exc:
            raise self._error(exc, what) from exc

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        prefix = self._key(ftype, "config") if ftype is FileType.CONFIG else self._dir(ftype)
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = str(obj["Key"])
                    if ftype is FileType.CONFIG:
                        if key == prefix:
                            yield "config", int(obj["Size"])
                        continue
                    name = key.rsplit("/", 1)[-1]
                    if name and not name.startswith("."):
                        yield name, int(obj["Size"])
        except Exception as exc:
            raise self._error(exc, f"{ftype.value}/") from exc

    @property
    def supports_retention(self) -> bool:
        return self.object_lock_mode is not None

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        """Set (or extend, never shorten) the object's Object Lock retention to ``until``. The
        bucket must have Object Lock enabled."""
        if self.object_lock_mode is None:
            raise BackendError(f"retention is not supported by {self.location} without an Object Lock mode",
                               hint="open the repository with --s3-object-lock GOVERNANCE or COMPLIANCE"
                               " (the bucket must have Object Lock enabled)")
        key, what = self._key(ftype, name), f"{ftype.value}/{name}"
        try:
            current = self.client.head_object(Bucket=self.bucket, Key=key).get("ObjectLockRetainUntilDate")
            if current is not None and current >= until:
                return
            self.client.put_object_retention(
                Bucket=self.bucket, Key=key,
                Retention={"Mode": self.object_lock_mode, "RetainUntilDate": until},
            )
        except Exception as exc:
            raise self._error(exc, what) from exc

    def remove_temp(self, min_age: float) -> int:
        """Abort the incomplete multipart uploads of this repository's objects (keys under the
        prefix's ``data/``, ``index/``, ... directories: never another program's, even when the
        repository is at the bucket's root) that were initiated over ``min_age`` seconds ago
        (``save`` uses multipart uploads for large objects; a younger upload may be a save still
        running). Returns the number aborted. Without permission to
        list or abort them (``s3:ListBucketMultipartUploads``, ``s3:AbortMultipartUpload``) it
        logs a warning and stops: leftovers cost storage, never correctness."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        cutoff = datetime.now(UTC) - timedelta(seconds=min_age)
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            ours = {f"{prefix}{ft.value}/" for ft in FileType if ft is not FileType.CONFIG}
            stale = [(str(u["Key"]), str(u["UploadId"])) for page in pages for u in page.get("Uploads", [])
                     if u["Initiated"] < cutoff and str(u["Key"]).startswith(tuple(ours))]
        except Exception as exc:
            if _denied(exc):
                log.warning("cannot list incomplete multipart uploads in %s (access denied); not removing them",
                            self.location)
                return 0
            raise self._error(exc, "multipart uploads") from exc
        n = 0
        for key, upload_id in stale:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception as exc:
                if _denied(exc):
                    log.warning("cannot abort incomplete multipart uploads in %s (access denied)", self.location)
                    break
                err = self._error(exc, f"multipart upload of {key}")
                if not isinstance(err, ObjectNotFoundError):  # NoSuchUpload: completed or aborted meanwhile
                    raise err from exc
                continue
            n += 1
        return n

    def remove(self, ftype: FileType, name: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(ftype, name))
        except Exception as exc:
            err = self._error(exc, f"{ftype.value}/{name}")
            if not isinstance(err, ObjectNotFoundError):
                raise err from exc

    @property
    def supports_cold(self) -> bool:
        return True  # any object may have been put in (or moved to) a cold class by someone else

    def thaw(self, ftype: FileType, name: str, days: int, tier: str) -> str:
        """HEAD the object; an offline one without a restored copy gets a RestoreObject request."""
        key, what = self._key(ftype, name), f"{ftype.value}/{name}"
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise self._error(exc, what) from exc
        if head.get("StorageClass") not in COLD_CLASSES:
            return "online"
        restore = str(head.get("Restore") or "")
        if 'ongoing-request="true"' in restore:
            return "restoring"
        if 'ongoing-request="false"' in restore:
            return "online"
        try:
            self.client.restore_object(Bucket=self.bucket, Key=key,
                                       RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}})
        except botocore.exceptions.ClientError as exc:
            if _code(exc)[0] == "RestoreAlreadyInProgress":
                return "restoring"
            raise self._error(exc, f"restore request for {what}") from exc
        except Exception as exc:
            raise self._error(exc, f"restore request for {what}") from exc
        return "requested"

    def free_space(self) -> int | None:
        return None

    def total_space(self) -> int | None:
        return None
