"""The exception tree. Every error carries the process exit code the CLI uses for it.

    WeightvaultError (1)
    ├── LocalPathError (1)                 a local path given to an operation cannot be used (restore
    │                                      target, directory to compare): the OSError, converted
    ├── UsageError (2)                     bad arguments or options
    │   └── NoMatchError (22)              --include / an ls path matches nothing in the snapshot
    ├── PartialBackupError (3)             backup committed, but some sources could not be read
    ├── IntegrityError (4)                 stored data failed authentication or hashing
    │   └── VerificationError (4)          a restored file does not match its snapshot (a blob's content
    │                                      hash, its size, or the SHA-256 read back by --verify)
    ├── CheckFailedError (5)               `check` found problems
    ├── RpoBreachedError (6)               `status`: a source's newest snapshot is older than its RPO
    ├── ConfigFileError (7)                a policy/config file is malformed or invalid (names the line)
    ├── DifferencesFoundError (8)          `verify --against`: the live tree differs from the snapshot
    ├── ValidationFailedError (9)          `validate`/`drill`: a restored model failed validation
    ├── RepositoryNotFoundError (10)
    ├── WrongPasswordError (11)
    ├── RepositoryLockedError (12)
    ├── RepositoryExistsError (13)
    ├── SnapshotNotFoundError (14)
    ├── NoSpaceError (15)                  ENOSPC / EDQUOT on the repository or restore target
    ├── UnsupportedFormatError (16)        repository written by a newer or unknown format version
    ├── UnsafePathError (17)               a snapshot entry would write outside the restore target
    ├── RestoreConflictError (18)          target exists and the overwrite mode forbids replacing it
    ├── ImmutableError (19)                refused: append-only repository or a retention-locked snapshot
    ├── KeyServiceError (24)               a key management service (AWS KMS) refused or failed: key
    │                                      disabled, pending deletion, missing, access denied, unreachable
    └── BackendError (20)                  the storage failed (I/O error, permission denied)
        ├── ObjectNotFoundError (20)       a named object does not exist
        ├── ObjectExistsError (20)         create-only save found the name taken
        ├── AccessDeniedError (23)         the repository server refused the credentials or the operation
        ├── ColdDataError (25)             the data sits in an offline storage class (S3 GLACIER,
        │                                  DEEP_ARCHIVE, Azure Archive): thaw it first (`restore --thaw`),
        │                                  or a thaw was requested and is under way
        └── TransientBackendError (21)     still failing after retries (throttling, 5xx, timeouts)

Library code raises these; the CLI maps them to messages and exit codes. Third-party errors are
converted at the boundary with ``raise X(...) from exc``.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "BackendError",
    "CheckFailedError",
    "ColdDataError",
    "ConfigFileError",
    "DifferencesFoundError",
    "ImmutableError",
    "IntegrityError",
    "KeyServiceError",
    "LocalPathError",
    "NoMatchError",
    "NoSpaceError",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "PartialBackupError",
    "RepositoryExistsError",
    "RepositoryLockedError",
    "RepositoryNotFoundError",
    "RestoreConflictError",
    "RpoBreachedError",
    "SnapshotNotFoundError",
    "TransientBackendError",
    "UnsafePathError",
    "UnsupportedFormatError",
    "UsageError",
    "ValidationFailedError",
    "VerificationError",
    "WeightvaultError",
    "WrongPasswordError",
]


class WeightvaultError(Exception):
    """Base class. ``exit_code`` is the CLI's exit status; ``hint`` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class LocalPathError(WeightvaultError):
    """An OSError on a path of this machine that an operation was given (not the repository's
    storage); ``errno`` and ``filename`` are those of the OSError."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, errno: int | None = None,
                 filename: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno
        self.filename = filename


class UsageError(WeightvaultError):
    exit_code = 2


class NoMatchError(UsageError):
    """``--include`` patterns (or an ``ls`` path) that match no entry of the snapshot."""

    exit_code = 22


class PartialBackupError(WeightvaultError):
    """Raised after a snapshot was committed while some source files were skipped."""

    exit_code = 3

    def __init__(self, message: str, *, snapshot_id: str, errors: list[tuple[str, str]]) -> None:
        super().__init__(message, hint="the listed files are not in the snapshot; fix access and back up again")
        self.snapshot_id = snapshot_id
        self.errors = errors


class IntegrityError(WeightvaultError):
    exit_code = 4


class VerificationError(IntegrityError):
    exit_code = 4


class CheckFailedError(WeightvaultError):
    exit_code = 5


class RpoBreachedError(WeightvaultError):
    exit_code = 6


class ConfigFileError(WeightvaultError):
    exit_code = 7


class DifferencesFoundError(WeightvaultError):
    exit_code = 8


class ValidationFailedError(WeightvaultError):
    exit_code = 9


class RepositoryNotFoundError(WeightvaultError):
    exit_code = 10


class WrongPasswordError(WeightvaultError):
    exit_code = 11


class RepositoryLockedError(WeightvaultError):
    exit_code = 12


class RepositoryExistsError(WeightvaultError):
    exit_code = 13


class SnapshotNotFoundError(WeightvaultError):
    exit_code = 14


class NoSpaceError(WeightvaultError):
    exit_code = 15


class UnsupportedFormatError(WeightvaultError):
    exit_code = 16


class UnsafePathError(WeightvaultError):
    exit_code = 17


class RestoreConflictError(WeightvaultError):
    exit_code = 18


class ImmutableError(WeightvaultError):
    exit_code = 19


class KeyServiceError(WeightvaultError):
    exit_code = 24


class BackendError(WeightvaultError):
    exit_code = 20


class ObjectNotFoundError(BackendError):
    pass


class ObjectExistsError(BackendError):
    pass


class AccessDeniedError(BackendError):
    """The repository server refused the credentials (401) or the operation (403, naming its rule)."""

    exit_code = 23


class ColdDataError(BackendError):
    """Data is offline in a cold storage class; ``pending`` says how many objects still are."""

    exit_code = 25


class TransientBackendError(BackendError):
    """A failure worth retrying (throttling, 5xx, timeout, connection reset). Raised to callers
    only once ``backends.retry.RetryingBackend`` has given up."""

    exit_code = 21
