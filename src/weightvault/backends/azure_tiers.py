"""Azure access tiers the data path (obstore) cannot manage: reading a blob's tier and asking for
an archived blob's rehydration (Set Blob Tier with a rehydrate priority), through
azure-storage-blob (a dependency of the ``azure-archive`` extra, imported only here).

Rehydration moves the blob itself to ``target`` (Cool unless said otherwise) for good: unlike an
S3 restore there is no temporary copy and ``days`` does not apply. It takes hours on Azure (High
priority: under an hour for small blobs); Azurite rehydrates at once.
"""

from __future__ import annotations

from typing import Any

from weightvault.errors import BackendError, UsageError

__all__ = ["TierClient"]

_PRIORITY = {"Expedited": "High", "Standard": "Standard", "Bulk": "Standard"}


class TierClient:
    """Blob tiers of one container, for ``AzureBackend.thaw``."""

    def __init__(self, account: str | None, endpoint: str | None, secrets: dict[str, str], container: str) -> None:
        try:
            from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
            from azure.storage.blob import ContainerClient
        except ImportError as exc:
            raise UsageError("thawing archived Azure blobs needs azure-storage-blob",
                             hint="pip install 'weightvault[azure-archive]'") from exc
        if not account:
            raise BackendError("no Azure account to thaw archived blobs with", hint="set AZURE_STORAGE_ACCOUNT")
        cred: Any
        if "access_key" in secrets:
            cred = AzureNamedKeyCredential(account, secrets["access_key"])
        elif "sas_key" in secrets:
            cred = AzureSasCredential(secrets["sas_key"])
        else:
            raise BackendError("thawing archived Azure blobs needs an account key or a SAS",
                               hint="set AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN (or a connection string with"
                               " one); managed identities are not supported for this yet")
        url = endpoint or f"https://{account}.blob.core.windows.net"
        self.client = ContainerClient(url, container, credential=cred, retry_total=0)

    def thaw(self, key: str, tier: str, target: str = "Cool") -> tuple[str, Exception | None]:
        """("online" | "restoring" | "requested", None) or ("", the library's error) for the caller
        to classify."""
        from azure.core.exceptions import AzureError
        from azure.storage.blob import RehydratePriority, StandardBlobTier

        priority = RehydratePriority.HIGH if _PRIORITY[tier] == "High" else RehydratePriority.STANDARD
        blob = self.client.get_blob_client(key)
        try:
            props = blob.get_blob_properties()
            if str(props.archive_status or "").startswith("rehydrate-pending"):
                return "restoring", None
            if str(props.blob_tier or "") != "Archive":
                return "online", None
            blob.set_standard_blob_tier(StandardBlobTier(target), rehydrate_priority=priority)
        except AzureError as exc:
            return "", exc
        return "requested", None
