"""The key-service protocol and the spec parser (``aws:KEY``; docs/CLOUD.md says how Azure Key
Vault and Google Cloud KMS fit the same two calls)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from weightvault.errors import UsageError

__all__ = ["SCHEMES", "KeyService", "open_key_service"]

SCHEMES = ("aws:",)


class KeyService(Protocol):
    @property
    def spec(self) -> str:
        """What the user named (``aws:alias/backups``); stored in the key file, never a secret."""
        ...

    def generate(self, context: Mapping[str, str]) -> tuple[bytes, bytes, str]:
        """A new 32-byte data key: (plaintext, wrapped, the service's full key id). The plaintext
        never leaves this process. KeyServiceError when the service refuses or fails."""
        ...

    def decrypt(self, wrapped: bytes, key_id: str, context: Mapping[str, str]) -> bytes:
        """The plaintext data key of ``wrapped`` (made by ``generate`` with the same ``context``).
        KeyServiceError (key disabled, pending deletion, access denied, unreachable) or
        IntegrityError (the wrapped key or its context does not match)."""
        ...


def open_key_service(spec: str) -> KeyService:
    """The service named by ``spec``; UsageError for an unknown one."""
    if spec.startswith("aws:") and len(spec) > 4:
        from weightvault.kms.aws import AwsKms  # boto3's KMS client only when needed

        return AwsKms(spec[4:])
    raise UsageError(f"{spec!r} is not a key service this weightvault speaks",
                     hint="use aws:KEY_ARN, aws:KEY_ID or aws:alias/NAME (AWS KMS)")
