"""Turn a repository location into a backend: a local path, ``s3://bucket/prefix``,
``az://container/prefix`` (``backends.azure``), ``gs://bucket/prefix`` (``backends.gcs``), or a
repository server ``https://host:port/NAME`` (``backends.http``).

Object storage and server backends are always wrapped in ``RetryingBackend`` (transient errors retried with backoff and
jitter) and a ``LimitedBackend`` allowing ``connections`` concurrent calls; any backend is wrapped
in a ``LimitedBackend`` when a bandwidth limit is set. The S3
endpoint is ``StorageOptions.s3_endpoint``, else ``$WEIGHTVAULT_S3_ENDPOINT``, else boto3's own
resolution (``$AWS_ENDPOINT_URL``, the profile, AWS).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from weightvault.backends.base import Backend, FileType
from weightvault.backends.limits import LimitedBackend
from weightvault.backends.local import LocalBackend
from weightvault.backends.retry import RetryingBackend, RetryPolicy
from weightvault.errors import ObjectNotFoundError, UsageError

__all__ = [
    "AZURE_TIERS",
    "S3_COLD_CLASSES",
    "S3_STORAGE_CLASSES",
    "SCHEMES",
    "StorageOptions",
    "check_location",
    "io_threads",
    "is_remote",
    "open_backend",
    "repository_exists",
]


#: Storage classes a repository's data packs may be written to (``--s3-storage-class``).
S3_STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER",
                      "DEEP_ARCHIVE")
#: The offline ones: an object there must be restored (``thaw``) before it can be read.
S3_COLD_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
#: Azure access tiers data packs may be written in (``--azure-access-tier``); Archive is offline:
#: ``restore --thaw`` rehydrates what a restore needs (``backends/azure_tiers.py``).
AZURE_TIERS = ("Hot", "Cool", "Cold", "Archive")


@dataclass(frozen=True)
class StorageOptions:
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_profile: str | None = None
    connections: int = 8  # concurrent requests to object storage (and multipart parts per upload)
    limit_upload: int | None = None  # bytes per second
    limit_download: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    s3_object_lock: str | None = None  # GOVERNANCE or COMPLIANCE: retention-locked snapshots get S3 retention
    s3_storage_class: str | None = None  # data packs only (STANDARD_IA, GLACIER_IR, GLACIER, DEEP_ARCHIVE, ...)
    azure_access_tier: str | None = None  # data packs only: Hot, Cool, Cold or Archive
    azure_endpoint: str | None = None  # else $WEIGHTVAULT_AZURE_ENDPOINT, the connection string, Azure
    gcs_endpoint: str | None = None  # else $WEIGHTVAULT_GCS_ENDPOINT, $STORAGE_EMULATOR_HOST, Google


def io_threads(location: str | os.PathLike[str], storage: StorageOptions | None = None) -> int:
    """Threads worth using for reads: ``connections`` for object storage (latency-bound), else 0
    (callers use one per CPU)."""
    return (storage or StorageOptions()).connections if is_remote(location) else 0


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Object storage or a repository server (not a local path)."""
    return os.fspath(location).startswith(SCHEMES)


SCHEMES = ("s3://", "az://", "gs://", "https://", "http://")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def check_location(location: str | os.PathLike[str]) -> str:
    """``location`` as a string; UsageError for a ``SCHEME://`` URL of a scheme no backend
    serves (``az://bucket/repo`` would otherwise be a local directory ``az:/bucket/repo``, and
    the user would believe the data went to a cloud)."""
    loc = os.fspath(location)
    if isinstance(loc, str) and (m := _SCHEME.match(loc)) and not loc.startswith(SCHEMES):
        raise UsageError(f"repository {loc!r}: {m.group(0)} is not a storage this weightvault speaks",
                         hint=f"supported: {', '.join(s + '...' for s in SCHEMES)}, or a local path (write"
                         f" ./{loc} for a directory really named so)")
    return str(loc)


def open_backend(location: str | os.PathLike[str], storage: StorageOptions | None = None) -> Backend:
    """The backend for ``location`` with ``storage``'s options applied (no I/O yet); UsageError
    for an unknown URL scheme (``check_location``)."""
    opts = storage or StorageOptions()
    loc = check_location(location)
    backend: Backend
    if loc.startswith(("https://", "http://")):
        from weightvault.backends.http import HttpBackend  # urllib3 only when needed

        server = HttpBackend(loc, max_connections=opts.connections)
        backend = LimitedBackend(RetryingBackend(server, opts.retry), max_concurrent=opts.connections)
    elif loc.startswith("az://"):
        from weightvault.backends.azure import AzureBackend, azure_settings, parse_az_url  # obstore when needed

        container, prefix = parse_az_url(loc)
        az = AzureBackend(container, prefix, settings=azure_settings(opts.azure_endpoint),
                          access_tier=opts.azure_access_tier)
        backend = LimitedBackend(RetryingBackend(az, opts.retry), max_concurrent=opts.connections)
    elif loc.startswith("gs://"):
        from weightvault.backends.gcs import GcsBackend, parse_gs_url  # google-cloud-storage when needed

        bucket, prefix = parse_gs_url(loc)
        gs = GcsBackend(bucket, prefix, endpoint=opts.gcs_endpoint, max_concurrency=opts.connections)
        backend = LimitedBackend(RetryingBackend(gs, opts.retry), max_concurrent=opts.connections)
    elif loc.startswith("s3://"):
        from weightvault.backends.s3 import S3Backend, parse_s3_url  # boto3 only when needed

        bucket, prefix = parse_s3_url(loc)
        endpoint = opts.s3_endpoint or os.environ.get("WEIGHTVAULT_S3_ENDPOINT") or None
        s3 = S3Backend(bucket, prefix, endpoint_url=endpoint, region=opts.s3_region, profile=opts.s3_profile,
                       max_concurrency=opts.connections, object_lock_mode=opts.s3_object_lock,
                       storage_class=opts.s3_storage_class)
        backend = LimitedBackend(RetryingBackend(s3, opts.retry), max_concurrent=opts.connections)
    else:
        backend = LocalBackend(loc)
    if opts.limit_upload or opts.limit_download:
        backend = LimitedBackend(backend, upload_bps=opts.limit_upload, download_bps=opts.limit_download)
    return backend


def repository_exists(location: str | os.PathLike[str], storage: StorageOptions | None = None) -> bool:
    """True if ``location`` holds a repository config (a cheap check before prompting for a password)."""
    location = check_location(location)
    if not is_remote(location):
        return os.path.exists(os.path.join(os.fspath(location), "config"))
    try:
        open_backend(location, storage).stat(FileType.CONFIG, "config")
    except ObjectNotFoundError:
        return False
    return True
