"""AWS KMS through boto3: ``GenerateDataKey`` (AES_256) and ``Decrypt``, with the repository id as
the encryption context (KMS refuses to decrypt under any other, and CloudTrail records it).

The region is the key ARN's, else boto3's usual resolution (``AWS_REGION``, the profile); the
endpoint ``$WEIGHTVAULT_KMS_ENDPOINT``, else boto3's (``$AWS_ENDPOINT_URL_KMS``, AWS). Credentials
come from boto3's chain (environment, profile, instance or task role), which is how a host with
the right IAM role opens a repository without a password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from weightvault.errors import IntegrityError, KeyServiceError

__all__ = ["AwsKms"]

# Codes for a key that exists but may not be used now: the revoked cases.
_UNUSABLE = {"DisabledException": "is disabled", "KMSInvalidStateException": "is not usable (pending deletion or"
             " pending import)", "KeyUnavailableException": "is unavailable"}


_XML_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


def _region(key: str) -> str | None:
    parts = key.split(":")
    return parts[3] if key.startswith("arn:") and len(parts) > 3 and parts[3] else None


class AwsKms:
    def __init__(self, key: str) -> None:
        self.key = key
        self._client: Any = None

    @property
    def spec(self) -> str:
        return f"aws:{self.key}"

    def _kms(self, key_id: str) -> Any:
        if self._client is None:
            cfg = botocore.config.Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=10,
                                         read_timeout=30)
            session = boto3.session.Session()  # credentials as the environment says now, never a cached set
            self._client = session.client("kms", region_name=_region(key_id) or _region(self.key),
                                          endpoint_url=os.environ.get("WEIGHTVAULT_KMS_ENDPOINT") or None, config=cfg)
        return self._client

    def _error(self, exc: Exception, key_id: str, what: str) -> Exception:
        where = f"AWS KMS key {key_id}"
        if isinstance(exc, botocore.exceptions.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            msg = str(exc.response.get("Error", {}).get("Message", ""))
            if m := _XML_CODE.search(msg):  # an error answered in XML (an IAM-level denial) parses as text
                code, msg = m.group(1), (_XML_MESSAGE.search(msg) or m).group(1)
            if code in _UNUSABLE:
                return KeyServiceError(f"{where} {_UNUSABLE[code]}: cannot {what}",
                                       hint="enable the key (or cancel its deletion) in KMS, or open the repository"
                                       " with a password key (`key add` one while you still can)")
            if code == "NotFoundException":
                return KeyServiceError(f"{where} does not exist: cannot {what}",
                                       hint="check the key ARN or alias and the region")
            if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "InvalidClientTokenId",
                        "ExpiredTokenException", "IncorrectKeyException"):
                return KeyServiceError(f"access to {where} denied ({code}): cannot {what}",
                                       hint="the role needs kms:GenerateDataKey (init, key add) and kms:Decrypt"
                                       " (open) on this key (docs/CLOUD.md)")
            if code == "InvalidCiphertextException":
                return IntegrityError(f"the wrapped key does not unwrap under {where} for this repository ({msg})")
            return KeyServiceError(f"{where}: {code}: {msg}: cannot {what}")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return KeyServiceError(f"no AWS credentials to use {where}",
                                   hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run with an"
                                   " IAM role")
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return KeyServiceError(f"{where}: {exc}: cannot {what}",
                                   hint="check $WEIGHTVAULT_KMS_ENDPOINT / the region and the network")
        return exc

    def generate(self, context: Mapping[str, str]) -> tuple[bytes, bytes, str]:
        try:
            r = self._kms(self.key).generate_data_key(KeyId=self.key, KeySpec="AES_256",
                                                      EncryptionContext=dict(context))
        except Exception as exc:
            raise self._error(exc, self.key, "wrap a new key") from exc
        plain, wrapped = bytes(r["Plaintext"]), bytes(r["CiphertextBlob"])
        if len(plain) != 32:
            raise KeyServiceError(f"AWS KMS key {self.key} returned a {len(plain)}-byte data key (expected 32)")
        return plain, wrapped, str(r.get("KeyId") or self.key)

    def decrypt(self, wrapped: bytes, key_id: str, context: Mapping[str, str]) -> bytes:
        try:
            r = self._kms(key_id).decrypt(CiphertextBlob=wrapped, KeyId=key_id, EncryptionContext=dict(context))
        except Exception as exc:
            raise self._error(exc, key_id, "unwrap the repository key") from exc
        return bytes(r["Plaintext"])
